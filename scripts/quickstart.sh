#!/usr/bin/env bash
# Set up a virtual environment and run the quick start: a few queries routed on the
# bundled default model with a local SQLite file.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
# shellcheck source=scripts/venv.sh
source scripts/venv.sh
synaptoroute_venv
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q -e .
exec "$VENV/bin/python" examples/quickstart.py "$@"
