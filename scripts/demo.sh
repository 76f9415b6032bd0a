#!/usr/bin/env bash
# Set up (idempotent) and run the end-to-end demo on the embedded defaults.
# Extra arguments go to `afinar demo` (see `afinar demo --help`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
"${AFINAR_VENV:-.venv}/bin/afinar" models prepare
exec "${AFINAR_VENV:-.venv}/bin/afinar" demo "$@"
