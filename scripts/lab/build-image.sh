#!/usr/bin/env bash
# Builds the lab/molecule base image (Debian 13 booting systemd) from Debian packages,
# because no container registry is reachable here. The tag is a hash of this recipe,
# so the image is rebuilt exactly when the recipe changes; :latest points at the newest.
#
# LAB_IMAGE  repository name (no tag), default localhost/llmgw-debian13-systemd.
#            A name outside localhost/ is pulled as :latest instead of built, for
#            machines that can use a published systemd image.
set -euo pipefail

image=${LAB_IMAGE:-localhost/llmgw-debian13-systemd}
suite=trixie
mirror=http://deb.debian.org/debian
include=systemd,systemd-sysv,python3,dbus,iproute2,procps,sudo,ca-certificates

if [[ $image != localhost/* ]]; then
  podman image exists "${image}:latest" || podman pull "${image}:latest"
  exit 0
fi

recipe_hash=$(sha256sum "${BASH_SOURCE[0]}" | cut -c1-12)
if podman image exists "${image}:${recipe_hash}"; then
  podman tag "${image}:${recipe_hash}" "${image}:latest"
  echo "image: ${image}:${recipe_hash} is current (recipe unchanged)"
  exit 0
fi

rootfs=$(mktemp -d /var/tmp/llmgw-rootfs.XXXXXX)
trap 'rm -rf "$rootfs"' EXIT
echo "image: debootstrap ${suite} into ${rootfs}"
debootstrap --variant=minbase --include="$include" "$suite" "$rootfs" "$mirror"
# The container's /etc/hostname and /etc/resolv.conf come from podman; machine-id is
# generated at first boot so that two containers never share one.
: >"${rootfs}/etc/machine-id"
tar -C "$rootfs" -c . | podman import --change 'CMD ["/sbin/init"]' - "${image}:${recipe_hash}"
podman tag "${image}:${recipe_hash}" "${image}:latest"
echo "image: built ${image}:${recipe_hash} (also :latest)"
