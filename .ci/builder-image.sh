#!/usr/bin/env bash
# Builds slipway-test/buildah:latest, the image builder the Kubernetes backend's
# builder pods run in the tests (nothing can be pulled here, so no quay.io/buildah):
# Debian's buildah with its libraries, newuidmap/newgidmap carrying the file
# capabilities a rootless build needs (cap_setuid / cap_setgid, as Fedora ships
# them), busybox as the shell, and a `build` user (uid 1000) with a subordinate id
# range. `docker import` of a tar made with --xattrs keeps the capabilities (a
# Dockerfile COPY would drop them). Idempotent: skipped when an image of this buildah
# version exists.
set -euo pipefail
tag=slipway-test/buildah:latest

need_apt=()
command -v buildah >/dev/null || need_apt+=(buildah)
command -v newuidmap >/dev/null || need_apt+=(uidmap)
command -v setcap >/dev/null || need_apt+=(libcap2-bin)
[ -x /bin/busybox ] && dpkg -s busybox-static >/dev/null 2>&1 || need_apt+=(busybox-static)
if [ ${#need_apt[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

version=$(buildah --version | awk '{print $3}')
if [ "$(docker image inspect -f '{{index .Config.Labels "org.slipway.buildah"}}' "$tag" 2>/dev/null)" = "$version" ]; then
  echo "$tag: buildah $version (kept)"
  exit 0
fi

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root"/{bin,etc/containers,usr/share/containers,tmp,var/tmp,home/build}
chmod 1777 "$root/tmp" "$root/var/tmp"
chown 1000:1000 "$root/home/build"
cp /usr/bin/buildah "$(command -v newuidmap)" "$(command -v newgidmap)" /bin/busybox "$root/bin/"
ln -s busybox "$root/bin/sh"
for bin in /usr/bin/buildah "$(command -v newuidmap)"; do
  for lib in $(ldd "$bin" | grep -o '/[^ ]*\.so[^ ]*'); do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
  done
done
setcap cap_setuid+ep "$root/bin/newuidmap"
setcap cap_setgid+ep "$root/bin/newgidmap"
cp /etc/containers/policy.json "$root/etc/containers/"
cp /usr/share/containers/containers.conf "$root/usr/share/containers/"
printf 'unqualified-search-registries = []\n' > "$root/etc/containers/registries.conf"
printf 'root:x:0:0:root:/root:/bin/sh\nbuild:x:1000:1000:build:/home/build:/bin/sh\n' > "$root/etc/passwd"
printf 'root:x:0:\nbuild:x:1000:\n' > "$root/etc/group"
printf 'build:100000:65536\n' > "$root/etc/subuid"
cp "$root/etc/subuid" "$root/etc/subgid"
for applet in $(/bin/busybox --list); do
  [ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
done

tar --xattrs --xattrs-include='security.capability' -C "$root" -c . |
  docker import \
    -c 'ENV PATH=/bin HOME=/home/build BUILDAH_ISOLATION=chroot STORAGE_DRIVER=vfs' \
    -c 'USER 1000:1000' \
    -c "LABEL org.slipway.buildah=$version" \
    - "$tag" >/dev/null
echo "$tag: buildah $version"
