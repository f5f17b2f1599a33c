// Optional: assign the built-in Azure Policy definitions that mirror the controller's rules (RULES.md), in
// Audit mode, so Azure Policy compliance and the controller's report can be compared side by side.
targetScope = 'subscription'

param environmentName string

@description('Minimum RSA key size (CMK-005).')
@allowed([
  2048
  3072
  4096
])
param minimumRsaKeySize int

@description('Maximum days after creation within which a key must rotate (CMK-010).')
param maximumDaysToRotate int

var definitions = [
  {
    rule: 'CMK-001'
    id: '6fac406b-40ca-413b-bf8e-0bf964659c25' // Storage accounts should use customer-managed key for encryption
    parameters: {}
  }
  {
    rule: 'CMK-019'
    id: 'b5ec538c-daa0-4006-8596-35468b9148e8' // Storage account encryption scopes should use customer-managed keys
    parameters: {}
  }
  {
    rule: 'CMK-003'
    id: '1e66c121-a66a-4b1f-9b83-0fd99bf0fc2d' // Key vaults should have soft delete enabled
    parameters: {}
  }
  {
    rule: 'CMK-004'
    id: '0b60c0b2-2dc2-4e1c-b5c9-abbed971de53' // Key vaults should have deletion protection enabled
    parameters: {}
  }
  {
    rule: 'CMK-009'
    id: '152b15f7-8e1f-4c1f-ab71-8c010ba5dbc0' // Key Vault keys should have an expiration date
    parameters: {}
  }
  {
    rule: 'CMK-010'
    id: 'd8cf8476-a2ec-4916-896e-992351803c44' // Keys should have a rotation policy within the specified days
    parameters: {
      maximumDaysToRotate: {
        value: maximumDaysToRotate
      }
    }
  }
  {
    rule: 'CMK-005'
    id: '82067dbb-e53b-4e06-b631-546d197452d9' // Keys using RSA cryptography should have a minimum key size
    parameters: {
      minimumRSAKeySize: {
        value: minimumRsaKeySize
      }
    }
  }
  {
    rule: 'CMK-007'
    id: '55615ac9-af46-4a59-874e-391cc3dfb490' // Azure Key Vault should have firewall enabled
    parameters: {}
  }
]

resource assignments 'Microsoft.Authorization/policyAssignments@2023-04-01' = [for definition in definitions: {
  name: guid(subscription().id, environmentName, definition.id)
  properties: {
    displayName: 'cmk-controller ${definition.rule}'
    description: 'Built-in policy that mirrors cmk-controller rule ${definition.rule} (Audit).'
    policyDefinitionId: tenantResourceId('Microsoft.Authorization/policyDefinitions', definition.id)
    enforcementMode: 'Default'
    parameters: definition.parameters
  }
}]

output assignmentIds array = [for (definition, index) in definitions: assignments[index].id]
