// The controller: a Python 3.11 function app on the Flex Consumption plan, running as the user-assigned
// identity. Host storage is identity-based (AzureWebJobsStorage__*): no connection string, no account key.
// Every CMK_ setting the code reads (controller/settings.py SETTINGS) is an app setting here, and each
// parameter below defaults to the code's own default, so an unset parameter changes nothing.
param name string
param planName string
param location string
param tags object
param identityId string
param identityClientId string
param storageAccountName string
param deploymentContainerName string
param applicationInsightsConnectionString string

@description('Flex Consumption accepts 40-1000.')
@minValue(40)
@maxValue(1000)
param maximumInstanceCount int

@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int

@description('CMK_VAULTS: comma-separated vault host names the controller manages.')
param cmkVaults string = ''

@description('CMK_SUBSCRIPTIONS: comma-separated subscription ids to inventory; empty means every readable one.')
param cmkSubscriptions string = ''

@description('CMK_SWEEP_SCHEDULE: six-field NCRONTAB schedule of the compliance sweep.')
param cmkSweepSchedule string = '0 0 */6 * * *'

@description('CMK_WORK_QUEUE: work queue in the app storage account (its poison queue is <name>-poison).')
param cmkWorkQueue string = 'cmk-work'

@description('CMK_LEDGER_TABLE: ledger table in the app storage account.')
param cmkLedgerTable string = 'cmkledger'

@description('CMK_EVENT_DEDUPE_HOURS: how long a processed event id is remembered.')
@minValue(1)
@maxValue(720)
param cmkEventDedupeHours int = 48

@description('CMK_ADOPTION_WINDOW_HOURS: how long a versionless consumer may lag a new key version.')
@minValue(1)
@maxValue(168)
param cmkAdoptionWindowHours int = 24

@description('CMK_PINNED_POLICY: alert on, or update, consumers pinned to an old key version.')
@allowed([
  'alert'
  'update'
])
param cmkPinnedPolicy string = 'alert'

@description('CMK_AUTO_ROTATE: rotate a key on KeyNearExpiry (true) or only alert (false).')
param cmkAutoRotate bool = false

@description('CMK_REWRAP_TARGETS: comma-separated <account>/<container> client-side-encrypted containers.')
param cmkRewrapTargets string = ''

@description('CMK_ARM_ENDPOINT: Azure Resource Manager endpoint (https) of the management calls.')
param cmkArmEndpoint string = 'https://management.azure.com'

@description('CMK_FORCE_ADOPTION_AFTER_MINUTES: minutes before a lagging versionless consumer is forced to adopt (0-window, or off).')
param cmkForceAdoptionAfterMinutes string = '0'

@description('CMK_ALERT_WEBHOOK_URL: optional alert webhook, as a Key Vault reference resolved with the controller identity (keyVaultReferenceIdentity).')
param cmkAlertWebhookUrl string = ''

@description('CMK_CLAIM_LEASE_SECONDS: How long a claim (a consumer write, a page of a scale-out re-wrap) keeps other invocations off its work (5-3600 s; default: the host functionTimeout); then the work of a dead instance is taken over.')
param cmkClaimLeaseSeconds string = '600'

@description('CMK_AUDIT_SCHEDULE: NCRONTAB schedule of the audit timer (deleted/purged keys in use, CMK-017 failures)')
param cmkAuditSchedule string = '0 */15 * * * *'

@description('CMK_RECONCILE_TIME_BUDGET_SECONDS: Seconds after which one reconcile starts no write (30-3600); the rest continues through the work queue.')
param cmkReconcileTimeBudgetSeconds string = '480'

@description('CMK_WRITE_CONCURRENCY: Consumers of one key written at the same time (1-64), paced by the budget ARM reports.')
param cmkWriteConcurrency string = '32'

@description('CMK_MAX_ACCOUNTS_PER_KEY: CMK-020 advises when more storage accounts than this share one key (1-10000).')
param cmkMaxAccountsPerKey string = '50'

