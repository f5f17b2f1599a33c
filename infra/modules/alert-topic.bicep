// Optional Event Grid custom topic the controller publishes its alerts to (for Logic Apps, Teams or SIEM
// subscribers). Entra-only publishing: local (SAS key) auth is disabled, and the controller identity gets
// EventGrid Data Sender on this topic only.
param name string
param location string
param tags object
param principalId string

var eventGridDataSender = subscriptionResourceId('Microsoft.Authorization/roleDefinitions', 'd5a91429-5739-47e2-a06b-3470a27159e7')

resource topic 'Microsoft.EventGrid/topics@2022-06-15' = {
  // checkov:skip=CKV_AZURE_193:Subscribers and the Flex Consumption app (no VNet integration) publish over the public endpoint; local auth is disabled, so every publish needs an Entra token with EventGrid Data Sender.
  name: name
  location: location
  tags: tags
  identity: {
    type: 'SystemAssigned'
  }
  properties: {
    inputSchema: 'EventGridSchema'
    disableLocalAuth: true
    publicNetworkAccess: 'Enabled'
  }
}

resource alertSender 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(topic.id, principalId, eventGridDataSender)
  scope: topic
  properties: {
    roleDefinitionId: eventGridDataSender
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: 'cmk-controller: publish CMK alerts to this topic'
  }
}

output endpoint string = topic.properties.endpoint
output id string = topic.id
