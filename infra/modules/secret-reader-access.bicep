// Lets the controller identity read the one Key Vault secret that holds an alert webhook URL, so that the
// platform can resolve the app setting's Key Vault reference (the app's keyVaultReferenceIdentity).
// On an Azure RBAC vault: Key Vault Secrets User on that secret only. On an access-policy vault, access policies
// cannot be narrowed to one secret: the policy allows get on the vault's secrets (documented in docs/DEPLOYMENT.md).
param vaultName string
param secretName string
@description('The app setting whose Key Vault reference names this secret.')
param setting string
param useAccessPolicy bool
param principalId string

var keyVaultSecretsUser = subscriptionResourceId('Microsoft.Authorization/roleDefinitions', '4633458b-17de-408a-b874-0445c86b69e6')

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' existing = {
  name: vaultName
}

resource secret 'Microsoft.KeyVault/vaults/secrets@2023-07-01' existing = {
  parent: vault
  name: secretName
}

resource secretReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = if (!useAccessPolicy) {
  name: guid(secret.id, principalId, keyVaultSecretsUser)
  scope: secret
  properties: {
    roleDefinitionId: keyVaultSecretsUser
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: 'cmk-controller: resolve the ${setting} Key Vault reference (this secret only)'
  }
}

resource secretAccessPolicy 'Microsoft.KeyVault/vaults/accessPolicies@2023-07-01' = if (useAccessPolicy) {
  parent: vault
  name: 'add'
  properties: {
    accessPolicies: [
      {
        tenantId: tenant().tenantId
        objectId: principalId
        permissions: {
          keys: []
          secrets: [
            'get'
          ]
          certificates: []
        }
      }
    ]
  }
}
