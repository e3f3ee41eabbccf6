#!/usr/bin/env bash
# Debian packages the slow tests use, installed with apt-get when missing:
#   chromium + chromium-driver  the browser tests (MLflow UI, optuna-dashboard, `tunelab report`);
#                               Selenium drives this system Chromium, nothing downloads a browser
#   strace                      the security test reads every command line tunelab starts
set -euo pipefail
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
command -v strace >/dev/null 2>&1 || missing+=(strace)
[ ${#missing[@]} -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "test tools: installing ${missing[*]} with apt-get" >&2
$sudo apt-get update -qq >/dev/null
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
for tool in chromium chromedriver strace; do
    command -v "$tool" >/dev/null || { echo "test tools: error: $tool missing after apt-get" >&2; exit 1; }
done
