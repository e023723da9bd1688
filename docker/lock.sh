#!/usr/bin/env bash
# Rewrite docker/requirements.lock: the image's dependencies (the core, the server and
# cli extras, and what builds the package), exactly pinned with the sha256 of every
# file on PyPI, for Python 3.11 on Linux (the Dockerfile's base image). Run it after
# changing a dependency in pyproject.toml; tests/test_docker.py checks that the lock
# still satisfies pyproject.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
# PyPI only: no machine-local pip configuration (find-links, extra indexes, constraints).
PIP_CONFIG_FILE=/dev/null PIP_FIND_LINKS= PIP_CONSTRAINT= CUSTOM_COMPILE_COMMAND="bash docker/lock.sh" \
    "${VENV:-.venv}/bin/pip-compile" --quiet --generate-hashes --allow-unsafe --strip-extras \
    --extra server --extra cli --all-build-deps \
    --index-url https://pypi.org/simple --no-emit-index-url --no-emit-find-links \
    --output-file docker/requirements.lock pyproject.toml
