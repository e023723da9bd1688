#!/usr/bin/env bash
# Install the distribution's Chromium for the console's browser tests, when missing.
#
#     bash scripts/chromium.sh        # prints the browser's path on success
#
# Only the Debian/Ubuntu package is used (apt-get, root only): no browser is downloaded
# from anywhere else, and `playwright install` is never run. The tests find the browser
# at /usr/bin/chromium (or $SYNAPTOROUTE_CHROMIUM) and skip, saying why, without it.
set -euo pipefail

_sr_chromium_path() {
    local candidate
    for candidate in "${SYNAPTOROUTE_CHROMIUM:-}" /usr/bin/chromium /usr/bin/chromium-browser; do
        if [ -n "$candidate" ] && [ -x "$candidate" ]; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}

if _sr_chromium_path; then
    exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "chromium.sh: no Chromium found; install the 'chromium' package (needs root and apt-get)" >&2
    exit 1
fi
echo "chromium.sh: installing the distribution's Chromium with apt-get" >&2
apt=(env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 -y -q install --no-install-recommends chromium)
# The package lists may be stale or absent in a fresh container: update them first.
apt-get -o DPkg::Lock::Timeout=600 update -q >/dev/null
"${apt[@]}" >/dev/null
_sr_chromium_path
