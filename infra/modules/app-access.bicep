// The controller identity's roles on its own resources: data access to the app storage account (Functions host
// state and deployment package in blobs, the work queue, the ledger table), query access to the workspace that
// holds the vaults' audit logs, and telemetry publishing to Application Insights (local auth is disabled there).
param principalId string
param storageAccountName string
param workspaceName string
param applicationInsightsName string

// Built-in role definition ids (https://learn.microsoft.com/azure/role-based-access-control/built-in-roles).
var storageBlobDataOwner = subscriptionResourceId('Microsoft.Authorization/roleDefinitions', 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b')
var storageQueueDataContributor = subscriptionResourceId('Microsoft.Authorization/roleDefinitions', '974c5e8b-45b9-4653-ba55-5f855dd0fb88')
var storageTableDataContributor = subscriptionResourceId('Microsoft.Authorization/roleDefinitions', '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3')
var logAnalyticsReader = subscriptionResourceId('Microsoft.Authorization/roleDefinitions', '73c42c96-874c-492b-b04d-ab87d138a893')
var monitoringMetricsPublisher = subscriptionResourceId('Microsoft.Authorization/roleDefinitions', '3913510d-42f4-4e42-8a64-420c390055eb')

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource workspace 'Microsoft.OperationalInsights/workspaces@2021-06-01' existing = {
  name: workspaceName
}

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: applicationInsightsName
}

// The Functions host keeps leases, timers and keys in containers it creates itself, and Flex Consumption reads
// the deployment package from a container. The documented role for identity-based host storage is Storage Blob
// Data Owner (https://learn.microsoft.com/azure/azure-functions/functions-reference#connecting-to-host-storage-with-an-identity),
// and both official Flex Consumption templates grant it; it is granted on the app's own account only.
resource hostBlobs 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, principalId, storageBlobDataOwner)
  scope: storage
  properties: {
    roleDefinitionId: storageBlobDataOwner
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: 'cmk-controller: Functions host state and deployment package in its own storage account'
  }
}

resource workQueues 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, principalId, storageQueueDataContributor)
  scope: storage
  properties: {
    roleDefinitionId: storageQueueDataContributor
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: 'cmk-controller: work queue and poison queue (process_work) in its own storage account'
  }
}

resource ledgerTable 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, principalId, storageTableDataContributor)
  scope: storage
  properties: {
    roleDefinitionId: storageTableDataContributor
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: 'cmk-controller: event dedupe and rotation ledger table in its own storage account'
  }
}

resource auditQuery 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(workspace.id, principalId, logAnalyticsReader)
  scope: workspace
  properties: {
    roleDefinitionId: logAnalyticsReader
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: 'cmk-controller: query the vaults audit logs for failed wrap/unwrap (CMK-017)'
  }
}

resource telemetry 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(applicationInsights.id, principalId, monitoringMetricsPublisher)
  scope: applicationInsights
  properties: {
    roleDefinitionId: monitoringMetricsPublisher
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: 'cmk-controller: send telemetry to Application Insights with Entra auth (local auth is disabled)'
  }
}
