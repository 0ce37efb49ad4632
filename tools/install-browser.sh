#!/usr/bin/env bash
# Install Debian's chromium + chromium-driver for the report's real-browser test.
# Idempotent: returns at once when both binaries are already there.
# Usage: tools/install-browser.sh   (root, or a user with sudo)
set -euo pipefail

if [[ -x /usr/bin/chromium && -x /usr/bin/chromedriver ]]; then
    exit 0
fi

if [[ "$(id -u)" -eq 0 ]]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo)
    [[ -t 0 ]] || SUDO+=(-n)  # no terminal (CI, make): fail at once rather than wait for a password
else
    echo "install-browser: chromium is missing and this user is not root and has no sudo;" >&2
    echo "install-browser: run as root: apt-get install -y --no-install-recommends chromium chromium-driver" >&2
    exit 1
fi

# env inside sudo: sudo drops the caller's environment, DEBIAN_FRONTEND included.
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    chromium chromium-driver

if [[ ! -x /usr/bin/chromium || ! -x /usr/bin/chromedriver ]]; then
    echo "install-browser: apt-get finished but /usr/bin/chromium or /usr/bin/chromedriver is missing" >&2
    exit 1
fi
