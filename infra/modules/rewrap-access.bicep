// Lets the controller re-wrap the client-side-encrypted blobs of one registered container: the custom re-wrap
// role (read blobs and metadata, write them back; no delete) on that container only.
param storageAccountName string
param containerName string
param principalId string
param rewrapRoleGuid string

var rewrapRoleDefinitionId = subscriptionResourceId('Microsoft.Authorization/roleDefinitions', rewrapRoleGuid)

resource account 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource blobService 'Microsoft.Storage/storageAccounts/blobServices@2023-05-01' existing = {
  parent: account
  name: 'default'
}

resource container 'Microsoft.Storage/storageAccounts/blobServices/containers@2023-05-01' existing = {
  parent: blobService
  name: containerName
}

resource rewrapOperator 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(container.id, principalId, rewrapRoleDefinitionId)
  scope: container
  properties: {
    roleDefinitionId: rewrapRoleDefinitionId
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: 'cmk-controller: re-wrap client-side-encrypted blobs in this container after a key rotation'
  }
}
