#!/usr/bin/env bash
# Install what the serverless tests need (tests/test_functions*, test_serve*, test_dispatchers*, test_deploy*):
#   - the cloud SDKs the dispatchers import lazily, and azure-functions for deploy/azure (this Python);
#   - gcloud-tasks-emulator in its own venv: it pins protobuf<5, which the SDKs above cannot share;
#   - Azurite (npm) for the azure_queue dispatcher, and shellcheck (Debian) for the deploy scripts.
# The Pub/Sub emulator comes with this machine's gcloud (`gcloud beta emulators pubsub start`).
# Idempotent: a step whose tool is already there is a no-op. Tools go to $SWARM_TOOLS
# (default ~/.cache/swarm-tools), where the tests look for them.
set -euo pipefail

PYTHON="${PYTHON:-python}"
TOOLS="${SWARM_TOOLS:-$HOME/.cache/swarm-tools}"
mkdir -p "$TOOLS"

step() {  # step LABEL CMD...
  local t0=$SECONDS
  echo "==> $1"
  shift
  "$@"
  echo "==> done in $((SECONDS - t0))s"
}


step "cloud SDKs for the dispatchers + azure-functions" \
  "$PYTHON" -m pip install --quiet --disable-pip-version-check \
  google-cloud-pubsub google-cloud-tasks azure-storage-queue azure-functions

if [ ! -x "$TOOLS/tasks-emulator/bin/gcloud-tasks-emulator" ]; then
  step "gcloud-tasks-emulator (own venv)" bash -c "
    '$PYTHON' -m venv '$TOOLS/tasks-emulator' &&
    PIP_CONSTRAINT= '$TOOLS/tasks-emulator/bin/python' -m pip install --quiet --disable-pip-version-check gcloud-tasks-emulator"
fi

if [ ! -x "$TOOLS/azurite/node_modules/.bin/azurite-queue" ]; then
  step "azurite (npm)" npm install --silent --no-audit --no-fund --prefix "$TOOLS/azurite" azurite@3
fi

if ! command -v shellcheck >/dev/null; then
  step "shellcheck (apt)" bash -c "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq shellcheck >/dev/null"
fi

command -v gcloud >/dev/null || { echo "gcloud is missing: the Pub/Sub emulator test needs the Google Cloud SDK with its pubsub-emulator component" >&2; exit 1; }
echo "==> serverless tools ready in $TOOLS (${SECONDS}s)"
