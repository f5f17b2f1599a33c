// cmk-controller: the function app, its identity and the narrowest roles it needs, the vaults' audit logs and
// Event Grid system topics. `azd up` deploys this template, then the code, then (postdeploy hook) events.bicep,
// which subscribes on_key_event to each vault's key events. One module per concern under modules/.
targetScope = 'subscription'

@minLength(1)
@maxLength(64)
@description('azd environment name; names and tags every resource.')
param environmentName string

@minLength(1)
@description('Region of the function app and its resources (one that offers Flex Consumption).')
param location string

@description('Resource group to create or reuse; empty: rg-<environmentName>.')
param resourceGroupName string = ''

// No default and at least one entry: the app refuses to start without CMK_VAULTS, so a deployment without a vault
// would report success with an app that loads no function. ARM rejects an empty list before creating anything.
@minLength(1)
@description('Vaults the controller manages (at least one): [{ "name", "resourceGroup", "subscriptionId" (default: this subscription), "accessPolicy": true for a vault without Azure RBAC, "systemTopicName" of an existing Event Grid system topic }].')
param managedVaults array

@description('Storage accounts whose CMK key version the controller may update (force adoption): [{ "name", "resourceGroup", "subscriptionId" }].')
param targetStorageAccounts array = []

@description('Client-side-encrypted containers to re-wrap after a rotation: [{ "account", "container", "resourceGroup", "subscriptionId" }].')
param rewrapTargets array = []

@description('Subscriptions whose storage accounts are inventoried (CMK_SUBSCRIPTIONS); empty: the vaults\' and target accounts\' subscriptions, or this one.')
param inventorySubscriptionIds array = []

@description('CMK_SWEEP_SCHEDULE: six-field NCRONTAB schedule of the compliance sweep.')
param cmkSweepSchedule string = '0 0 */6 * * *'

@description('CMK_WORK_QUEUE: work queue in the app storage account.')
param cmkWorkQueue string = 'cmk-work'

@description('CMK_LEDGER_TABLE: ledger table in the app storage account.')
param cmkLedgerTable string = 'cmkledger'

@description('CMK_EVENT_DEDUPE_HOURS: how long a processed event id is remembered (1-720).')
@minValue(1)
@maxValue(720)
param cmkEventDedupeHours int = 48

@description('CMK_ADOPTION_WINDOW_HOURS: how long a versionless consumer may lag a new key version (1-168).')
@minValue(1)
@maxValue(168)
param cmkAdoptionWindowHours int = 24

@description('CMK_PINNED_POLICY: alert on, or update, consumers pinned to an old key version.')
@allowed([
  'alert'
  'update'
])
param cmkPinnedPolicy string = 'alert'

@description('CMK_AUTO_ROTATE: rotate keys on KeyNearExpiry; also adds the rotate permission on the managed vaults.')
param cmkAutoRotate bool = false

@description('CMK_ARM_ENDPOINT: Azure Resource Manager endpoint (https) of the controller\'s management calls.')
param cmkArmEndpoint string = 'https://management.azure.com'

@description('CMK_FORCE_ADOPTION_AFTER_MINUTES: minutes before a lagging versionless consumer is forced to adopt a new key version (0-window, or off).')
param cmkForceAdoptionAfterMinutes string = '0'

@description('Give the controller the deployed workspace (CMK_LOG_ANALYTICS_WORKSPACE) as evidence of key use: the last successful unwrap per key version.')
param auditEvidenceEnabled bool = false

@description('CMK_LOG_ANALYTICS_ENDPOINT: Log Analytics query endpoint (https).')
param cmkLogAnalyticsEndpoint string = 'https://api.loganalytics.io'

@description('CMK_ALERT_WEBHOOK_URL, optional: the Key Vault secret that holds the alert webhook URL (such URLs carry a token), as { "vaultName", "secretName", "resourceGroup", "subscriptionId" (default: this subscription), "accessPolicy": true for a vault without Azure RBAC }. The app setting becomes a Key Vault reference resolved with the controller identity, which is granted read on that secret only.')
param alertWebhookSecret object = {}

