#!/usr/bin/env bash
# A throwaway PostgreSQL server on 127.0.0.1 for the tests and benchmarks.
#
# Sourced (what .ci/run does):
#     source scripts/postgres.sh
#     synaptoroute_pg_start          # exports SYNAPTOROUTE_TEST_PG_DSN and SYNAPTOROUTE_TEST_PG_DIR
#     trap synaptoroute_pg_stop EXIT
# Run directly:
#     eval "$(bash scripts/postgres.sh start)"   # prints the export lines
#     bash scripts/postgres.sh server-stop        # stop the server, keep its data (restart tests)
#     bash scripts/postgres.sh server-start       # start it again on the same port
#     bash scripts/postgres.sh stop [DIR]         # stop it and delete the cluster (DIR:
#                                                 # default $SYNAPTOROUTE_TEST_PG_DIR; exits 1
#                                                 # naming the clusters left when it has none)
#
# The distribution's server package is installed with apt-get when no server binaries
# are found (root only). The cluster lives in a temporary folder owned by a non-root
# user, because PostgreSQL refuses to run as root. Set SYNAPTOROUTE_PG_PORT to pick the
# port; otherwise a free one is chosen.

_sr_pg_log() { echo "postgres.sh: $*" >&2; }

_sr_pg_bindir() {
    local dir
    dir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    if [ -n "$dir" ] && [ -x "$dir/postgres" ] && [ -x "$dir/initdb" ]; then
        echo "$dir"
        return 0
    fi
    if command -v initdb >/dev/null 2>&1 && command -v postgres >/dev/null 2>&1; then
        dirname "$(command -v initdb)"
        return 0
    fi
    return 1
}

_sr_pg_install() {
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        _sr_pg_log "no PostgreSQL server found; install the 'postgresql' package (needs root and apt-get)"
        return 1
    fi
    _sr_pg_log "installing the distribution's PostgreSQL server with apt-get"
    # Only our throwaway cluster should run; do not let the package create and start its own.
    mkdir -p /etc/postgresql-common
    [ -e /etc/postgresql-common/createcluster.conf ] ||
        echo "create_main_cluster = false" >/etc/postgresql-common/createcluster.conf
    local apt=(env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 -y -q
        -o Dpkg::Options::=--force-confold install --no-install-recommends postgresql)
    "${apt[@]}" >/dev/null || { apt-get -o DPkg::Lock::Timeout=600 update -q >/dev/null && "${apt[@]}" >/dev/null; }
}

# Run a command as the cluster's owner (PostgreSQL will not run as root).
_sr_pg_as() {
    local user=$1
    shift
    if [ "$(id -un)" = "$user" ]; then
        "$@"
    elif command -v runuser >/dev/null 2>&1; then
        runuser -u "$user" -- "$@"
    else
        su -s /bin/sh "$user" -c "$(printf '%q ' "$@")"
    fi
}

_sr_pg_free_port() {
    python3 - <<'EOF'
import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])
s.close()
EOF
}

_sr_pg_server_start() {
    local dir=$1
    # shellcheck disable=SC1091
    . "$dir/cluster.env"
    _sr_pg_as "$PG_USER" "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p $PG_PORT -k $dir -c fsync=off -c max_connections=200" \
        start >/dev/null || {
        _sr_pg_log "the server did not start; its log:"
        tail -n 30 "$dir/server.log" >&2
        return 1
    }
}

_sr_pg_server_stop() {
    local dir=$1
    # shellcheck disable=SC1091
    . "$dir/cluster.env"
    _sr_pg_as "$PG_USER" "$PG_BIN/pg_ctl" -D "$dir/data" -m fast -w -t 60 stop >/dev/null
}

