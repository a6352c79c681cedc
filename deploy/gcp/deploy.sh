#!/usr/bin/env bash
# Deploy swarm's two functions to Google Cloud as Cloud Run functions (gen2).
#
#   PROJECT=my-project bash deploy/gcp/deploy.sh        # DRY_RUN=1 prints the commands instead
#
# It creates (only what is missing): a service account, a Cloud Storage bucket for every
# store, a Cloud Tasks queue (or a Pub/Sub topic + push subscription + dead-letter topic),
# then deploys `execute_node` and `load_goal` from one staged source folder. Re-running it
# updates everything in place.
#
# Variables (environment; defaults in brackets):
#   PROJECT          GCP project id (required)
#   REGION           region of the functions, queue and bucket [europe-west1]
#   PREFIX           prefix of every resource name [swarm]
#   BUCKET           bucket for state/history/actions/memory [$PROJECT-$PREFIX]
#   STORE_PREFIX     folder inside the bucket: SWARM_STORE=gs://$BUCKET/$STORE_PREFIX [swarm]
#   DISPATCHER       cloud_tasks | pubsub: how execute_node reaches the next nodes [cloud_tasks]
#   QUEUE            Cloud Tasks queue name (cloud_tasks) [$PREFIX-nodes]
#   TOPIC            Pub/Sub topic name (pubsub); its subscription is $TOPIC-push [$PREFIX-nodes]
#   MAX_ATTEMPTS     deliveries of one node before it is failed: queue max-attempts, Pub/Sub
#                    max-delivery-attempts and SWARM_MAX_DELIVERY_ATTEMPTS alike [5]
#   SA_NAME          service account the functions run as [$PREFIX-fn]
#   AUTH             iam: both functions private, callers need roles/run.invoker, queue and push
#                    send OIDC tokens of SA_NAME; token: public URLs guarded by the bearer
#                    SWARM_API_TOKEN read from Secret Manager secret TOKEN_SECRET (cloud_tasks only:
#                    a Pub/Sub push cannot carry a bearer) [iam]
#   TOKEN_SECRET     Secret Manager secret holding SWARM_API_TOKEN (AUTH=token) [$PREFIX-api-token]
#   INVOKER          member allowed to call load_goal when AUTH=iam, e.g. user:me@example.com [none]
#   OPENAI_SECRET    Secret Manager secret holding OPENAI_API_KEY; empty: no key is set [openai-api-key]
#   OPENAI_BASE_URL  an OpenAI-compatible endpoint instead of OpenAI's [unset]
#   SWARM_MODEL      model name [gpt-4o-mini]
#   RUNTIME          Cloud Run functions runtime [python311]
#   MEMORY           memory per instance [512Mi]
#   TIMEOUT          execute_node timeout; keep the blueprint's lease_seconds above it [540s]
#   MAX_INSTANCES    instances per function [50]
#   CONCURRENCY      requests per instance (one running node each) [8]
#   DRY_RUN          1: print every command, run none [0]
set -euo pipefail

: "${PROJECT:?set PROJECT to your GCP project id}"
REGION="${REGION:-europe-west1}"
PREFIX="${PREFIX:-swarm}"
BUCKET="${BUCKET:-$PROJECT-$PREFIX}"
STORE_PREFIX="${STORE_PREFIX:-swarm}"
DISPATCHER="${DISPATCHER:-cloud_tasks}"
QUEUE="${QUEUE:-$PREFIX-nodes}"
TOPIC="${TOPIC:-$PREFIX-nodes}"
MAX_ATTEMPTS="${MAX_ATTEMPTS:-5}"
SA_NAME="${SA_NAME:-$PREFIX-fn}"
AUTH="${AUTH:-iam}"
TOKEN_SECRET="${TOKEN_SECRET:-$PREFIX-api-token}"
INVOKER="${INVOKER:-}"
OPENAI_SECRET="${OPENAI_SECRET-openai-api-key}"
SWARM_MODEL="${SWARM_MODEL:-gpt-4o-mini}"
RUNTIME="${RUNTIME:-python311}"
MEMORY="${MEMORY:-512Mi}"
TIMEOUT="${TIMEOUT:-540s}"
MAX_INSTANCES="${MAX_INSTANCES:-50}"
CONCURRENCY="${CONCURRENCY:-8}"
DRY_RUN="${DRY_RUN:-0}"

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
SA="$SA_NAME@$PROJECT.iam.gserviceaccount.com"
FN_EXECUTE="$PREFIX-execute-node"
FN_LOAD="$PREFIX-load-goal"