@description('CMK_TEAMS_WEBHOOK_URL, optional: the Key Vault secret that holds the Microsoft Teams Workflows webhook URL, in the shape of alertWebhookSecret.')
param teamsWebhookSecret object = {}

@description('CMK_SLACK_WEBHOOK_URL, optional: the Key Vault secret that holds the Slack incoming webhook URL, in the shape of alertWebhookSecret.')
param slackWebhookSecret object = {}

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

@description('CMK_REALERT_AFTER_HOURS: hours after which a persisting alert is notified again (1-720).')
param cmkRealertAfterHours string = '24'

@description('CMK_SLACK_MIN_SEVERITY: least severe alert sent to Slack.')
param cmkSlackMinSeverity string = 'medium'

@description('CMK_TEAMS_MIN_SEVERITY: least severe alert sent to Teams.')
param cmkTeamsMinSeverity string = 'medium'


@description('CMK_ALERT_WEBHOOK_MIN_SEVERITY: least severe alert sent to CMK_ALERT_WEBHOOK_URL (critical, high, medium, low, info).')
param cmkAlertWebhookMinSeverity string = 'info'

@description('CMK_CLAIM_LEASE_SECONDS: How long a claim (a consumer write, a page of a scale-out re-wrap) keeps other invocations off its work (5-3600 s; default: the host functionTimeout); then the work of a dead instance is taken over.')
param cmkClaimLeaseSeconds string = '600'

@description('CMK_AUDIT_SCHEDULE: NCRONTAB schedule of the audit timer (deleted/purged keys in use, CMK-017 failures)')
param cmkAuditSchedule string = '0 */15 * * * *'

@description('CMK_RECONCILE_TIME_BUDGET_SECONDS: Seconds after which one reconcile starts no write (30-3600); the rest continues through the work queue.')
param cmkReconcileTimeBudgetSeconds string = '480'

@description('CMK_WRITE_CONCURRENCY: Consumers of one key written at the same time (1-64), paced by the budget ARM reports.')
param cmkWriteConcurrency string = '32'

@description('CMK_ALERT_EVENTGRID_MIN_SEVERITY: least severe alert published to CMK_ALERT_EVENTGRID_TOPIC.')
param cmkAlertEventgridMinSeverity string = 'info'

@description('CMK_AUDIT_ARCHIVE: <account>/<container> where the vaults\' diagnostic settings archive AuditEvent logs, read for vaults whose logs are not in the workspace; empty: none.')
param cmkAuditArchive string = ''

@description('CMK_AUDIT_WINDOW_HOURS: how far back the audit analysis (cmkctl audit) looks for failed wraps and unwraps (1-720).')
@minValue(1)
@maxValue(720)
param cmkAuditWindowHours int = 24


@description('Create an Event Grid topic for the controller\'s alerts, with EventGrid Data Sender for the controller.')
param alertTopicEnabled bool = false

@description('Assign, in Audit mode, the built-in Azure Policy definitions that mirror the controller\'s rules.')
param policyAssignmentsEnabled bool = false

@allowed([
  'Standard_LRS'
  'Standard_ZRS'
  'Standard_GRS'
  'Standard_GZRS'
])
param storageSkuName string = 'Standard_LRS'

// Flex Consumption accepts 40-1000 (https://learn.microsoft.com/azure/azure-functions/flex-consumption-how-to#set-instance-limits).
@minValue(40)
@maxValue(1000)
param maximumInstanceCount int = 40

@allowed([
  512
  2048
  4096
])
param instanceMemoryMB int = 2048

@minValue(30)
@maxValue(730)
param logRetentionInDays int = 90

var resourceToken = toLower(uniqueString(subscription().id, environmentName, location))
var tags = {
  'azd-env-name': environmentName
}
var functionAppName = 'func-cmk-${resourceToken}'
var deploymentContainerName = 'deployment-package'
var deadLetterContainerName = 'key-events-deadletter'