@description('CMK_REWRAP_WINDOW_HOURS: How long blobs of a registered client-side-encrypted container may stay wrapped by an old key version (CMK-018), in hours (1-720).')
param cmkRewrapWindowHours string = '24'

@description('CMK_MIN_RSA_KEY_SIZE: Smallest acceptable RSA key size for a customer-managed key (CMK-005): 2048, 3072 or 4096.')
param cmkMinRsaKeySize string = '2048'

@description('CMK_ROTATION_MAX_AGE_DAYS: Longest acceptable rotation period and current-version age of a key (CMK-010), in days (1-3650).')
param cmkRotationMaxAgeDays string = '90'

@description('CMK_EXPIRY_WARNING_DAYS: A key version in use that expires within this many days is a CMK-009 medium finding (1-365).')
param cmkExpiryWarningDays string = '30'

@description('CMK_REQUIRE_CMK: Which storage accounts must use a customer-managed key (CMK-001): all (except those tagged cmk-exempt=true) or tagged (only those tagged cmk-required=true).')
param cmkRequireCmk string = 'all'

@description('CMK_REPORT_CONTAINER: Blob container (in the app storage account) holding the compliance reports: latest.json and a dated history YYYY/MM/DD/<timestamp>.json.')
param cmkReportContainer string = 'cmk-reports'

@description('CMK_ALERT_EVENTGRID_MIN_SEVERITY: least severe alert published to CMK_ALERT_EVENTGRID_TOPIC.')
param cmkAlertEventgridMinSeverity string = 'info'

@description('CMK_REALERT_AFTER_HOURS: hours after which a persisting alert is notified again (1-720).')
param cmkRealertAfterHours string = '24'

@description('CMK_SLACK_MIN_SEVERITY: least severe alert sent to Slack.')
param cmkSlackMinSeverity string = 'medium'

@description('CMK_SLACK_WEBHOOK_URL: optional Slack incoming webhook. Such URLs carry a token: pass a Key Vault reference, never the URL itself.')
param cmkSlackWebhookUrl string = ''

@description('CMK_TEAMS_MIN_SEVERITY: least severe alert sent to Teams.')
param cmkTeamsMinSeverity string = 'medium'

@description('CMK_TEAMS_WEBHOOK_URL: optional Microsoft Teams Workflows webhook. Such URLs carry a token: pass a Key Vault reference, never the URL itself.')
param cmkTeamsWebhookUrl string = ''

@description('CMK_ALERT_WEBHOOK_MIN_SEVERITY: least severe alert sent to CMK_ALERT_WEBHOOK_URL (critical, high, medium, low, info).')
param cmkAlertWebhookMinSeverity string = 'info'

@description('CMK_ALERT_EVENTGRID_TOPIC: endpoint (https) of the optional Event Grid topic the alerts are published to; empty: none.')
param cmkAlertEventGridTopic string = ''

@description('CMK_LOG_ANALYTICS_WORKSPACE: workspace (customer) id the vaults send AuditEvent logs to; empty: no audit evidence.')
param cmkLogAnalyticsWorkspace string = ''

@description('CMK_LOG_ANALYTICS_ENDPOINT: Log Analytics query endpoint (https).')
param cmkLogAnalyticsEndpoint string = 'https://api.loganalytics.io'

@description('CMK_AUDIT_ARCHIVE: <account>/<container> archive of the vaults\' AuditEvent logs; empty: none.')
param cmkAuditArchive string = ''

@description('CMK_AUDIT_WINDOW_HOURS: how far back the audit analysis looks for failed wraps and unwraps (1-720).')
@minValue(1)
@maxValue(720)
param cmkAuditWindowHours int = 24

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

