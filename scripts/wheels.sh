#!/usr/bin/env bash
# Release checks: build the wheel and sdist of all three packages, check them with
# `twine check --strict` and for their contents, then install the built wheels (not
# editable) into fresh virtual environments and run the test suite against them:
#   min     every declared minimum pinned (scripts/min_constraints.py), one environment
#           per package: the core with its dev extra and the core tests; each integration
#           (with the core wheel) with its test extra and its tests;
#   latest  the newest release each range allows, all three packages, every test;
#   pythons the same under each other Python this machine has of those the packages
#           support (SYNAPTOROUTE_OTHER_PYTHONS, default "3.10 3.13": the oldest and
#           the newest; python3.X on the PATH or pyenv's), each one missing skipped
#           with a line saying so.
#   tiers   pythons, and latest under $PY only where pythons found no other Python:
#           scripts/test.sh has already run every test at the latest versions under $PY
#           (editable installs) and the other Pythons test the installed wheels at the
#           latest versions, so a third full run under $PY added a fifth of CI's time
#           and no coverage.
# `all` is build, min and tiers.
# Usage: bash scripts/wheels.sh [build|min|latest|pythons|tiers|all] [pytest args...]   (default: all)
# Tests are run from the repository by pytest's own script (with PYTHONSAFEPATH=1), so
# they import the installed wheels, never the source tree; a test checks that
# (SYNAPTOROUTE_EXPECT_INSTALLED=1).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=${PYTHON:-python3}
MODE=${1:-all}
shift || true
WORK=${WHEELS_WORK:-$(mktemp -d "${TMPDIR:-/tmp}/synaptoroute-wheels.XXXXXX")}
DIST=$WORK/dist
export PIP_DISABLE_PIP_VERSION_CHECK=1

venv() {  # venv NAME [PYTHON]: a fresh virtual environment under $WORK (made with $PY)
    rm -rf "${WORK:?}/$1"
    "${2:-$PY}" -m venv "$WORK/$1"
    "$WORK/$1/bin/python" -m pip install -q --upgrade pip
}

