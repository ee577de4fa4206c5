#!/usr/bin/env bash
# What the browser tests need, installed when absent: Debian's chromium
# (/usr/bin/chromium) and playwright-core from the npm registry, at the
# version tests/browser/package-lock.json pins.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x /usr/bin/chromium ]; then
    echo "browser: installing Debian's chromium"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends chromium > /dev/null
fi
if [ ! -f tests/browser/node_modules/playwright-core/package.json ]; then
    echo "browser: installing playwright-core"
    (cd tests/browser && npm ci --no-audit --no-fund --silent)
fi
echo "browser: $(/usr/bin/chromium --version), playwright-core $(node -p 'require("./tests/browser/node_modules/playwright-core/package.json").version')"
