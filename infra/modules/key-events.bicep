// The event subscription that delivers one vault's key events to the controller's on_key_event function.
// Deployed by infra/hooks/postdeploy.sh (through infra/events.bicep) after the code, because Event Grid checks
// that the function exists when the subscription is created. The AzureFunction endpoint type lets Event Grid
// fetch and rotate the function's key itself: no key or URL with a secret appears here.
param systemTopicName string
param functionAppId string
param functionName string
param deadLetterStorageAccountId string
param deadLetterContainerName string

@description('The azd environment\'s resource token: one subscription per environment on the vault\'s shared system topic.')
param resourceToken string

resource systemTopic 'Microsoft.EventGrid/systemTopics@2022-06-15' existing = {
  name: systemTopicName
}

resource keyEvents 'Microsoft.EventGrid/systemTopics/eventSubscriptions@2022-06-15' = {
  parent: systemTopic
  name: 'cmk-controller-key-events-${resourceToken}'
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
        'Microsoft.KeyVault.KeyNewVersionCreated'
        'Microsoft.KeyVault.KeyNearExpiry'
        'Microsoft.KeyVault.KeyExpired'
      ]
    }
    // Event Grid's maximum: 30 attempts over 24 hours. The controller dedupes redeliveries for 48 hours
    // (CMK_EVENT_DEDUPE_HOURS), longer than this retry window.
    retryPolicy: {
      maxDeliveryAttempts: 30
      eventTimeToLiveInMinutes: 1440
    }
    // What still fails is kept, written with the system topic's own identity (no storage key or SAS).
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

output id string = keyEvents.id
