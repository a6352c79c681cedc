#!/usr/bin/env bash
# Deploy swarm to Azure Functions (Python v2 model, Linux consumption plan) with the az CLI.
#
#   RESOURCE_GROUP=swarm-rg STORAGE_ACCOUNT=swarmstore123 APP_NAME=swarm-fn-123 bash deploy/azure/deploy.sh
#   (DRY_RUN=1 prints the commands instead)
#
# It creates (only what is missing): a resource group, a storage account with a blob container
# for every store and the dispatch queue, the function app with a system-assigned identity
# that may only use that container and that queue, then zip-deploys function_app.py with
# swarm_core/, functions/, backends/ and blueprints/ and a remote build of requirements.txt.
#
# Variables (environment; defaults in brackets):
#   RESOURCE_GROUP    resource group (required)
#   STORAGE_ACCOUNT   storage account, 3-24 lowercase letters/digits, globally unique (required)
#   APP_NAME          function app name, globally unique (required)
#   LOCATION          Azure region [westeurope]
#   CONTAINER         blob container holding every store: SWARM_STORE=az://$CONTAINER/swarm [swarm]
#   QUEUE             storage queue of node deliveries (the queue trigger's) [swarm-nodes]
#   SWARM_MODEL       model name [gpt-4o-mini]
#   OPENAI_API_KEY    set as an app setting when given (better: a Key Vault reference,
#                     OPENAI_API_KEY=@Microsoft.KeyVault(SecretUri=...)) [unset]
#   AZURE_OPENAI_ENDPOINT  an Azure OpenAI endpoint instead; the functions run blueprints/default, so set
#                          its [llm] provider = "azure" and model = the deployment name first [unset]
#   AZURE_OPENAI_API_KEY   its key, required with AZURE_OPENAI_ENDPOINT (a Key Vault reference is better) [unset]
#   SWARM_API_TOKEN   bearer token both HTTP triggers require on top of the function key [unset]
#   DRY_RUN           1: print every command, run none [0]
set -euo pipefail

: "${RESOURCE_GROUP:?set RESOURCE_GROUP}"
: "${STORAGE_ACCOUNT:?set STORAGE_ACCOUNT (3-24 lowercase letters and digits)}"
: "${APP_NAME:?set APP_NAME}"
if [ -n "${AZURE_OPENAI_ENDPOINT:-}" ]; then
  : "${AZURE_OPENAI_API_KEY:?set AZURE_OPENAI_API_KEY too: without it the functions have no model}"
fi
LOCATION="${LOCATION:-westeurope}"
CONTAINER="${CONTAINER:-swarm}"
QUEUE="${QUEUE:-swarm-nodes}"
SWARM_MODEL="${SWARM_MODEL:-gpt-4o-mini}"
DRY_RUN="${DRY_RUN:-0}"
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"

run() {  # run CMD...: print it; run it unless DRY_RUN=1
  echo "+ $*"
  if [ "$DRY_RUN" != 1 ]; then "$@"; fi
}

value() {  # value PLACEHOLDER CMD...: the command's output, or PLACEHOLDER in a dry run
  local placeholder=$1
  shift
  if [ "$DRY_RUN" = 1 ]; then echo "$placeholder"; else "$@"; fi
}

run az group create --name "$RESOURCE_GROUP" --location "$LOCATION" --output none
run az storage account create --name "$STORAGE_ACCOUNT" --resource-group "$RESOURCE_GROUP" --location "$LOCATION" \
  --sku Standard_LRS --kind StorageV2 --min-tls-version TLS1_2 --allow-blob-public-access false --output none
ACCOUNT_ID="$(value "/subscriptions/SUB/resourceGroups/$RESOURCE_GROUP/providers/Microsoft.Storage/storageAccounts/$STORAGE_ACCOUNT" \
  az storage account show --name "$STORAGE_ACCOUNT" --resource-group "$RESOURCE_GROUP" --query id --output tsv)"
CONN="$(value "DefaultEndpointsProtocol=https;AccountName=$STORAGE_ACCOUNT;AccountKey=KEY" \
  az storage account show-connection-string --name "$STORAGE_ACCOUNT" --resource-group "$RESOURCE_GROUP" --query connectionString --output tsv)"
run az storage container create --name "$CONTAINER" --connection-string "$CONN" --output none
run az storage queue create --name "$QUEUE" --connection-string "$CONN" --output none
run az storage queue create --name "$QUEUE-poison" --connection-string "$CONN" --output none