var vaults = [for vault in managedVaults: {
  name: vault.name
  resourceGroup: vault.resourceGroup
  subscriptionId: contains(vault, 'subscriptionId') ? vault.subscriptionId : subscription().subscriptionId
  useAccessPolicy: contains(vault, 'accessPolicy') ? bool(vault.accessPolicy) : false
  // A vault can have only one Event Grid system topic: name an existing one (in the vault's resource group) to adopt it.
  adoptSystemTopic: contains(vault, 'systemTopicName')
  systemTopicName: contains(vault, 'systemTopicName') ? vault.systemTopicName : 'evgt-${vault.name}-cmk'
}]
var accounts = [for account in targetStorageAccounts: {
  name: account.name
  resourceGroup: account.resourceGroup
  subscriptionId: contains(account, 'subscriptionId') ? account.subscriptionId : subscription().subscriptionId
}]
var containers = [for target in rewrapTargets: {
  account: target.account
  container: target.container
  resourceGroup: target.resourceGroup
  subscriptionId: contains(target, 'subscriptionId') ? target.subscriptionId : subscription().subscriptionId
}]

// Webhook URLs carry tokens, so each stays in its vault: its app setting is a Key Vault reference, which the platform
// resolves with keyVaultReferenceIdentity (the controller identity), granted read on that one secret below. Each
// secret's optional properties get their defaults here; vaultName, secretName and resourceGroup are required.
var webhookSecretDefaults = {
  subscriptionId: subscription().subscriptionId
  accessPolicy: false
}
var webhookSecrets = [
  union(webhookSecretDefaults, alertWebhookSecret, { setting: 'CMK_ALERT_WEBHOOK_URL', configured: !empty(alertWebhookSecret) })
  union(webhookSecretDefaults, teamsWebhookSecret, { setting: 'CMK_TEAMS_WEBHOOK_URL', configured: !empty(teamsWebhookSecret) })
  union(webhookSecretDefaults, slackWebhookSecret, { setting: 'CMK_SLACK_WEBHOOK_URL', configured: !empty(slackWebhookSecret) })
]
var configuredWebhookSecrets = filter(webhookSecrets, secret => secret.configured)
// In the order of webhookSecrets (checkov's Bicep parser knows no map() or toObject()).
var webhookReferences = [for secret in webhookSecrets: (secret.configured) ? '@Microsoft.KeyVault(SecretUri=https://${secret.vaultName}${environment().suffixes.keyvaultDns}/secrets/${secret.secretName}/)' : '']
var webhookSecretAccessPolicyVaultIds = [for secret in filter(configuredWebhookSecrets, candidate => bool(candidate.accessPolicy)): resourceId(secret.subscriptionId, secret.resourceGroup, 'Microsoft.KeyVault/vaults', secret.vaultName)]
var webhookSecretSubscriptionIds = [for secret in configuredWebhookSecrets: secret.subscriptionId]

// App settings derived from the lists above, so a vault or container is never granted without being managed.
var vaultHosts = [for vault in managedVaults: toLower('${vault.name}${environment().suffixes.keyvaultDns}')]
var rewrapSettingEntries = [for target in rewrapTargets: '${target.account}/${target.container}']

var vaultSubscriptionIds = [for vault in vaults: vault.subscriptionId]
var accountSubscriptionIds = [for account in accounts: account.subscriptionId]
var containerSubscriptionIds = [for target in containers: target.subscriptionId]
var roleSubscriptionIds = union(vaultSubscriptionIds, accountSubscriptionIds, containerSubscriptionIds)
var readerSubscriptionIds = union(inventorySubscriptionIds, roleSubscriptionIds)
var readerScopes = empty(readerSubscriptionIds) ? [
  subscription().subscriptionId
] : readerSubscriptionIds

// Access-policy twin of the custom key role, for vaults that do not use Azure RBAC ('list' also lists the
// deleted keys the compliance sweep reads).
var accessPolicyReadPermissions = [
  'get'
  'list'
  'getrotationpolicy'
]
var accessPolicyRotatePermissions = cmkAutoRotate ? [
  'rotate'
] : []
var accessPolicyWrapPermissions = empty(rewrapTargets) ? [] : [
  'wrapKey'
  'unwrapKey'
]
var accessPolicyVaultIds = [for vault in filter(vaults, candidate => candidate.useAccessPolicy): resourceId(vault.subscriptionId, vault.resourceGroup, 'Microsoft.KeyVault/vaults', vault.name)]
var accessPolicyKeyPermissions = concat(accessPolicyReadPermissions, accessPolicyRotatePermissions, accessPolicyWrapPermissions)

