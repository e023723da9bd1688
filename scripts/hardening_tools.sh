#!/usr/bin/env bash
# Install the distribution's nginx and strace for the service-hardening tests, when missing.
#
#     bash scripts/hardening_tools.sh        # prints nginx's path on success
#
# nginx runs deploy/nginx.conf in tests/test_server_attacks.py (each test starts its own
# on 127.0.0.1; never a system service); strace counts the store's fsyncs in
# tests/test_storage_hardening.py. Only Debian/Ubuntu packages are used (apt-get, root
# only). The tests find nginx on PATH, in /usr/sbin or at $SYNAPTOROUTE_NGINX, and skip,
# saying why, without it (unless SYNAPTOROUTE_TEST_NGINX_REQUIRED=1, as in CI).
set -euo pipefail

_sr_nginx_path() {
    local candidate
    for candidate in "${SYNAPTOROUTE_NGINX:-}" "$(command -v nginx || true)" /usr/sbin/nginx; do
        if [ -n "$candidate" ] && [ -x "$candidate" ]; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

missing=()
_sr_nginx_path >/dev/null || missing+=(nginx-light)
command -v strace >/dev/null 2>&1 || missing+=(strace)
if [ "${#missing[@]}" -gt 0 ]; then
    if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
        echo "hardening_tools.sh: install ${missing[*]} (needs root and apt-get)" >&2
        exit 1
    fi
    echo "hardening_tools.sh: installing ${missing[*]} with apt-get" >&2
    # DPkg::Lock::Timeout (here and in chromium.sh, postgres.sh): another install on the
    # machine (a second test run, an unattended upgrade) is waited for, not a failure.
    apt-get -o DPkg::Lock::Timeout=600 update -q >/dev/null
    # policy-rc.d keeps the package from starting a system nginx on port 80. A machine's
    # own (Docker's images ship one) is left as it is; only the one written here goes.
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 -y -q install --no-install-recommends \
        "${missing[@]}" >/dev/null
fi
_sr_nginx_path