case "$DISPATCHER" in cloud_tasks | pubsub) ;; *) echo "DISPATCHER must be cloud_tasks or pubsub" >&2; exit 2 ;; esac
case "$AUTH" in iam | token) ;; *) echo "AUTH must be iam or token" >&2; exit 2 ;; esac
if [ "$AUTH" = token ] && [ "$DISPATCHER" = pubsub ]; then
  echo "AUTH=token needs DISPATCHER=cloud_tasks: a Pub/Sub push carries an OIDC token, not a bearer" >&2
  exit 2
fi

run() {  # run CMD...: print it; run it unless DRY_RUN=1
  echo "+ $*"
  if [ "$DRY_RUN" != 1 ]; then "$@"; fi
}

exists() {  # exists CMD...: true when the describe command succeeds (always false in a dry run)
  [ "$DRY_RUN" != 1 ] && "$@" >/dev/null 2>&1
}

value() {  # value PLACEHOLDER CMD...: the command's output, or PLACEHOLDER in a dry run
  local placeholder=$1
  shift
  if [ "$DRY_RUN" = 1 ]; then echo "$placeholder"; else "$@"; fi
}

gc() { run gcloud --project="$PROJECT" --quiet "$@"; }

# 1. APIs
apis=(cloudfunctions.googleapis.com run.googleapis.com cloudbuild.googleapis.com artifactregistry.googleapis.com
  storage.googleapis.com iam.googleapis.com logging.googleapis.com secretmanager.googleapis.com)
if [ "$DISPATCHER" = cloud_tasks ]; then apis+=(cloudtasks.googleapis.com); else apis+=(pubsub.googleapis.com); fi
gc services enable "${apis[@]}"
PROJECT_NUMBER="$(value 123456789012 gcloud projects describe "$PROJECT" --format='value(projectNumber)')"

# 2. The functions' identity: no project-wide role, only grants on the resources below.
if ! exists gcloud --project="$PROJECT" iam service-accounts describe "$SA"; then
  gc iam service-accounts create "$SA_NAME" --display-name="swarm functions"
fi

# 3. One bucket holds every store; the functions may read and write its objects, nothing else.
if ! exists gcloud --project="$PROJECT" storage buckets describe "gs://$BUCKET"; then
  gc storage buckets create "gs://$BUCKET" --location="$REGION" --uniform-bucket-level-access --public-access-prevention
fi
gc storage buckets add-iam-policy-binding "gs://$BUCKET" --member="serviceAccount:$SA" --role=roles/storage.objectUser

# 4. Secrets the functions read
secrets=()
if [ -n "$OPENAI_SECRET" ]; then
  gc secrets add-iam-policy-binding "$OPENAI_SECRET" --member="serviceAccount:$SA" --role=roles/secretmanager.secretAccessor
  secrets+=("OPENAI_API_KEY=$OPENAI_SECRET:latest")
fi
if [ "$AUTH" = token ]; then
  gc secrets add-iam-policy-binding "$TOKEN_SECRET" --member="serviceAccount:$SA" --role=roles/secretmanager.secretAccessor
  secrets+=("SWARM_API_TOKEN=$TOKEN_SECRET:latest")
fi

