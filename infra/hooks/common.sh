# Shared by the azd hooks (sourced, not run). The hooks call the Azure CLI, which keeps its own login: `azd auth
# login` does not log `az` in (https://learn.microsoft.com/azure/developer/azure-developer-cli/reference#azd-auth-login),
# unless azd is set to delegate to it (`azd config set auth.useAzCliAuth true`).

# Fails, with what to do, unless `az` is installed and logged in to the subscription azd deploys to.
require_az_login() {
  local hook="$1"
  if ! command -v az >/dev/null 2>&1; then
    echo "$hook: the Azure CLI (az) is not installed; install it (https://aka.ms/azure-cli) and run \`az login\`." >&2
    return 1
  fi
  if ! az account show --subscription "$AZURE_SUBSCRIPTION_ID" --only-show-errors --output none 2>/dev/null; then
    echo "$hook: the Azure CLI is not logged in to subscription $AZURE_SUBSCRIPTION_ID. \`azd auth login\` does not" \
      "log in \`az\`: run \`az login\` (same account and tenant as azd) and then \`azd hooks run $hook\`," \
      "or let azd use the Azure CLI's login (\`azd config set auth.useAzCliAuth true\`)." >&2
    return 1
  fi
}

# The items of a flat JSON array of strings as azd exports array outputs (["a","b"]), one a line. Resource ids
# contain neither quotes nor commas.
json_strings() {
  local text="${1:-[]}"
  text="${text//[[:space:]]/}"
  text="${text#[}"
  text="${text%]}"
  [[ -z "$text" ]] && return 0
  local item
  IFS=',' read -r -a items <<<"$text"
  for item in "${items[@]}"; do
    item="${item#\"}"
    printf '%s\n' "${item%\"}"
  done
}
