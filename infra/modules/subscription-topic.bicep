// The Azure subscription's Event Grid system topic (type Microsoft.Resources.Subscriptions): Azure Resource
// Manager publishes a resource event to it for every successful write, delete and action in the subscription.
// infra/modules/resource-events.bicep subscribes on_resource_event to it, so that drift (a vault firewall
// turned on, an access policy edited, a role assignment deleted, a vault deleted, an account switched back to
// Microsoft-managed keys) is re-evaluated within seconds instead of at the next sweep. A subscription has at
// most one such topic; its system-assigned identity writes undeliverable events to the dead-letter container.
param name string

@description('Tags of the topic.')
param tags object = {}

resource topic 'Microsoft.EventGrid/systemTopics@2022-06-15' = {
  name: name
  location: 'global'
  tags: tags
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    source: subscription().id
    topicType: 'Microsoft.Resources.Subscriptions'
  }
}

output name string = topic.name
output principalId string = topic.identity.principalId
