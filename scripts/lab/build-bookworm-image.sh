#!/usr/bin/env bash
# The bare Debian 12 (bookworm) host `make check-bookworm` dry-runs the deployment against:
# what a new database or gateway host looks like before Ansible has touched it. Built from
# Debian packages with debootstrap like the lab's Debian 13 image (build-image.sh): systemd,
# sshd (keys only, no root, the host key and authorized keys mounted by lab_up.yml) and the
# `deploy` user with passwordless sudo, nothing else (no python3-debian, no PGDG).
# The tag is a hash of this recipe, so the image is built once and rebuilt only when this
# file changes; :latest points at the newest.
#
# BOOKWORM_IMAGE  repository name (no tag), default localhost/llmgw-bookworm-check.
set -euo pipefail

image=${BOOKWORM_IMAGE:-localhost/llmgw-bookworm-check}
suite=bookworm
mirror=http://deb.debian.org/debian
include=systemd,systemd-sysv,python3,dbus,iproute2,procps,sudo,ca-certificates,openssh-server

recipe_hash=$(sha256sum "${BASH_SOURCE[0]}" | cut -c1-12)
if podman image exists "${image}:${recipe_hash}"; then
  podman tag "${image}:${recipe_hash}" "${image}:latest"
  echo "image: ${image}:${recipe_hash} is current (recipe unchanged)"
  exit 0
fi

rootfs=$(mktemp -d /var/tmp/llmgw-bookworm-rootfs.XXXXXX)
trap 'rm -rf "$rootfs"' EXIT
echo "image: debootstrap ${suite} into ${rootfs}"
debootstrap --variant=minbase --include="$include" "$suite" "$rootfs" "$mirror"
: >"${rootfs}/etc/machine-id"
rm -f "${rootfs}"/etc/ssh/ssh_host_*
# OpenSSH 9.2: no PerSourcePenalties (9.8) to exempt the controller from.
cat >"${rootfs}/etc/ssh/sshd_config.d/lab.conf" <<'SSHD'
PermitRootLogin no
PasswordAuthentication no
KbdInteractiveAuthentication no
HostKey /etc/ssh/lab/host/ssh_host_ed25519_key
AuthorizedKeysFile /etc/ssh/lab/authorized_keys/%u
SSHD
chroot "$rootfs" useradd --create-home --shell /bin/bash --password '*' deploy
echo 'deploy ALL=(ALL) NOPASSWD: ALL' >"${rootfs}/etc/sudoers.d/deploy"
chmod 0440 "${rootfs}/etc/sudoers.d/deploy"
tar -C "$rootfs" -c . | podman import --change 'CMD ["/sbin/init"]' - "${image}:${recipe_hash}"
podman tag "${image}:${recipe_hash}" "${image}:latest"
echo "image: built ${image}:${recipe_hash} (also :latest)"
