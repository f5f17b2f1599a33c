// Subscribes the deployed on_key_event function to every managed vault's Event Grid system topic, and
// on_resource_event to the subscription's system topic (both created by main.bicep). Run by
// infra/hooks/postdeploy.sh after `azd deploy`, with the outputs of main.bicep, because Event Grid validates
// the function when the subscription is created. Idempotent: safe to run on every deploy.
targetScope = 'subscription'

@description('main.bicep output KEY_EVENT_SOURCES: [{ subscriptionId, resourceGroup, systemTopicName }].')
param eventSources array

@description('main.bicep output AZURE_FUNCTION_APP_ID.')
param functionAppId string

@description('Name of the Event Grid-triggered function (controller/functions).')
param functionName string = 'on_key_event'

@description('main.bicep output RESOURCE_EVENT_SOURCE: { subscriptionId, resourceGroup, systemTopicName } of the subscription\'s system topic.')
param resourceEventSource object

@description('Name of the Event Grid-triggered function that handles resource events (drift).')
param resourceEventFunctionName string = 'on_resource_event'

@description('main.bicep output DEAD_LETTER_STORAGE_ACCOUNT_ID.')
param deadLetterStorageAccountId string

@description('main.bicep output DEAD_LETTER_CONTAINER_NAME.')
param deadLetterContainerName string

@description('main.bicep output CMK_RESOURCE_TOKEN: names this environment\'s event subscriptions.')
param resourceToken string

module keyEvents 'modules/key-events.bicep' = [for (source, index) in eventSources: {
  name: 'cmk-key-events-${uniqueString(functionAppId)}-${index}'
  scope: resourceGroup(source.subscriptionId, source.resourceGroup)
  params: {
    systemTopicName: source.systemTopicName
    functionAppId: functionAppId
    functionName: functionName
    deadLetterStorageAccountId: deadLetterStorageAccountId
    deadLetterContainerName: deadLetterContainerName
    resourceToken: resourceToken
  }
}]

module resourceEvents 'modules/resource-events.bicep' = {
  name: 'cmk-resource-events-${uniqueString(functionAppId)}'
  scope: resourceGroup(resourceEventSource.subscriptionId, resourceEventSource.resourceGroup)
  params: {
    systemTopicName: resourceEventSource.systemTopicName
    functionAppId: functionAppId
    functionName: resourceEventFunctionName
    deadLetterStorageAccountId: deadLetterStorageAccountId
    deadLetterContainerName: deadLetterContainerName
    resourceToken: resourceToken
  }
}
