// Log Analytics workspace (the vaults' AuditEvent logs land here, and the controller queries them for
// failed wrap/unwrap: rule CMK-017) and workspace-based Application Insights with local (key) auth disabled.
param workspaceName string
param applicationInsightsName string
param location string
param tags object

@description('Days the workspace keeps the audit logs that CMK-017 queries.')
@minValue(30)
@maxValue(730)
param retentionInDays int

resource workspace 'Microsoft.OperationalInsights/workspaces@2021-06-01' = {
  name: workspaceName
  location: location
  tags: tags
  properties: {
    sku: {
      name: 'PerGB2018'
    }
    retentionInDays: retentionInDays
    features: {
      disableLocalAuth: true
    }
  }
}

resource applicationInsights 'Microsoft.Insights/components@2020-02-02' = {
  name: applicationInsightsName
  location: location
  tags: tags
  kind: 'web'
  properties: {
    Application_Type: 'web'
    WorkspaceResourceId: workspace.id
    DisableLocalAuth: true
  }
}

output workspaceId string = workspace.id
output workspaceName string = workspace.name
output workspaceCustomerId string = workspace.properties.customerId
output applicationInsightsId string = applicationInsights.id
output applicationInsightsName string = applicationInsights.name
// The connection string names the ingestion endpoint and instrumentation key, which is an identifier, not a
// credential: DisableLocalAuth above makes ingestion require an Entra token (APPLICATIONINSIGHTS_AUTHENTICATION_STRING).
output applicationInsightsConnectionString string = applicationInsights.properties.ConnectionString