resource rg 'Microsoft.Resources/resourceGroups@2022-09-01' = {
  name: empty(resourceGroupName) ? 'rg-${environmentName}' : resourceGroupName
  location: location
  tags: tags
}

module identity 'modules/identity.bicep' = {
  name: 'identity'
  scope: rg
  params: {
    name: 'id-cmk-${resourceToken}'
    location: location
    tags: tags
  }
}

module monitoring 'modules/monitoring.bicep' = {
  name: 'monitoring'
  scope: rg
  params: {
    workspaceName: 'log-cmk-${resourceToken}'
    applicationInsightsName: 'appi-cmk-${resourceToken}'
    location: location
    tags: tags
    retentionInDays: logRetentionInDays
  }
}

module storage 'modules/app-storage.bicep' = {
  name: 'app-storage'
  scope: rg
  params: {
    name: 'stcmk${resourceToken}'
    location: location
    tags: tags
    skuName: storageSkuName
    deploymentContainerName: deploymentContainerName
    deadLetterContainerName: deadLetterContainerName
    workQueueName: cmkWorkQueue
    ledgerTableName: cmkLedgerTable
    workspaceId: monitoring.outputs.workspaceId
  }
}

module functionApp 'modules/function-app.bicep' = {
  name: 'function-app'
  scope: rg
  params: {
    name: functionAppName
    planName: 'plan-cmk-${resourceToken}'
    location: location
    tags: tags
    identityId: identity.outputs.id
    identityClientId: identity.outputs.clientId
    storageAccountName: storage.outputs.name
    deploymentContainerName: deploymentContainerName
    applicationInsightsConnectionString: monitoring.outputs.applicationInsightsConnectionString
    maximumInstanceCount: maximumInstanceCount
    instanceMemoryMB: instanceMemoryMB
    cmkVaults: join(vaultHosts, ',')
    cmkSubscriptions: join(inventorySubscriptionIds, ',')
    cmkSweepSchedule: cmkSweepSchedule
    cmkWorkQueue: cmkWorkQueue
    cmkLedgerTable: cmkLedgerTable
    cmkEventDedupeHours: cmkEventDedupeHours
    cmkAdoptionWindowHours: cmkAdoptionWindowHours
    cmkPinnedPolicy: cmkPinnedPolicy
    cmkAutoRotate: cmkAutoRotate
    cmkRewrapTargets: join(rewrapSettingEntries, ',')
    cmkArmEndpoint: cmkArmEndpoint
    cmkForceAdoptionAfterMinutes: cmkForceAdoptionAfterMinutes
    cmkMaxAccountsPerKey: cmkMaxAccountsPerKey
    cmkRewrapWindowHours: cmkRewrapWindowHours
    cmkMinRsaKeySize: cmkMinRsaKeySize
    cmkRotationMaxAgeDays: cmkRotationMaxAgeDays
    cmkExpiryWarningDays: cmkExpiryWarningDays
    cmkRequireCmk: cmkRequireCmk
    cmkReportContainer: cmkReportContainer
    cmkAlertWebhookUrl: webhookReferences[0]
    cmkAlertEventGridTopic: alertTopicEnabled ? alertTopic.outputs.endpoint : ''
    cmkRealertAfterHours: cmkRealertAfterHours
    cmkSlackMinSeverity: cmkSlackMinSeverity
    cmkSlackWebhookUrl: webhookReferences[2]
    cmkTeamsMinSeverity: cmkTeamsMinSeverity
    cmkTeamsWebhookUrl: webhookReferences[1]
    cmkAlertWebhookMinSeverity: cmkAlertWebhookMinSeverity
    cmkClaimLeaseSeconds: cmkClaimLeaseSeconds
    cmkAuditSchedule: cmkAuditSchedule
    cmkReconcileTimeBudgetSeconds: cmkReconcileTimeBudgetSeconds
    cmkWriteConcurrency: cmkWriteConcurrency
    cmkAlertEventgridMinSeverity: cmkAlertEventgridMinSeverity
    cmkLogAnalyticsWorkspace: auditEvidenceEnabled ? monitoring.outputs.workspaceCustomerId : ''
    cmkLogAnalyticsEndpoint: cmkLogAnalyticsEndpoint
    cmkAuditArchive: cmkAuditArchive
    cmkAuditWindowHours: cmkAuditWindowHours
  }
}