// Identity-based host storage: the host and the controller's ledger both use the user-assigned identity,
// and no setting holds a connection string or key. The service URIs come from the account's own endpoints,
// so they are right in every cloud (AzureWebJobsStorage__accountName alone implies core.windows.net).
// AZURE_CLIENT_ID makes the SDK credentials pick the same identity.
var appSettings = [
  {
    name: 'AzureWebJobsStorage__blobServiceUri'
    value: storage.properties.primaryEndpoints.blob
  }
  {
    name: 'AzureWebJobsStorage__queueServiceUri'
    value: storage.properties.primaryEndpoints.queue
  }
  {
    name: 'AzureWebJobsStorage__tableServiceUri'
    value: storage.properties.primaryEndpoints.table
  }
  {
    name: 'AzureWebJobsStorage__credential'
    value: 'managedidentity'
  }
  {
    name: 'AzureWebJobsStorage__clientId'
    value: identityClientId
  }
  {
    name: 'AZURE_CLIENT_ID'
    value: identityClientId
  }
  {
    name: 'APPLICATIONINSIGHTS_CONNECTION_STRING'
    value: applicationInsightsConnectionString
  }
  {
    name: 'APPLICATIONINSIGHTS_AUTHENTICATION_STRING'
    value: 'ClientId=${identityClientId};Authorization=AAD'
  }
  {
    name: 'CMK_VAULTS'
    value: cmkVaults
  }
  {
    name: 'CMK_SUBSCRIPTIONS'
    value: cmkSubscriptions
  }
  {
    name: 'CMK_SWEEP_SCHEDULE'
    value: cmkSweepSchedule
  }
  {
    name: 'CMK_WORK_QUEUE'
    value: cmkWorkQueue
  }
  {
    name: 'CMK_LEDGER_TABLE'
    value: cmkLedgerTable
  }
  {
    name: 'CMK_EVENT_DEDUPE_HOURS'
    value: string(cmkEventDedupeHours)
  }
  {
    name: 'CMK_ADOPTION_WINDOW_HOURS'
    value: string(cmkAdoptionWindowHours)
  }
  {
    name: 'CMK_PINNED_POLICY'
    value: cmkPinnedPolicy
  }
  {
    name: 'CMK_AUTO_ROTATE'
    value: cmkAutoRotate ? 'true' : 'false'
  }
  {
    name: 'CMK_REWRAP_TARGETS'
    value: cmkRewrapTargets
  }
  {
    name: 'CMK_ARM_ENDPOINT'
    value: cmkArmEndpoint
  }
  {
    name: 'CMK_FORCE_ADOPTION_AFTER_MINUTES'
    value: cmkForceAdoptionAfterMinutes
  }
  {
    name: 'CMK_ALERT_WEBHOOK_URL'
    value: cmkAlertWebhookUrl
  }
  {
    name: 'CMK_CLAIM_LEASE_SECONDS'
    value: cmkClaimLeaseSeconds
  }
  {
    name: 'CMK_AUDIT_SCHEDULE'
    value: cmkAuditSchedule
  }
  {
    name: 'CMK_RECONCILE_TIME_BUDGET_SECONDS'
    value: cmkReconcileTimeBudgetSeconds
  }
  {
    name: 'CMK_WRITE_CONCURRENCY'
    value: cmkWriteConcurrency
  }
  {
    name: 'CMK_MAX_ACCOUNTS_PER_KEY'
    value: cmkMaxAccountsPerKey
  }
  {
    name: 'CMK_REWRAP_WINDOW_HOURS'
    value: cmkRewrapWindowHours
  }
  {
    name: 'CMK_MIN_RSA_KEY_SIZE'
    value: cmkMinRsaKeySize
  }
  {
    name: 'CMK_ROTATION_MAX_AGE_DAYS'
    value: cmkRotationMaxAgeDays
  }
  {
    name: 'CMK_EXPIRY_WARNING_DAYS'
    value: cmkExpiryWarningDays
  }
  {
    name: 'CMK_REQUIRE_CMK'
    value: cmkRequireCmk
  }
  {
    name: 'CMK_REPORT_CONTAINER'
    value: cmkReportContainer
  }
  {
    name: 'CMK_ALERT_EVENTGRID_MIN_SEVERITY'
    value: cmkAlertEventgridMinSeverity
  }
  {
    name: 'CMK_REALERT_AFTER_HOURS'
    value: cmkRealertAfterHours
  }
  {
    name: 'CMK_SLACK_MIN_SEVERITY'
    value: cmkSlackMinSeverity
  }
  {
    name: 'CMK_SLACK_WEBHOOK_URL'
    value: cmkSlackWebhookUrl
  }
  {
    name: 'CMK_TEAMS_MIN_SEVERITY'
    value: cmkTeamsMinSeverity
  }
  {
    name: 'CMK_TEAMS_WEBHOOK_URL'
    value: cmkTeamsWebhookUrl
  }
  {
    name: 'CMK_ALERT_WEBHOOK_MIN_SEVERITY'
    value: cmkAlertWebhookMinSeverity
  }
  {
    name: 'CMK_ALERT_EVENTGRID_TOPIC'
    value: cmkAlertEventGridTopic
  }
  {
    name: 'CMK_LOG_ANALYTICS_WORKSPACE'
    value: cmkLogAnalyticsWorkspace
  }
  {
    name: 'CMK_LOG_ANALYTICS_ENDPOINT'
    value: cmkLogAnalyticsEndpoint
  }
  {
    name: 'CMK_AUDIT_ARCHIVE'
    value: cmkAuditArchive
  }
  {
    name: 'CMK_AUDIT_WINDOW_HOURS'
    value: string(cmkAuditWindowHours)
  }
]