# 5. The dispatcher's channel
env_vars="SWARM_STORE=gs://$BUCKET/$STORE_PREFIX,SWARM_DISPATCHER=$DISPATCHER,SWARM_MODEL=$SWARM_MODEL"
env_vars+=",SWARM_MAX_DELIVERY_ATTEMPTS=$MAX_ATTEMPTS,GOOGLE_CLOUD_PROJECT=$PROJECT"
env_vars+=",THREADS=$CONCURRENCY"  # functions-framework's request threads: one per concurrent request
if [ -n "${OPENAI_BASE_URL:-}" ]; then env_vars+=",OPENAI_BASE_URL=$OPENAI_BASE_URL"; fi
if [ "$DISPATCHER" = cloud_tasks ]; then
  if ! exists gcloud --project="$PROJECT" tasks queues describe "$QUEUE" --location="$REGION"; then
    gc tasks queues create "$QUEUE" --location="$REGION"
  fi
  gc tasks queues update "$QUEUE" --location="$REGION" --max-attempts="$MAX_ATTEMPTS" \
    --min-backoff=2s --max-backoff=300s --max-doublings=5 --max-concurrent-dispatches=200 --max-dispatches-per-second=100
  gc tasks queues add-iam-policy-binding "$QUEUE" --location="$REGION" --member="serviceAccount:$SA" --role=roles/cloudtasks.enqueuer
  env_vars+=",SWARM_TASKS_QUEUE=projects/$PROJECT/locations/$REGION/queues/$QUEUE"
  if [ "$AUTH" = iam ]; then
    # The task's OIDC token is minted for SA itself: it must be allowed to act as itself.
    gc iam service-accounts add-iam-policy-binding "$SA" --member="serviceAccount:$SA" --role=roles/iam.serviceAccountUser
    env_vars+=",SWARM_TASKS_SERVICE_ACCOUNT=$SA"
  fi
else
  for t in "$TOPIC" "$TOPIC-dead"; do
    if ! exists gcloud --project="$PROJECT" pubsub topics describe "$t"; then gc pubsub topics create "$t"; fi
  done
  gc pubsub topics add-iam-policy-binding "$TOPIC" --member="serviceAccount:$SA" --role=roles/pubsub.publisher
  PUBSUB_AGENT="service-$PROJECT_NUMBER@gcp-sa-pubsub.iam.gserviceaccount.com"
  # Pub/Sub mints the push OIDC token of SA, and moves exhausted messages to the dead-letter topic.
  gc iam service-accounts add-iam-policy-binding "$SA" --member="serviceAccount:$PUBSUB_AGENT" --role=roles/iam.serviceAccountTokenCreator
  gc pubsub topics add-iam-policy-binding "$TOPIC-dead" --member="serviceAccount:$PUBSUB_AGENT" --role=roles/pubsub.publisher
  env_vars+=",SWARM_PUBSUB_TOPIC=projects/$PROJECT/topics/$TOPIC"
fi

# 6. Stage one source folder for both functions
STAGE="$(mktemp -d)"
trap 'rm -rf "$STAGE"' EXIT
cp -r "$REPO/swarm_core" "$REPO/functions" "$REPO/backends" "$REPO/blueprints" "$STAGE/"
cp "$REPO/deploy/gcp/main.py" "$REPO/deploy/gcp/requirements.txt" "$STAGE/"
find "$STAGE" -name __pycache__ -prune -exec rm -rf {} +

deploy() {  # deploy NAME ENTRY_POINT ENV_VARS
  local access=--no-allow-unauthenticated
  if [ "$AUTH" = token ]; then access=--allow-unauthenticated; fi
  local extra=()
  if [ "${#secrets[@]}" -gt 0 ]; then extra+=("--set-secrets=$(IFS=,; echo "${secrets[*]}")"); fi
  gc functions deploy "$1" --gen2 --region="$REGION" --runtime="$RUNTIME" --source="$STAGE" \
    --entry-point="$2" --trigger-http "$access" --service-account="$SA" --memory="$MEMORY" \
    --timeout="$TIMEOUT" --max-instances="$MAX_INSTANCES" --concurrency="$CONCURRENCY" --cpu=1 \
    --set-env-vars="$3" "${extra[@]}"
}

