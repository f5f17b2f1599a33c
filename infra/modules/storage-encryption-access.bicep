// Lets the controller force adoption of a new key version on one target storage account: the custom storage
// encryption role (read the account, update its encryption properties and encryption scopes) at account scope.
param storageAccountName string
param principalId string
param storageEncryptionRoleGuid string

var storageEncryptionRoleDefinitionId = subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageEncryptionRoleGuid)

resource account 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource encryptionOperator 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(account.id, principalId, storageEncryptionRoleDefinitionId)
  scope: account
  properties: {
    roleDefinitionId: storageEncryptionRoleDefinitionId
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: 'cmk-controller: update the CMK key version / encryption scopes of this account'
  }
}