# The app: Linux consumption plan, Python 3.11, a system-assigned identity.
run az functionapp create --name "$APP_NAME" --resource-group "$RESOURCE_GROUP" --storage-account "$STORAGE_ACCOUNT" \
  --consumption-plan-location "$LOCATION" --os-type Linux --runtime python --runtime-version 3.11 \
  --functions-version 4 --assign-identity "[system]" --output none
PRINCIPAL="$(value 00000000-0000-0000-0000-000000000000 \
  az functionapp identity show --name "$APP_NAME" --resource-group "$RESOURCE_GROUP" --query principalId --output tsv)"

# Least privilege for the swarm's own traffic: data roles on one container and one queue only.
# (The Functions host itself still uses AzureWebJobsStorage, set by `functionapp create`.)
run az role assignment create --assignee-object-id "$PRINCIPAL" --assignee-principal-type ServicePrincipal \
  --role "Storage Blob Data Contributor" --scope "$ACCOUNT_ID/blobServices/default/containers/$CONTAINER" --output none
run az role assignment create --assignee-object-id "$PRINCIPAL" --assignee-principal-type ServicePrincipal \
  --role "Storage Queue Data Message Sender" --scope "$ACCOUNT_ID/queueServices/default/queues/$QUEUE" --output none

settings=(
  "SWARM_STORE=az://$CONTAINER/swarm"
  "AZURE_STORAGE_ACCOUNT_NAME=$STORAGE_ACCOUNT"
  "SWARM_DISPATCHER=azure_queue"
  "SWARM_AZURE_QUEUE=$QUEUE"
  "SWARM_AZURE_QUEUE_ACCOUNT_URL=https://$STORAGE_ACCOUNT.queue.core.windows.net"
  "SWARM_MAX_DELIVERY_ATTEMPTS=5"
  "SWARM_MODEL=$SWARM_MODEL"
  "SCM_DO_BUILD_DURING_DEPLOYMENT=true"
  "ENABLE_ORYX_BUILD=true"
)
if [ -n "${OPENAI_API_KEY:-}" ]; then settings+=("OPENAI_API_KEY=$OPENAI_API_KEY"); fi
if [ -n "${AZURE_OPENAI_ENDPOINT:-}" ]; then
  settings+=("AZURE_OPENAI_ENDPOINT=$AZURE_OPENAI_ENDPOINT" "AZURE_OPENAI_API_KEY=$AZURE_OPENAI_API_KEY")
fi
if [ -n "${SWARM_API_TOKEN:-}" ]; then settings+=("SWARM_API_TOKEN=$SWARM_API_TOKEN"); fi
echo "+ az functionapp config appsettings set --name $APP_NAME --resource-group $RESOURCE_GROUP --settings ${settings[*]%%=*} (values not shown)"
if [ "$DRY_RUN" != 1 ]; then
  az functionapp config appsettings set --name "$APP_NAME" --resource-group "$RESOURCE_GROUP" --settings "${settings[@]}" --output none
fi

# Stage and zip-deploy; the remote build installs requirements.txt.
STAGE="$(mktemp -d)"
trap 'rm -rf "$STAGE"' EXIT
mkdir "$STAGE/app"
cp -r "$REPO/swarm_core" "$REPO/functions" "$REPO/backends" "$REPO/blueprints" "$STAGE/app/"
cp "$REPO/deploy/azure/function_app.py" "$REPO/deploy/azure/host.json" "$REPO/deploy/azure/requirements.txt" "$STAGE/app/"
find "$STAGE/app" -name __pycache__ -prune -exec rm -rf {} +
(cd "$STAGE/app" && python3 -m zipfile -c ../app.zip ./*)
run az functionapp deployment source config-zip --name "$APP_NAME" --resource-group "$RESOURCE_GROUP" \
  --src "$STAGE/app.zip" --build-remote true --output none

HOST="$(value "$APP_NAME.azurewebsites.net" az functionapp show --name "$APP_NAME" --resource-group "$RESOURCE_GROUP" --query defaultHostName --output tsv)"
cat <<MSG
load_goal     https://$HOST/api/load_goal
execute_node  https://$HOST/api/execute_node   (and the queue trigger on $QUEUE)
store         az://$CONTAINER/swarm in $STORAGE_ACCOUNT
function key: az functionapp keys list --name $APP_NAME --resource-group $RESOURCE_GROUP --query functionKeys.default --output tsv
start a swarm: curl -X POST https://$HOST/api/load_goal -H "x-functions-key: \$KEY" -H 'Content-Type: application/json' -d '{"goal": "..."}'
MSG
