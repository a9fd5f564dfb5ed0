#!/usr/bin/env bash
# Installs and starts everything the tests need, idempotently: a second run on the same
# machine changes nothing and takes seconds. Called by ./test.sh (the README's test
# command), so a fresh machine needs nothing run before it.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v git >/dev/null || need_apt+=(git)
command -v curl >/dev/null || need_apt+=(curl)
command -v python3 >/dev/null || need_apt+=(python3)
command -v pkg-config >/dev/null || need_apt+=(pkg-config)
dpkg -s libssl-dev >/dev/null 2>&1 || need_apt+=(libssl-dev)
command -v cc >/dev/null || need_apt+=(build-essential)
if [ ${#need_apt[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}"
fi
command -v cargo-nextest >/dev/null || cargo install --locked cargo-nextest

# The storage tests run against a real PostgreSQL as well as SQLite.
bash .ci/postgres.sh
# kubectl (kustomize), kubernetes-validate, docker-compose and systemd-analyze check
# the manifests in deploy/.
bash .ci/k8s-tools.sh
# The Docker backend and the Kubernetes test double run locally built images (nothing
# can be pulled here); image stages push to a real OCI registry with htpasswd auth.
bash .ci/images.sh
# The Kubernetes backend's builder pods run Debian's rootless buildah.
bash .ci/builder-image.sh
bash .ci/registry.sh
# The web UI tests drive a real headless Chromium through chromedriver.
bash .ci/chromium.sh
# Rollout analysis tests query a real Prometheus (each test starts its own).
bash .ci/prometheus.sh
