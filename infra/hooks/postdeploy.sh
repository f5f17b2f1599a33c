#!/usr/bin/env bash
# azd postdeploy hook: subscribe the deployed on_key_event function to each managed vault's key events, and
# on_resource_event to the subscription's resource events (drift).
# Runs after `azd deploy` because Event Grid validates the function when the subscription is created. It
# deploys infra/events.bicep (Bicep, not ad-hoc CLI calls) so that the retry policy, the included event types
# and the identity-based dead-lettering are declared in code. No key or secret is read: the AzureFunction
# endpoint type lets Event Grid fetch the function's key itself.
#
# Inputs: the outputs of infra/main.bicep, which azd exports to hooks as environment variables.
set -euo pipefail

: "${AZURE_SUBSCRIPTION_ID:?run through azd (azd up / azd deploy), which sets the environment}"
: "${AZURE_LOCATION:?}"
: "${AZURE_RESOURCE_GROUP:?}"
: "${AZURE_FUNCTION_APP_NAME:?}"
: "${AZURE_FUNCTION_APP_ID:?}"
: "${DEAD_LETTER_STORAGE_ACCOUNT_ID:?}"
: "${DEAD_LETTER_CONTAINER_NAME:?}"
: "${CMK_RESOURCE_TOKEN:?run azd provision first: main.bicep outputs CMK_RESOURCE_TOKEN}"
: "${KEY_EVENT_SOURCES:?run azd provision first: main.bicep outputs KEY_EVENT_SOURCES}"
: "${RESOURCE_EVENT_SOURCE:?run azd provision first: main.bicep outputs RESOURCE_EVENT_SOURCE}"
# Seconds between attempts while the function is indexed and the endpoint warms up (tests set 0).
retry_seconds="${CMK_HOOK_RETRY_SECONDS:-15}"
function_name="on_key_event"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# shellcheck source=infra/hooks/common.sh
source "$root/infra/hooks/common.sh"

require_az_login postdeploy

# A Flex Consumption app indexes its functions shortly after the package lands: wait until Event Grid can see
# the function, or it rejects the subscription.
for attempt in $(seq 1 20); do
  if az functionapp function show --subscription "$AZURE_SUBSCRIPTION_ID" \
      --resource-group "$AZURE_RESOURCE_GROUP" --name "$AZURE_FUNCTION_APP_NAME" \
      --function-name "$function_name" --only-show-errors --output none 2>/dev/null; then
    break
  fi
  if [[ "$attempt" == 20 ]]; then
    echo "postdeploy: function $function_name not found on $AZURE_FUNCTION_APP_NAME after deployment. If the app" \
      "loaded no function, its logs name the setting that stopped it at start-up, e.g. an unresolved" \
      "Key Vault reference; fix it, then run \`azd hooks run postdeploy\`." >&2
    exit 1
  fi
  echo "postdeploy: waiting for $function_name to be indexed ($attempt/20)..."
  sleep "$retry_seconds"
done

parameters="$(mktemp)"
trap 'rm -f "$parameters"' EXIT
cat >"$parameters" <<JSON
{
  "\$schema": "https://schema.management.azure.com/schemas/2019-04-01/deploymentParameters.json#",
  "contentVersion": "1.0.0.0",
  "parameters": {
    "eventSources": { "value": $KEY_EVENT_SOURCES },
    "resourceEventSource": { "value": $RESOURCE_EVENT_SOURCE },
    "functionAppId": { "value": "$AZURE_FUNCTION_APP_ID" },
    "functionName": { "value": "$function_name" },
    "deadLetterStorageAccountId": { "value": "$DEAD_LETTER_STORAGE_ACCOUNT_ID" },
    "deadLetterContainerName": { "value": "$DEAD_LETTER_CONTAINER_NAME" },
    "resourceToken": { "value": "$CMK_RESOURCE_TOKEN" }
  }
}
JSON

# The endpoint validation can race the host's start-up right after a deployment: retry a few times.
for attempt in 1 2 3; do
  if az deployment sub create --subscription "$AZURE_SUBSCRIPTION_ID" --location "$AZURE_LOCATION" \
      --name "cmk-key-events-${AZURE_ENV_NAME:-controller}" \
      --template-file "$root/infra/events.bicep" --parameters "@$parameters" \
      --only-show-errors --output none; then
    echo "postdeploy: on_key_event subscribed to the key events of every managed vault, on_resource_event to" \
      "the subscription's resource events."
    exit 0
  fi
  echo "postdeploy: event subscription deployment failed (attempt $attempt/3); retrying..." >&2
  sleep "$((retry_seconds * 2))"
done
exit 1
