#!/usr/bin/env bash
# Debian's Chromium and its WebDriver, for the browser tests (the MLflow UI, `tunelab report`).
# No browser is downloaded by Python tooling: Selenium drives this system Chromium.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    exit 0
fi
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "browser: installing Debian's chromium and chromium-driver with apt-get" >&2
$sudo apt-get update -qq >/dev/null
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium chromium-driver >/dev/null
command -v chromium >/dev/null && command -v chromedriver >/dev/null \
    || { echo "browser: error: chromium or chromedriver missing after apt-get" >&2; exit 1; }