build() {
    venv tools
    "$WORK/tools/bin/pip" install -q -r scripts/release-requirements.txt
    rm -rf "$DIST"
    for pkg in . integrations/langchain integrations/llama-index; do
        "$WORK/tools/bin/python" -m build -q --outdir "$DIST" "$pkg" >/dev/null
    done
    "$WORK/tools/bin/twine" check --strict "$DIST"/*
    "$WORK/tools/bin/python" scripts/check_dists.py "$DIST"
}

wheel() {  # wheel PREFIX: the built wheel whose file name starts with PREFIX
    local found=("$DIST/$1"-*.whl)
    [ -f "${found[0]}" ] || { echo "no wheel $1 in $DIST (run: $0 build)" >&2; return 1; }
    echo "${found[0]}"
}

run_tests() {  # run_tests VENV PATHS...: pytest from the repository against the installed wheels
    local env=$1
    shift
    # pytest's own script, not `python -m pytest`, which puts the repository (the
    # working directory) first on sys.path: PYTHONSAFEPATH keeps it off only from
    # Python 3.11 on, and under 3.10 the tests imported the source tree.
    PYTHONSAFEPATH=1 SYNAPTOROUTE_EXPECT_INSTALLED=1 \
        "$WORK/$env/bin/pytest" -q -p no:cacheprovider "$@"
}

install_core() {  # install_core VENV [pip args...]: the core wheel with its dev extra
    local env=$1
    shift
    "$WORK/$env/bin/pip" install -q "$@" "synaptoroute[dev] @ file://$(wheel synaptoroute)"
}

install_with_core() {  # install_with_core VENV DIST_PREFIX NAME [pip args...]: the core and an integration's test extra
    local env=$1 prefix=$2 name=$3
    shift 3
    "$WORK/$env/bin/pip" install -q "$@" "synaptoroute @ file://$(wheel synaptoroute)" \
        "$name[test] @ file://$(wheel "$prefix")"
}

# One environment per package: each at its own declared minimums (an integration's
# shared floors are at least the core's; the core's own floors are tested in min-core).
minimum() {
    "$PY" scripts/min_constraints.py pyproject.toml:dev >"$WORK/min-core.txt"
    venv min-core
    install_core min-core -c "$WORK/min-core.txt"
    echo "== minimum versions (core): $("$WORK/min-core/bin/pip" freeze | tr '\n' ' ')"
    run_tests min-core "$@" tests
    local pkg name prefix
    for pkg in langchain:langchain-synaptoroute llama-index:llama-index-selectors-synaptoroute; do
        name=${pkg#*:}
        pkg=${pkg%%:*}
        prefix=${name//-/_}
        "$PY" scripts/min_constraints.py "integrations/$pkg/pyproject.toml:test" >"$WORK/min-$pkg.txt"
        venv "min-$pkg"
        install_with_core "min-$pkg" "$prefix" "$name" -c "$WORK/min-$pkg.txt"
        echo "== minimum versions ($pkg): $("$WORK/min-$pkg/bin/pip" freeze | tr '\n' ' ')"
        run_tests "min-$pkg" "$@" tests/test_packaging.py "integrations/$pkg/tests"
    done
}

# Arguments, not `VAR=value latest` settings: bash exports those to the function's
# children, so pytest and every test it ran saw them (a test running this script read
# the tier's environment name).
latest() {  # latest PYTHON NAME [pytest args...], in the environment NAME made with PYTHON
    local env=$2
    venv "$env" "$1"
    shift 2
    install_core "$env"
    install_with_core "$env" langchain_synaptoroute langchain-synaptoroute
    install_with_core "$env" llama_index_selectors_synaptoroute llama-index-selectors-synaptoroute
    echo "== latest versions ($("$WORK/$env/bin/python" -V)): $("$WORK/$env/bin/pip" freeze | tr '\n' ' ')"
    run_tests "$env" "$@" tests integrations/langchain/tests integrations/llama-index/tests
}

find_python() {  # find_python X.Y: prints an interpreter of that version, if there is one
    local want=$1 candidate
    for candidate in "python$want" "${PYENV_ROOT:-${HOME:-}/.pyenv}"/versions/"$want".*/bin/python; do
        # A pyenv shim answers for versions it does not enable (and fails): ask it.
        if "$candidate" -c "import sys; sys.exit(f'{sys.version_info[0]}.{sys.version_info[1]}' != '$want')" \
            >/dev/null 2>&1; then
            # A distribution's Python without its venv package (Debian's python3.X-venv)
            # has no ensurepip: `-m venv` fails, which ended the whole run.
            if "$candidate" -c "import ensurepip, venv" >/dev/null 2>&1; then
                echo "$candidate"
                return 0
            fi
            echo "== Python $want: $candidate cannot make a virtual environment (no ensurepip; install its venv package)" >&2
        fi
    done
    return 1
}

PYTHONS_RUN=0
pythons() {  # the latest tests under each other supported Python found (see the top)
    local version found
    for version in ${SYNAPTOROUTE_OTHER_PYTHONS-3.10 3.13}; do
        if ! found=$(find_python "$version"); then
            echo "== Python $version: none usable on this machine, skipped"
            continue
        fi
        latest "$found" "latest-$version" "$@"
        PYTHONS_RUN=$((PYTHONS_RUN + 1))
    done
}

tiers() {  # the other Pythons, or the default one where there is none (see the top)
    pythons "$@"
    if [ "$PYTHONS_RUN" -eq 0 ]; then
        echo "== no other Python ran the installed wheels: latest versions under $("$PY" -V 2>&1)"
        latest "$PY" latest "$@"
    fi
}

case $MODE in
build) build ;;
min) minimum "$@" ;;
latest) latest "$PY" latest "$@" ;;
pythons) pythons "$@" ;;
tiers) tiers "$@" ;;
all)
    build
    minimum "$@"
    tiers "$@"
    [ -n "${WHEELS_WORK:-}" ] || rm -rf "$WORK"
    ;;
*)
    echo "usage: $0 [build|min|latest|pythons|tiers|all] [pytest args...]" >&2
    exit 2
    ;;
esac
echo "wheels.sh $MODE: ok ($ROOT, work folder $WORK)"
