// Custom roles that carry exactly the actions the controller performs, where every built-in role is wider:
// - keys: read keys, rotation policies and deleted keys on the managed vaults (Key Vault Crypto Officer would
//   also allow create, delete, purge, import, backup, sign, decrypt, ...); rotate only when auto-rotation is on;
//   wrap and unwrap only when client-side-encrypted containers are registered for re-wrap.
// - storage encryption: read a storage account and update its encryption properties (force adoption of a new
//   key version), read and update encryption scopes. Storage Account Contributor would also allow listKeys,
//   regenerateKey, delete, network rules, ...
// - re-wrap blobs: read blobs and their metadata and write them back; Storage Blob Data Contributor would also
//   allow delete, move and container management.
targetScope = 'subscription'

@description('Subscriptions in which the roles can be assigned (the vaults\' and the target accounts\' subscriptions).')
param assignableSubscriptionIds array

@description('Appended to the role names, which must be unique in the tenant.')
param roleNameSuffix string

param autoRotate bool
param rewrapEnabled bool
param storageEncryptionEnabled bool

var assignableScopes = [for subscriptionId in assignableSubscriptionIds: '/subscriptions/${subscriptionId}']

// deletedKeys/read: the compliance sweep lists each vault's soft-deleted keys on the data plane (the only
// place they are listed; everything else it reads through ARM with Reader).
var keyReadActions = [
  'Microsoft.KeyVault/vaults/keys/read'
  'Microsoft.KeyVault/vaults/keyrotationpolicies/read'
  'Microsoft.KeyVault/vaults/deletedKeys/read'
]
var keyRotateActions = autoRotate ? [
  'Microsoft.KeyVault/vaults/keys/rotate/action'
] : []
var keyWrapActions = rewrapEnabled ? [
  'Microsoft.KeyVault/vaults/keys/wrap/action'
  'Microsoft.KeyVault/vaults/keys/unwrap/action'
] : []
var keyDataActions = concat(keyReadActions, keyRotateActions, keyWrapActions)

resource keyRole 'Microsoft.Authorization/roleDefinitions@2022-04-01' = {
  name: guid(subscription().id, 'cmk-controller-keys', roleNameSuffix)
  properties: {
    roleName: 'cmk-controller key reader ${roleNameSuffix}'
    description: 'Read Key Vault keys and rotation policies; rotate, wrap and unwrap only when enabled.'
    type: 'customRole'
    permissions: [
      {
        actions: []
        notActions: []
        dataActions: keyDataActions
        notDataActions: []
      }
    ]
    assignableScopes: assignableScopes
  }
}

resource storageEncryptionRole 'Microsoft.Authorization/roleDefinitions@2022-04-01' = if (storageEncryptionEnabled) {
  name: guid(subscription().id, 'cmk-controller-storage-encryption', roleNameSuffix)
  properties: {
    roleName: 'cmk-controller storage encryption operator ${roleNameSuffix}'
    description: 'Read storage accounts and update their encryption key properties and encryption scopes.'
    type: 'customRole'
    permissions: [
      {
        // storageAccounts/write is the only action that authorises PATCHing encryption.keyvaultproperties:
        // Azure has no narrower one. The role is assigned on the listed target accounts only.
        actions: [
          'Microsoft.Storage/storageAccounts/read'
          'Microsoft.Storage/storageAccounts/write'
          'Microsoft.Storage/storageAccounts/encryptionScopes/read'
          'Microsoft.Storage/storageAccounts/encryptionScopes/write'
        ]
        notActions: []
        dataActions: []
        notDataActions: []
      }
    ]
    assignableScopes: assignableScopes
  }
}

resource rewrapRole 'Microsoft.Authorization/roleDefinitions@2022-04-01' = if (rewrapEnabled) {
  name: guid(subscription().id, 'cmk-controller-rewrap', roleNameSuffix)
  properties: {
    roleName: 'cmk-controller blob re-wrap ${roleNameSuffix}'
    description: 'List and read blobs and their metadata, and write them back re-wrapped; no delete.'
    type: 'customRole'
    permissions: [
      {
        actions: [
          'Microsoft.Storage/storageAccounts/blobServices/containers/read'
        ]
        notActions: []
        dataActions: [
          'Microsoft.Storage/storageAccounts/blobServices/containers/blobs/read'
          'Microsoft.Storage/storageAccounts/blobServices/containers/blobs/write'
        ]
        notDataActions: []
      }
    ]
    assignableScopes: assignableScopes
  }
}

output keyRoleGuid string = keyRole.name
output storageEncryptionRoleGuid string = storageEncryptionEnabled ? storageEncryptionRole.name : ''
output rewrapRoleGuid string = rewrapEnabled ? rewrapRole.name : ''
// Full ids, for the predown hook: custom roles live at subscription scope, outside every resource group.
output roleDefinitionIds array = concat([
  keyRole.id
], storageEncryptionEnabled ? [
  storageEncryptionRole.id
] : [], rewrapEnabled ? [
  rewrapRole.id
] : [])
