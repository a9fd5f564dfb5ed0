#!/usr/bin/env bash
# Builds the container images the Docker backend tests use. The engine on the CI
# machine has no registry access, so everything is built locally FROM scratch with
# Debian's statically linked busybox. Idempotent: Docker's build cache makes a
# second run a no-op, and busybox-static is only installed when missing.
#
#   slipway-test/busybox:latest  busybox as /bin/*, /tmp, /etc/passwd with `nobody`
#                                 (the step image of the conformance suite)
#   slipway-test/httpd:latest    the same plus an `httpd` serving /www on :8080 and a
#                                 HEALTHCHECK (service containers with readiness)
set -euo pipefail
if [ ! -x /bin/busybox ] || ! file -L /bin/busybox 2>/dev/null | grep -q 'statically linked'; then
  if ! dpkg -s busybox-static >/dev/null 2>&1; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq busybox-static
  fi
fi
busybox=/bin/busybox
[ -x "$busybox" ] || { echo "images.sh: /bin/busybox missing after installing busybox-static" >&2; exit 1; }

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
cp "$busybox" "$ctx/busybox"
cat > "$ctx/passwd" <<'PASSWD'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/sh
PASSWD
cat > "$ctx/group" <<'GROUP'
root:x:0:
nogroup:x:65534:
GROUP
cat > "$ctx/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY busybox /bin/busybox
# Exec form: there is no shell until busybox installed its applets.
RUN ["/bin/busybox", "--install", "-s", "/bin"]
RUN mkdir -p /tmp /root /usr/bin /sbin /usr/sbin /var/www && chmod 1777 /tmp && chmod 700 /root
COPY passwd group /etc/
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
CMD ["/bin/sh"]
DOCKERFILE
docker build -q -t slipway-test/busybox:latest "$ctx" >/dev/null

cat > "$ctx/Dockerfile" <<'DOCKERFILE'
FROM slipway-test/busybox:latest
RUN mkdir -p /www && echo 'hello from the service' > /www/index.html
HEALTHCHECK --interval=1s --timeout=2s --retries=30 CMD wget -q -O /dev/null http://127.0.0.1:8080/ || exit 1
CMD ["httpd", "-f", "-p", "8080", "-h", "/www"]
DOCKERFILE
docker build -q -t slipway-test/httpd:latest "$ctx" >/dev/null
docker image inspect -f '{{.RepoTags}} {{.Id}}' slipway-test/busybox:latest slipway-test/httpd:latest
