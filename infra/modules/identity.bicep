// The controller's user-assigned managed identity: every role below is granted to it, never to the app itself,
// so the grants survive a re-created function app and can be reviewed in one place.
param name string
param location string
param tags object

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: name
  location: location
  tags: tags
}

output id string = identity.id
output name string = identity.name
output principalId string = identity.properties.principalId
output clientId string = identity.properties.clientId
