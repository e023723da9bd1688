#!/usr/bin/env bash
# Set up a virtual environment from the project's own files and run every check:
# ruff, mypy and the whole test suite (core, in two tiers, and both integration packages).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
# shellcheck source=scripts/venv.sh
source scripts/venv.sh
synaptoroute_venv
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -e ".[dev]" \
    -e "integrations/langchain[test]" \
    -e "integrations/llama-index[test]"
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
"$VENV/bin/mypy"
# Two tiers: the unit tier first (no model, no network; under a minute), then the
# integration tier (the real model, servers, browsers) and both integration packages.
# pytest's exit status 5 (nothing selected, e.g. with -k) is not a failure here.
tier() { "$VENV/bin/python" -m pytest -q -p no:cacheprovider "$@" || [ $? -eq 5 ]; }
tier "$@" tests -m "not model"
tier "$@" tests -m model
tier "$@" integrations/langchain/tests integrations/llama-index/tests