# Start a fresh cluster and export SYNAPTOROUTE_TEST_PG_DSN and SYNAPTOROUTE_TEST_PG_DIR.
synaptoroute_pg_start() {
    local bin user dir port
    bin=$(_sr_pg_bindir) || { _sr_pg_install && bin=$(_sr_pg_bindir); } || return 1
    user=$(id -un)
    if [ "$(id -u)" = 0 ]; then
        if id postgres >/dev/null 2>&1; then user=postgres; else user=nobody; fi
    fi
    # A server run as another user (root's) must reach its folder: TMPDIR may be
    # under a folder only root can enter (/root/tmp), /tmp never is.
    local base=${TMPDIR:-/tmp}
    [ "$(id -un)" = "$user" ] || base=/tmp
    dir=$(mktemp -d "$base/synaptoroute-pg.XXXXXX") || return 1
    chmod 700 "$dir"
    [ "$(id -un)" = "$user" ] || chown "$user" "$dir"
    port=${SYNAPTOROUTE_PG_PORT:-$(_sr_pg_free_port)}
    printf 'PG_BIN=%q\nPG_USER=%q\nPG_PORT=%q\n' "$bin" "$user" "$port" >"$dir/cluster.env"
    _sr_pg_as "$user" "$bin/initdb" -D "$dir/data" -U synaptoroute -A trust -E UTF8 \
        --no-locale --no-sync >"$dir/initdb.log" 2>&1 || {
        _sr_pg_log "initdb failed:"
        cat "$dir/initdb.log" >&2
        rm -rf "$dir"
        return 1
    }
    _sr_pg_server_start "$dir" || { rm -rf "$dir"; return 1; }
    export SYNAPTOROUTE_TEST_PG_DIR=$dir
    export SYNAPTOROUTE_TEST_PG_DSN="postgresql://synaptoroute@127.0.0.1:$port/postgres"
    _sr_pg_log "PostgreSQL $("$bin/postgres" --version | awk '{print $3}') on 127.0.0.1:$port ($dir)"
}

# Stop the cluster started by synaptoroute_pg_start and delete it.
synaptoroute_pg_stop() {
    local dir=${1:-${SYNAPTOROUTE_TEST_PG_DIR:-}}
    [ -n "$dir" ] && [ -f "$dir/cluster.env" ] || return 0
    _sr_pg_server_stop "$dir" 2>/dev/null || true
    rm -rf "$dir"
    _sr_pg_log "stopped and removed $dir"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    set -euo pipefail
    case "${1:-}" in
        start)
            synaptoroute_pg_start
            echo "export SYNAPTOROUTE_TEST_PG_DIR=$SYNAPTOROUTE_TEST_PG_DIR"
            echo "export SYNAPTOROUTE_TEST_PG_DSN=$SYNAPTOROUTE_TEST_PG_DSN"
            ;;
        stop)
            # Run by hand with neither a DIR nor the variable, stopping nothing silently
            # left servers running; the sourced function stays quiet (an EXIT trap).
            dir=${2:-${SYNAPTOROUTE_TEST_PG_DIR:-}}
            if [ -z "$dir" ] || [ ! -f "$dir/cluster.env" ]; then
                _sr_pg_log "no cluster to stop: ${dir:-neither DIR nor SYNAPTOROUTE_TEST_PG_DIR given}"
                # Root's clusters are under /tmp whatever TMPDIR says (see start).
                bases=("${TMPDIR:-/tmp}")
                [ "${TMPDIR:-/tmp}" = /tmp ] || bases+=(/tmp)
                for base in "${bases[@]}"; do
                    for found in "$base"/synaptoroute-pg.*; do
                        [ -f "$found/cluster.env" ] && _sr_pg_log "a cluster is left in $found (stop $found)"
                    done
                done
                exit 1
            fi
            synaptoroute_pg_stop "$dir"
            ;;
        server-stop) _sr_pg_server_stop "${2:-$SYNAPTOROUTE_TEST_PG_DIR}" ;;
        server-start) _sr_pg_server_start "${2:-$SYNAPTOROUTE_TEST_PG_DIR}" ;;
        *)
            echo "usage: $0 start | stop [DIR] | server-stop [DIR] | server-start [DIR]" >&2
            exit 2
            ;;
    esac
fi
