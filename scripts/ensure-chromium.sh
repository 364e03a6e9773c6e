#!/usr/bin/env bash
# Headless Chromium for the Ray view's browser tests (tests/ui): Debian's package, driven by Playwright
# through its executable path (Playwright cannot download its own browsers on these machines).
set -euo pipefail
command -v chromium > /dev/null && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get > /dev/null; then
    echo "Installing Debian's chromium for the browser tests ..."
    apt-get install -y -q chromium > /dev/null 2>&1 || { apt-get update -q > /dev/null && apt-get install -y -q chromium > /dev/null; }
else
    echo "chromium is not installed (and this user cannot apt-get it): tests/ui's browser test will be skipped" >&2
fi
