# Sourced by scripts/test.sh and scripts/quickstart.sh: make the virtual environment
# "$VENV" with "$PY" unless it is there, and make sure it has pip, with a message that
# says what to install where Python's venv module comes without it (Debian and Ubuntu
# package it apart as python3-venv: there the venv is made without pip, and a second
# run found a python, skipped the venv and failed with "No module named pip").
synaptoroute_venv() {
    if [ ! -x "$VENV/bin/python" ]; then
        "$PY" -m venv "$VENV" || {
            echo "could not make a virtual environment with '$PY -m venv $VENV':" \
                "on Debian and Ubuntu install python3-venv first (apt install python3-venv)," \
                "then remove $VENV and run this again" >&2
            return 1
        }
    fi
    "$VENV/bin/python" -m pip --version >/dev/null 2>&1 ||
        "$VENV/bin/python" -m ensurepip --upgrade >/dev/null 2>&1 || {
        echo "$VENV has no pip and cannot get one (ensurepip is missing): on Debian and" \
            "Ubuntu install python3-venv (apt install python3-venv), then remove $VENV and" \
            "run this again" >&2
        return 1
    }
}
