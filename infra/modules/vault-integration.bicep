// Everything the controller needs on one managed vault, deployed in the vault's own resource group (which may be
// in another subscription): read access to its keys (custom role on an RBAC vault, or the equivalent access
// policy on an access-policy vault), its AuditEvent logs sent to the controller's workspace, and an Event Grid
// system topic whose managed identity dead-letters undeliverable events. The event subscription itself is
// created by the azd postdeploy hook (key-events.bicep), because it must point at the deployed function.
param vaultName string
param principalId string

@description('GUID of the custom key role (custom-roles.bicep); used on RBAC vaults.')
param keyRoleGuid string

@description('true for a vault that authorises data access with access policies instead of Azure RBAC.')
param useAccessPolicy bool

@description('Key permissions of the access policy, the access-policy twin of the custom key role.')
param accessPolicyKeyPermissions array

param workspaceId string
param systemTopicName string

@description('true: the system topic already exists (named in managedVaults) and is adopted: its identities and tags are kept.')
param adoptSystemTopic bool

@description('The adopted topic as it is before this deployment (reference(..., \'Full\') in main.bicep), or {} for a topic created here.')
param adoptedTopic object = {}

@description('The azd environment\'s resource token: names what this environment adds to the vault, so two environments managing one vault never take over each other\'s settings.')
param resourceToken string

var keyRoleDefinitionId = subscriptionResourceId('Microsoft.Authorization/roleDefinitions', keyRoleGuid)

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' existing = {
  name: vaultName
}

resource keyAccess 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!useAccessPolicy) {
  name: guid(vault.id, principalId, keyRoleDefinitionId)
  scope: vault
  properties: {
    roleDefinitionId: keyRoleDefinitionId
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: 'cmk-controller: read keys and rotation policies (rotate / wrap / unwrap only when enabled)'
  }
}

resource keyAccessPolicy 'Microsoft.KeyVault/vaults/accessPolicies@2023-07-01' = if (useAccessPolicy) {
  parent: vault
  name: 'add'
  properties: {
    accessPolicies: [
      {
        tenantId: tenant().tenantId
        objectId: principalId
        permissions: {
          keys: accessPolicyKeyPermissions
          secrets: []
          certificates: []
        }
      }
    ]
  }
}

// AuditEvent into resource-specific tables (AZKVAuditLogs): the controller's CMK-016 and CMK-017 read them.
resource auditLogs 'Microsoft.Insights/diagnosticSettings@2021-05-01-preview' = {
  name: 'cmk-controller-audit-${resourceToken}'
  scope: vault
  properties: {
    workspaceId: workspaceId
    logAnalyticsDestinationType: 'Dedicated'
    logs: [
      {
        category: 'AuditEvent'
        enabled: true
      }
    ]
  }
}

// A vault has at most one system topic, shared by everything that subscribes to its events. An adopted topic
// keeps what it has: its tags (no environment's are added: the topic is not this environment's), and its
// user-assigned identities (a PUT replaces the identity block, and 2022-06-15 accepts 'SystemAssigned,
// UserAssigned'); the system-assigned identity is added because dead-lettering uses it.
var adoptedIdentity = contains(adoptedTopic, 'identity') ? adoptedTopic.identity : {}
var adoptedIdentityType = contains(adoptedIdentity, 'type') ? adoptedIdentity.type : 'None'
var keepsUserAssignedIdentities = contains(adoptedIdentityType, 'UserAssigned')
var topicIdentity = keepsUserAssignedIdentities ? {
  type: 'SystemAssigned, UserAssigned'
  userAssignedIdentities: adoptedIdentity.userAssignedIdentities
} : {
  type: 'SystemAssigned'
}
var adoptedTags = contains(adoptedTopic, 'tags') ? adoptedTopic.tags : {}
// A created topic is shared too, by every environment that manages the vault: no environment's tag on it.
var sharedTopicTags = {
  'cmk-controller': 'vault-key-events'
}

resource systemTopic 'Microsoft.EventGrid/systemTopics@2022-06-15' = {
  name: systemTopicName
  location: vault.location
  tags: adoptSystemTopic ? adoptedTags : sharedTopicTags
  identity: topicIdentity
  properties: {
    source: vault.id
    topicType: 'Microsoft.KeyVault.vaults'
  }
}

output systemTopicName string = systemTopic.name
output systemTopicPrincipalId string = systemTopic.identity.principalId
