#!/usr/bin/env bash
# Installs the tools tests/tests/it/deploy_manifests.rs checks deploy/ with. Idempotent:
# installs only what is missing (or at another version).
#   kubectl                  renders the kustomize overlays (Debian's kubernetes-client,
#                            kubectl 1.20; an existing kubectl is kept: the manifests
#                            render the same on both)
#   kubernetes-validate      validates every object against the Kubernetes 1.30 schemas,
#                            strict (PyPI, pinned)
#   docker-compose           `config` checks deploy/compose.yaml (Debian)
#   systemd-analyze          `verify` and `security` check deploy/slipway.service (Debian)
set -euo pipefail

KUBERNETES_VALIDATE_VERSION=1.37.0

need_apt=()
command -v kubectl >/dev/null || need_apt+=(kubernetes-client)
command -v docker-compose >/dev/null || need_apt+=(docker-compose)
command -v systemd-analyze >/dev/null || need_apt+=(systemd)
if [ ${#need_apt[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi

installed=$( (python3 -m pip show kubernetes-validate 2>/dev/null || true) | awk '/^Version:/ {print $2}')
if [ "$installed" != "$KUBERNETES_VALIDATE_VERSION" ]; then
  python3 -m pip install -q --disable-pip-version-check --root-user-action=ignore \
    "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
fi
python3 -m kubernetes_validate --version >/dev/null
kubectl kustomize --help >/dev/null
