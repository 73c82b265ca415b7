#!/usr/bin/env bash
# Install Debian's chromium for the headless report test (bench/tests/compare_report_renders.rs).
# Idempotent: does nothing when /usr/bin/chromium is already there; otherwise refreshes the
# package lists once and installs it. Any failure stops the script with a non-zero exit.
set -euo pipefail

if [[ -x /usr/bin/chromium ]]; then
    exit 0
fi

SUDO=()
if [[ $(id -u) -ne 0 ]]; then
    SUDO=(sudo)
fi

echo "scripts/chromium.sh: /usr/bin/chromium is missing; installing Debian's chromium" >&2
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update
"${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium

if [[ ! -x /usr/bin/chromium ]]; then
    echo "scripts/chromium.sh: apt-get finished but /usr/bin/chromium is still missing" >&2
    exit 1
fi
/usr/bin/chromium --version >&2
