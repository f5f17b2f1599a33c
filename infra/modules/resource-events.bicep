// The event subscription that delivers the Azure subscription's resource events on vaults, storage accounts
// (and their encryption scopes) and role assignments to the controller's on_resource_event function: drift
// caught in seconds (controller/resource_events.py, controller/compliance/drift.py). Deployed by
// infra/hooks/postdeploy.sh (through infra/events.bicep) after the code, because Event Grid checks that the
// function exists. The AzureFunction endpoint type lets Event Grid fetch and rotate the function's key itself.
param systemTopicName string
param functionAppId string
param functionName string = 'on_resource_event'
param deadLetterStorageAccountId string
param deadLetterContainerName string

@description('The azd environment\'s resource token: one subscription per environment on the shared system topic.')
param resourceToken string

resource systemTopic 'Microsoft.EventGrid/systemTopics@2022-06-15' existing = {
  name: systemTopicName
}

resource resourceEvents 'Microsoft.EventGrid/systemTopics/eventSubscriptions@2022-06-15' = {
  parent: systemTopic
  name: 'cmk-controller-resource-events-${resourceToken}'
  properties: {
    eventDeliverySchema: 'EventGridSchema'
    destination: {
      endpointType: 'AzureFunction'
      properties: {
        resourceId: '${functionAppId}/functions/${functionName}'
        maxEventsPerBatch: 1
        preferredBatchSizeInKilobytes: 64
      }
    }
    filter: {
      includedEventTypes: [
        'Microsoft.Resources.ResourceWriteSuccess'
        'Microsoft.Resources.ResourceDeleteSuccess'
        'Microsoft.Resources.ResourceActionSuccess'
      ]
      // Only what the compliance rules read: vaults (access policies, firewall, keys), storage accounts and
      // their encryption scopes, role assignments. The subscription-wide topic carries every resource's
      // events; string comparisons in Event Grid filters ignore case.
      advancedFilters: [
        {
          operatorType: 'StringBeginsWith'
          key: 'data.operationName'
          values: [
            'Microsoft.KeyVault/vaults/'
            'Microsoft.Storage/storageAccounts/'
            'Microsoft.Authorization/roleAssignments/'
          ]
        }
        {
          // Reading an account's keys changes nothing the rules look at.
          operatorType: 'StringNotContains'
          key: 'data.operationName'
          values: [
            '/listKeys/action'
            '/listAccountSas/action'
            '/listServiceSas/action'
          ]
        }
      ]
    }
    // Event Grid's maximum: 30 attempts over 24 hours; the controller dedupes redeliveries for longer.
    retryPolicy: {
      maxDeliveryAttempts: 30
      eventTimeToLiveInMinutes: 1440
    }
    deadLetterWithResourceIdentity: {
      identity: {
        type: 'SystemAssigned'
      }
      deadLetterDestination: {
        endpointType: 'StorageBlob'
        properties: {
          resourceId: deadLetterStorageAccountId
          blobContainerName: deadLetterContainerName
        }
      }
    }
  }
}

output id string = resourceEvents.id