resource plan 'Microsoft.Web/serverfarms@2024-04-01' = {
  // checkov:skip=CKV_AZURE_225:Zone redundancy of a Flex Consumption plan depends on region support and zone-redundant storage; the controller is a reconciler whose timer sweep catches up after a zonal outage.
  name: planName
  location: location
  tags: tags
  kind: 'functionapp'
  sku: {
    tier: 'FlexConsumption'
    name: 'FC1'
  }
  properties: {
    reserved: true
  }
}

resource app 'Microsoft.Web/sites@2024-04-01' = {
  // checkov:skip=CKV_AZURE_17:Event Grid cannot present client certificates; it authenticates to the Event Grid extension endpoint with the system key it fetches itself (AzureFunction endpoint type). The events route needs a function key; health is anonymous and discloses only a status and a vault count.
  // checkov:skip=CKV_AZURE_222:Event Grid pushes key events to the app's public endpoint (it cannot deliver to a function app's private endpoint); the Event Grid extension endpoint requires its system key.
  // checkov:skip=CKV_AZURE_212:Flex Consumption scales from zero on demand and replaces failed instances itself; a minimum instance count (always ready) would only add cost, as the sweep is the safety net for missed events.
  // checkov:skip=CKV_AZURE_213:App Service health check is not used on this scale-to-zero plan (its pings would keep an instance warm); the health HTTP function is there for external probes.
  name: name
  location: location
  tags: union(tags, {
    'azd-service-name': 'controller'
  })
  kind: 'functionapp,linux'
  identity: {
    type: 'UserAssigned'
    userAssignedIdentities: {
      '${identityId}': {}
    }
  }
  properties: {
    serverFarmId: plan.id
    // Key Vault references (CMK_ALERT_WEBHOOK_URL) are resolved with the user-assigned identity: the app has no
    // system-assigned identity, which the platform would otherwise use.
    keyVaultReferenceIdentity: identityId
    httpsOnly: true
    publicNetworkAccess: 'Enabled'
    siteConfig: {
      appSettings: appSettings
      minTlsVersion: '1.2'
      scmMinTlsVersion: '1.2'
      ftpsState: 'Disabled'
      http20Enabled: true
    }
    functionAppConfig: {
      deployment: {
        storage: {
          type: 'blobContainer'
          value: '${storage.properties.primaryEndpoints.blob}${deploymentContainerName}'
          authentication: {
            type: 'UserAssignedIdentity'
            userAssignedIdentityResourceId: identityId
          }
        }
      }
      scaleAndConcurrency: {
        maximumInstanceCount: maximumInstanceCount
        instanceMemoryMB: instanceMemoryMB
      }
      runtime: {
        name: 'python'
        version: '3.11'
      }
    }
  }
}

output id string = app.id
output name string = app.name
output defaultHostName string = app.properties.defaultHostName
