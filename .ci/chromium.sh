#!/usr/bin/env bash
# Installs the real headless browser the web UI tests drive: Debian's `chromium` and
# `chromium-driver` (chromedriver, the WebDriver server). Idempotent: installs only
# what is missing. The tests start chromedriver themselves, on a free port.
set -euo pipefail
need_apt=()
command -v chromium >/dev/null || need_apt+=(chromium)
command -v chromedriver >/dev/null || need_apt+=(chromium-driver)
# Fonts, so screenshots show text rather than boxes.
dpkg -s fonts-dejavu-core >/dev/null 2>&1 || need_apt+=(fonts-dejavu-core)
if [ ${#need_apt[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi
chromium --version
chromedriver --version
