#!/usr/bin/env bash
# Make sure PostgreSQL's server binaries exist (the store tests run against a real server, started by fixtures on
# a free port in a temporary directory). Installs Debian's package when missing and we are root; otherwise stops
# with instructions. The cluster the package creates and its service are stopped: tests never use them.
set -euo pipefail
find_initdb() {
    if [ -n "${EDGEFLEET_PG_BIN:-}" ] && [ -x "$EDGEFLEET_PG_BIN/initdb" ]; then echo "$EDGEFLEET_PG_BIN/initdb"; return; fi
    ls /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -1 || true
}
if [ -n "$(find_initdb)" ]; then
    exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "PostgreSQL not found: installing Debian's package (apt-get install postgresql)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends postgresql >/dev/null
    if command -v systemctl >/dev/null 2>&1; then systemctl disable --now postgresql >/dev/null 2>&1 || true; fi
    if command -v pg_ctlcluster >/dev/null 2>&1; then
        for v in /usr/lib/postgresql/*; do pg_ctlcluster "$(basename "$v")" main stop >/dev/null 2>&1 || true; done
    fi
    [ -n "$(find_initdb)" ] && exit 0
fi
cat >&2 <<'MSG'
error: PostgreSQL (the server the store tests run against) is not installed, and this user cannot install it.
Install it with your OS package manager, then run the command again:
    sudo apt-get install postgresql       # Debian / Ubuntu
    sudo dnf install postgresql-server    # Fedora / RHEL (then set EDGEFLEET_PG_BIN to its bin folder)
    brew install postgresql               # macOS (then set EDGEFLEET_PG_BIN)
MSG
exit 1
