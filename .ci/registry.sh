#!/usr/bin/env bash
# Starts the OCI registry the image-build tests push to: Debian's `docker-registry`
# with htpasswd authentication (user `slipway`, password `slipway-test`), listening on
# $SLIPWAY_TEST_REGISTRY (default 127.0.0.1:5000; Docker allows plain HTTP to
# 127.0.0.0/8). Idempotent: installs what is missing, reuses a registry that already
# runs, and only returns once the registry refuses an anonymous `/v2/` with 401 and
# accepts the test credentials.
#
# Our own config lives under $state (not /etc/docker/registry): the Debian package's
# default config may have no usable auth, and the service is not started here anyway
# (no init system in CI containers). The process is started with setsid+nohup so it
# outlives this script; its pid is in $state/registry.pid, its log in
# $state/registry.log.
set -euo pipefail

addr="${SLIPWAY_TEST_REGISTRY:-127.0.0.1:5000}"
user=slipway
password=slipway-test
# One state directory per address, so an override never clobbers the default one.
state="/var/lib/slipway-test-registry/${addr//[^A-Za-z0-9]/_}"

need_apt=()
command -v docker-registry >/dev/null || need_apt+=(docker-registry)
command -v htpasswd >/dev/null || need_apt+=(apache2-utils)
command -v curl >/dev/null || need_apt+=(curl)
# The image-build tests copy the host's static busybox into their build contexts (the
# engine cannot pull a base image).
[ -x /bin/busybox ] && dpkg -s busybox-static >/dev/null 2>&1 || need_apt+=(busybox-static)
if [ ${#need_apt[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi

# Prints the HTTP status of GET /v2/ (000 when nothing answers); extra args go to curl.
status() {
  curl -s -o /dev/null -w '%{http_code}' --max-time 2 "$@" "http://$addr/v2/" || true
}

# Ready means: anonymous access refused, our credentials accepted.
ready() {
  [ "$(status)" = 401 ] && [ "$(status -u "$user:$password")" = 200 ]
}

if ready; then
  echo "registry already running on $addr"
  exit 0
fi
if [ "$(status)" != 000 ]; then
  echo "something else answers on http://$addr/v2/ (not our registry with htpasswd auth);" >&2
  echo "stop it or set SLIPWAY_TEST_REGISTRY to another address" >&2
  exit 1
fi

mkdir -p "$state/data"
# bcrypt is the only hash docker-registry's htpasswd backend accepts.
htpasswd -Bbn "$user" "$password" >"$state/htpasswd"
cat >"$state/config.yml" <<EOF
version: 0.1
log:
  level: info
storage:
  filesystem:
    rootdirectory: $state/data
  delete:
    enabled: true
http:
  addr: $addr
  headers:
    X-Content-Type-Options: [nosniff]
auth:
  htpasswd:
    realm: slipway-test-registry
    path: $state/htpasswd
EOF

# A stale pid file from a registry that died (or a reboot) is simply replaced; a live
# one that did not answer above is stuck, so it is stopped first.
if [ -f "$state/registry.pid" ]; then
  old=$(cat "$state/registry.pid")
  if [ -n "$old" ] && kill -0 "$old" 2>/dev/null &&
    grep -q docker-registry "/proc/$old/cmdline" 2>/dev/null; then
    kill "$old" || true
    for _ in $(seq 1 50); do kill -0 "$old" 2>/dev/null || break; sleep 0.1; done
  fi
  rm -f "$state/registry.pid"
fi

setsid nohup docker-registry serve "$state/config.yml" \
  >>"$state/registry.log" 2>&1 </dev/null &
echo $! >"$state/registry.pid"

for _ in $(seq 1 100); do
  if ready; then
    echo "registry running on $addr (pid $(cat "$state/registry.pid"), log $state/registry.log)"
    exit 0
  fi
  if ! kill -0 "$(cat "$state/registry.pid")" 2>/dev/null; then
    break
  fi
  sleep 0.1
done
echo "registry on $addr did not become ready; last lines of $state/registry.log:" >&2
tail -n 20 "$state/registry.log" >&2
exit 1
