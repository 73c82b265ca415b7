#!/usr/bin/env bash
# Install what the browser end-to-end tests need, idempotently: Debian's chromium (through
# scripts/chromium.sh) and playwright-core, pinned, into a folder this script owns. Playwright
# drives the system chromium; it never downloads a browser of its own.
# Prints the playwright-core module path on success.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
export HOME="${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}"
PLAYWRIGHT_VERSION=1.64.1
dir="${MAILROOM_BROKERS_HOME:-$HOME/.local/share/mailroom-brokers}/e2e"

scripts/chromium.sh

installed=""
if [[ -f "$dir/node_modules/playwright-core/package.json" ]]; then
    installed=$(node -p "require('$dir/node_modules/playwright-core/package.json').version")
fi
if [[ "$installed" != "$PLAYWRIGHT_VERSION" ]]; then
    command -v npm >/dev/null || { echo "scripts/e2e.sh: npm is missing (Node.js 20 is expected)" >&2; exit 1; }
    mkdir -p "$dir"
    echo "scripts/e2e.sh: installing playwright-core@$PLAYWRIGHT_VERSION into $dir" >&2
    (cd "$dir" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm install --no-audit --no-fund --silent \
        "playwright-core@$PLAYWRIGHT_VERSION" >&2)
fi
[[ -f "$dir/node_modules/playwright-core/package.json" ]] || {
    echo "scripts/e2e.sh: playwright-core is not in $dir after npm install" >&2
    exit 1
}
echo "$dir/node_modules/playwright-core"
