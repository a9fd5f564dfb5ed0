#!/usr/bin/env bash
# Installs a real Prometheus server for the rollout analysis tests: Debian's
# `prometheus` package. Idempotent: installs only when missing. The Debian service is
# stopped and disabled (when systemd runs it): each test starts its own server on a
# free loopback port, with its own configuration and storage.
set -euo pipefail
if ! command -v prometheus >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends prometheus
fi
if command -v systemctl >/dev/null && systemctl is-active --quiet prometheus 2>/dev/null; then
  systemctl disable --now prometheus >/dev/null 2>&1 || true
fi
# Without systemd the package's post-install may still have started one.
pkill -x prometheus 2>/dev/null || true
prometheus --version 2>&1 | head -1