module appAccess 'modules/app-access.bicep' = {
  name: 'app-access'
  scope: rg
  params: {
    principalId: identity.outputs.principalId
    storageAccountName: storage.outputs.name
    workspaceName: monitoring.outputs.workspaceName
    applicationInsightsName: monitoring.outputs.applicationInsightsName
  }
}

module customRoles 'modules/custom-roles.bicep' = {
  name: 'cmk-custom-roles-${resourceToken}'
  params: {
    // The deployment's own subscription is always an assignable scope: the definitions are created there.
    assignableSubscriptionIds: union([
      subscription().subscriptionId
    ], roleSubscriptionIds)
    roleNameSuffix: '(${environmentName} ${resourceToken})'
    autoRotate: cmkAutoRotate
    rewrapEnabled: !empty(rewrapTargets)
    storageEncryptionEnabled: !empty(targetStorageAccounts)
  }
}

module inventoryReaders 'modules/subscription-reader.bicep' = [for (subscriptionId, index) in readerScopes: {
  name: 'cmk-reader-${resourceToken}-${index}'
  scope: subscription(subscriptionId)
  params: {
    principalId: identity.outputs.principalId
  }
}]

module vaultIntegrations 'modules/vault-integration.bicep' = [for (vault, index) in vaults: {
  name: 'cmk-vault-${resourceToken}-${index}'
  scope: resourceGroup(vault.subscriptionId, vault.resourceGroup)
  params: {
    vaultName: vault.name
    principalId: identity.outputs.principalId
    keyRoleGuid: customRoles.outputs.keyRoleGuid
    useAccessPolicy: vault.useAccessPolicy
    accessPolicyKeyPermissions: accessPolicyKeyPermissions
    workspaceId: monitoring.outputs.workspaceId
    systemTopicName: vault.systemTopicName
    adoptSystemTopic: vault.adoptSystemTopic
    adoptedTopic: (vault.adoptSystemTopic) ? reference(resourceId(vault.subscriptionId, vault.resourceGroup, 'Microsoft.EventGrid/systemTopics', vault.systemTopicName), '2022-06-15', 'Full') : {}
    resourceToken: resourceToken
  }
}]

module webhookSecretAccess 'modules/secret-reader-access.bicep' = [for (secret, index) in configuredWebhookSecrets: {
  name: 'cmk-webhook-secret-${index}-${resourceToken}'
  scope: resourceGroup(secret.subscriptionId, secret.resourceGroup)
  params: {
    vaultName: secret.vaultName
    secretName: secret.secretName
    setting: secret.setting
    useAccessPolicy: bool(secret.accessPolicy)
    principalId: identity.outputs.principalId
  }
}]

module deadLetterAccess 'modules/dead-letter-access.bicep' = [for (vault, index) in vaults: {
  name: 'cmk-deadletter-${index}'
  scope: rg
  params: {
    principalId: vaultIntegrations[index].outputs.systemTopicPrincipalId
    storageAccountName: storage.outputs.name
    containerName: deadLetterContainerName
  }
}]

// Resource events of this subscription (ARM writes, deletes, actions): drift caught in seconds.
module subscriptionTopic 'modules/subscription-topic.bicep' = {
  name: 'cmk-subscription-topic-${resourceToken}'
  scope: rg
  params: {
    name: 'evgt-sub-cmk-${resourceToken}'
    tags: {
      'cmk-controller': 'resource-events'
    }
  }
}

module subscriptionTopicDeadLetterAccess 'modules/dead-letter-access.bicep' = {
  name: 'cmk-deadletter-subscription-${resourceToken}'
  scope: rg
  params: {
    principalId: subscriptionTopic.outputs.principalId
    storageAccountName: storage.outputs.name
    containerName: deadLetterContainerName
  }
}

