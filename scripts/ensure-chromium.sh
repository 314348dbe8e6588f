#!/usr/bin/env bash
# Make sure Debian's chromium exists for the dashboard's browser tests (Playwright drives it through
# executable_path; we never run `playwright install`). Installs the package when missing and we are root;
# otherwise stops with instructions. EDGEFLEET_CHROMIUM names another binary. Under CI=true the browser
# tests fail (not skip) without chromium, so CI must run this first (`make test` does).
set -euo pipefail
find_chromium() {
    if [ -n "${EDGEFLEET_CHROMIUM:-}" ] && [ -x "${EDGEFLEET_CHROMIUM}" ]; then echo "${EDGEFLEET_CHROMIUM}"; return; fi
    for c in /usr/lib/chromium/chromium /usr/bin/chromium /usr/bin/chromium-browser; do
        if [ -x "$c" ]; then echo "$c"; return; fi
    done
    command -v chromium 2>/dev/null || true
}
if [ -n "$(find_chromium)" ]; then
    exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "chromium not found: installing Debian's package (apt-get install chromium, ~480 MB, ~1 min)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
    [ -n "$(find_chromium)" ] && exit 0
fi
cat >&2 <<'MSG'
error: chromium (the browser the dashboard tests drive headless) is not installed, and this user cannot
install it. Install it with your OS package manager, then run the command again:
    sudo apt-get install chromium         # Debian
    sudo apt-get install chromium-browser # Ubuntu (snap); or set EDGEFLEET_CHROMIUM=/path/to/chrome
MSG
exit 1
