#!/usr/bin/env bash
# azd predown hook: remove what this environment added outside its own resource group, and only that, before
# `azd down` deletes the resource group azd created. azd (>= 1.24.1, pinned in azure.yaml) deletes only resource
# groups the deployment created, so without this hook the following would stay behind, pointing at a deleted app:
# - the key event subscriptions (named with this environment's resource token) on the vaults' system topics;
# - the system topics this environment created, once no other subscription uses them (adopted topics stay);
# - the vaults' AuditEvent diagnostic settings named with this environment's resource token;
# - the access policies of the controller identity on access-policy vaults;
# - every role assignment of the controller identity, in every subscription it was granted a role in;
# - the custom role definitions and the optional policy assignments (subscription scope).
# Idempotent: whatever is already gone is skipped, so the hook can be re-run after a partial failure.
#
# Inputs: the outputs of infra/main.bicep, which azd exports to hooks as environment variables.
set -euo pipefail

: "${AZURE_SUBSCRIPTION_ID:?run through azd (azd down), which sets the environment}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# shellcheck source=infra/hooks/common.sh
source "$root/infra/hooks/common.sh"

if [[ -z "${AZURE_CONTROLLER_PRINCIPAL_ID:-}" || -z "${CMK_RESOURCE_TOKEN:-}" ]]; then
  echo "predown: this environment was never provisioned (no main.bicep outputs): nothing outside its resource group to remove."
  exit 0
fi

require_az_login predown

exists() {
  az resource show --ids "$1" --only-show-errors --output none 2>/dev/null
}

remove() {
  local id="$1" what="$2"
  if exists "$id"; then
    az resource delete --ids "$id" --only-show-errors --output none
    echo "predown: removed $what $id"
  fi
}

# /subscriptions/<sub>/resourceGroups/<rg>/providers/<type>/<name> -> "<sub> <rg> <name>"
id_parts() {
  local id="$1" subscription group
  subscription="${id#/subscriptions/}"
  subscription="${subscription%%/*}"
  group="${id#*/resourceGroups/}"
  group="${group%%/*}"
  printf '%s %s %s\n' "$subscription" "$group" "${id##*/}"
}

while read -r subscription_id; do
  [[ -n "$subscription_id" ]] && remove "$subscription_id" "key event subscription"
done < <(json_strings "${CMK_EVENT_SUBSCRIPTION_IDS:-[]}")

while read -r topic_id; do
  [[ -z "$topic_id" ]] && continue
  exists "$topic_id" || continue
  remaining="$(az rest --method get --url "$topic_id/eventSubscriptions?api-version=2022-06-15" \
    --query "length(value)" --only-show-errors --output tsv)"
  if [[ "$remaining" == 0 ]]; then
    remove "$topic_id" "system topic"
  else
    echo "predown: kept system topic $topic_id: $remaining other event subscription(s) still use it"
  fi
done < <(json_strings "${CMK_CREATED_SYSTEM_TOPIC_IDS:-[]}")

while read -r vault_id; do
  [[ -n "$vault_id" ]] && remove "$vault_id/providers/Microsoft.Insights/diagnosticSettings/${CMK_DIAGNOSTIC_SETTING_NAME:?}" \
    "diagnostic setting"
done < <(json_strings "${CMK_VAULT_IDS:-[]}")

while read -r vault_id; do
  [[ -z "$vault_id" ]] && continue
  read -r subscription group name <<<"$(id_parts "$vault_id")"
  policies="$(az keyvault show --subscription "$subscription" --resource-group "$group" --name "$name" \
    --query "length(properties.accessPolicies[?objectId=='$AZURE_CONTROLLER_PRINCIPAL_ID'])" \
    --only-show-errors --output tsv 2>/dev/null || echo 0)"
  if [[ "$policies" != 0 ]]; then
    az keyvault delete-policy --subscription "$subscription" --resource-group "$group" --name "$name" \
      --object-id "$AZURE_CONTROLLER_PRINCIPAL_ID" --only-show-errors --output none
    echo "predown: removed the controller's access policy on $vault_id"
  fi
done < <(json_strings "${CMK_ACCESS_POLICY_VAULT_IDS:-[]}")

while read -r subscription; do
  [[ -z "$subscription" ]] && continue
  # Filtered on principalId rather than --assignee, which needs a Microsoft Graph lookup.
  assignments="$(az role assignment list --all --subscription "$subscription" \
    --query "[?principalId=='$AZURE_CONTROLLER_PRINCIPAL_ID'].id" --only-show-errors --output tsv)"
  if [[ -n "$assignments" ]]; then
    # shellcheck disable=SC2086 # one id a line, no spaces in ids
    az role assignment delete --ids $assignments --only-show-errors --output none
    echo "predown: removed the controller's role assignments in subscription $subscription"
  fi
done < <(json_strings "${CMK_ROLE_SUBSCRIPTION_IDS:-[]}")

while read -r role_id; do
  [[ -n "$role_id" ]] && remove "$role_id" "custom role"
done < <(json_strings "${CMK_CUSTOM_ROLE_IDS:-[]}")

while read -r assignment_id; do
  [[ -n "$assignment_id" ]] && remove "$assignment_id" "policy assignment"
done < <(json_strings "${CMK_POLICY_ASSIGNMENT_IDS:-[]}")

echo "predown: nothing of this environment is left outside its resource group; azd now deletes that group."
