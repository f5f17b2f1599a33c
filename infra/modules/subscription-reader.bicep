// Reader on one subscription: Azure Resource Graph only returns what the caller can read, so the inventory
// (storage accounts, encryption scopes, vaults, identities, role assignments, diagnostic settings) needs it.
// Reader grants no data access and no listKeys.
targetScope = 'subscription'

param principalId string

var reader = subscriptionResourceId('Microsoft.Authorization/roleDefinitions', 'acdd72a7-3385-48ef-bd42-f606fba81ae7')

resource inventoryReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(subscription().id, principalId, reader)
  properties: {
    roleDefinitionId: reader
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: 'cmk-controller: inventory CMK storage accounts, vaults and role assignments via Resource Graph'
  }
}
