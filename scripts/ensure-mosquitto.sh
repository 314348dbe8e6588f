#!/usr/bin/env bash
# Make sure a Mosquitto binary exists. Installs Debian's package when missing and we are root;
# otherwise stops with instructions. Tests start their own broker on a free loopback port; the
# system service the package enables is stopped so it does not hold port 1883 for nothing.
set -euo pipefail
SBIN="${EDGEFLEET_SBIN:-/usr/sbin}"  # where Debian puts the broker (not on a user's PATH); tests override it
find_mosquitto() {
    command -v mosquitto 2>/dev/null || { [ -x "$SBIN/mosquitto" ] && echo "$SBIN/mosquitto"; } || true
}
if [ -n "$(find_mosquitto)" ]; then
    exit 0
fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "mosquitto not found: installing Debian's package (apt-get install mosquitto)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends mosquitto >/dev/null
    if command -v systemctl >/dev/null 2>&1; then systemctl disable --now mosquitto >/dev/null 2>&1 || true; fi
    [ -n "$(find_mosquitto)" ] && exit 0
fi
cat >&2 <<'MSG'
error: Mosquitto (the MQTT broker edgefleet uses) is not installed, and this user cannot install it.
Install it with your OS package manager, then run the command again:
    sudo apt-get install mosquitto        # Debian / Ubuntu
    sudo dnf install mosquitto            # Fedora / RHEL
    brew install mosquitto                # macOS
MSG
exit 1