module storageEncryptionAccess 'modules/storage-encryption-access.bicep' = [for (account, index) in accounts: {
  name: 'cmk-account-${resourceToken}-${index}'
  scope: resourceGroup(account.subscriptionId, account.resourceGroup)
  params: {
    storageAccountName: account.name
    principalId: identity.outputs.principalId
    storageEncryptionRoleGuid: customRoles.outputs.storageEncryptionRoleGuid
  }
}]

module rewrapAccess 'modules/rewrap-access.bicep' = [for (target, index) in containers: {
  name: 'cmk-rewrap-${resourceToken}-${index}'
  scope: resourceGroup(target.subscriptionId, target.resourceGroup)
  params: {
    storageAccountName: target.account
    containerName: target.container
    principalId: identity.outputs.principalId
    rewrapRoleGuid: customRoles.outputs.rewrapRoleGuid
  }
}]

module alertTopic 'modules/alert-topic.bicep' = if (alertTopicEnabled) {
  name: 'alert-topic'
  scope: rg
  params: {
    name: 'evgt-cmk-alerts-${resourceToken}'
    location: location
    tags: tags
    principalId: identity.outputs.principalId
  }
}

module policy 'modules/policy.bicep' = if (policyAssignmentsEnabled) {
  name: 'cmk-policy-${resourceToken}'
  params: {
    environmentName: environmentName
    minimumRsaKeySize: 2048
    maximumDaysToRotate: 90
  }
}

output AZURE_LOCATION string = location
output AZURE_TENANT_ID string = tenant().tenantId
output AZURE_RESOURCE_GROUP string = rg.name
output AZURE_FUNCTION_APP_NAME string = functionApp.outputs.name
output AZURE_FUNCTION_APP_ID string = functionApp.outputs.id
output AZURE_CONTROLLER_PRINCIPAL_ID string = identity.outputs.principalId
output LOG_ANALYTICS_WORKSPACE_ID string = monitoring.outputs.workspaceCustomerId
output DEAD_LETTER_STORAGE_ACCOUNT_ID string = storage.outputs.id
output DEAD_LETTER_CONTAINER_NAME string = deadLetterContainerName
output KEY_EVENT_SOURCES array = [for vault in vaults: {
  subscriptionId: vault.subscriptionId
  resourceGroup: vault.resourceGroup
  systemTopicName: vault.systemTopicName
}]
output RESOURCE_EVENT_SOURCE object = {
  subscriptionId: subscription().subscriptionId
  resourceGroup: rg.name
  systemTopicName: subscriptionTopic.outputs.name
}
output CMK_RESOURCE_TOKEN string = resourceToken

// What this environment adds outside its own resource group, for the predown hook (infra/hooks/predown.sh):
// `azd down` deletes only the resource group it created. Flat lists of resource ids (no JSON parser needed).
output CMK_VAULT_IDS array = [for vault in vaults: resourceId(vault.subscriptionId, vault.resourceGroup, 'Microsoft.KeyVault/vaults', vault.name)]
output CMK_ACCESS_POLICY_VAULT_IDS array = union(accessPolicyVaultIds, webhookSecretAccessPolicyVaultIds)
output CMK_EVENT_SUBSCRIPTION_IDS array = [for vault in vaults: '${resourceId(vault.subscriptionId, vault.resourceGroup, 'Microsoft.EventGrid/systemTopics', vault.systemTopicName)}/eventSubscriptions/cmk-controller-key-events-${resourceToken}']
output CMK_CREATED_SYSTEM_TOPIC_IDS array = [for vault in filter(vaults, candidate => !candidate.adoptSystemTopic): resourceId(vault.subscriptionId, vault.resourceGroup, 'Microsoft.EventGrid/systemTopics', vault.systemTopicName)]
output CMK_DIAGNOSTIC_SETTING_NAME string = 'cmk-controller-audit-${resourceToken}'
output CMK_ROLE_SUBSCRIPTION_IDS array = union(readerScopes, [
  subscription().subscriptionId
], webhookSecretSubscriptionIds)
output CMK_CUSTOM_ROLE_IDS array = customRoles.outputs.roleDefinitionIds
output CMK_POLICY_ASSIGNMENT_IDS array = policyAssignmentsEnabled ? policy.outputs.assignmentIds : []
output ALERT_TOPIC_ENDPOINT string = alertTopicEnabled ? alertTopic.outputs.endpoint : ''
