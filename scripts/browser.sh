#!/usr/bin/env bash
# What the browser tests need, installed when absent: Debian's chromium
# (/usr/bin/chromium), and from the npm registry, at the versions
# tests/browser/package-lock.json pins, playwright-core and oidc-provider (a
# certified OpenID Connect provider the single sign-on test logs in through).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x /usr/bin/chromium ]; then
    echo "browser: installing Debian's chromium"
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends chromium > /dev/null
fi
if [ ! -f tests/browser/node_modules/playwright-core/package.json ] || [ ! -f tests/browser/node_modules/oidc-provider/package.json ]; then
    echo "browser: installing playwright-core and oidc-provider"
    (cd tests/browser && npm ci --no-audit --no-fund --silent)
fi
version() { node -p "require('./tests/browser/node_modules/$1/package.json').version"; }
echo "browser: $(/usr/bin/chromium --version), playwright-core $(version playwright-core), oidc-provider $(version oidc-provider)"