# 7. execute_node first: its URL is what the dispatcher (and load_goal) deliver to
url_of() { gcloud --project="$PROJECT" functions describe "$1" --gen2 --region="$REGION" --format='value(serviceConfig.uri)'; }
EXECUTE_URL=""
if exists url_of "$FN_EXECUTE"; then EXECUTE_URL="$(url_of "$FN_EXECUTE")"; fi
if [ -n "$EXECUTE_URL" ]; then
  # A redeploy: the URL stays, so the new revision starts with it. Without it until a later update,
  # every delivery to a running swarm failed (500) for longer than a queue retries.
  deploy "$FN_EXECUTE" execute_node "$env_vars,SWARM_EXECUTE_NODE_URL=$EXECUTE_URL"
else
  deploy "$FN_EXECUTE" execute_node "$env_vars"
  EXECUTE_URL="$(value "https://$FN_EXECUTE-HASH.a.run.app" url_of "$FN_EXECUTE")"
  # New revision with its own URL in its environment (no rebuild); children go to that URL.
  gc run services update "$FN_EXECUTE" --region="$REGION" --update-env-vars="SWARM_EXECUTE_NODE_URL=$EXECUTE_URL"
fi
env_vars+=",SWARM_EXECUTE_NODE_URL=$EXECUTE_URL"
if [ "$AUTH" = iam ]; then
  gc functions add-invoker-policy-binding "$FN_EXECUTE" --region="$REGION" --member="serviceAccount:$SA"
fi
if [ "$DISPATCHER" = pubsub ]; then
  SUB="$TOPIC-push"
  sub_flags=(--push-endpoint="$EXECUTE_URL" --push-auth-service-account="$SA" --ack-deadline=600
    --dead-letter-topic="$TOPIC-dead" --max-delivery-attempts="$MAX_ATTEMPTS" --min-retry-delay=2s --max-retry-delay=300s)
  if exists gcloud --project="$PROJECT" pubsub subscriptions describe "$SUB"; then
    gc pubsub subscriptions update "$SUB" "${sub_flags[@]}"
  else
    gc pubsub subscriptions create "$SUB" --topic="$TOPIC" "${sub_flags[@]}"
  fi
  gc pubsub subscriptions add-iam-policy-binding "$SUB" --member="serviceAccount:$PUBSUB_AGENT" --role=roles/pubsub.subscriber
fi

# 8. load_goal: creates the swarm, dispatches the root
deploy "$FN_LOAD" load_goal "$env_vars"
LOAD_URL="$(value "https://$FN_LOAD-HASH.a.run.app" url_of "$FN_LOAD")"
if [ "$AUTH" = iam ] && [ -n "$INVOKER" ]; then
  gc functions add-invoker-policy-binding "$FN_LOAD" --region="$REGION" --member="$INVOKER"
fi

cat <<MSG
load_goal     $LOAD_URL
execute_node  $EXECUTE_URL   ($DISPATCHER)
store         gs://$BUCKET/$STORE_PREFIX
MSG
if [ "$AUTH" = iam ]; then
  echo "start a swarm: curl -X POST $LOAD_URL -H \"Authorization: Bearer \$(gcloud auth print-identity-token)\" -H 'Content-Type: application/json' -d '{\"goal\": \"...\"}'"
else
  echo "start a swarm: curl -X POST $LOAD_URL -H \"Authorization: Bearer \$SWARM_API_TOKEN\" -H 'Content-Type: application/json' -d '{\"goal\": \"...\"}'"
fi
echo "watch it:      SWARM_STORE=gs://$BUCKET/$STORE_PREFIX swarm status ID   (pip install -e '.[gcp]' in this checkout, gcloud auth application-default login)"
