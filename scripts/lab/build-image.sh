#!/usr/bin/env bash
# Builds the lab/molecule base image (Debian 13 booting systemd) from Debian packages,
# because no container registry is reachable here. The tag is a hash of this recipe,
# so the image is rebuilt exactly when the recipe changes; :latest points at the newest.
#
# The hosts are reached like production's: over SSH as an unprivileged `deploy` user with
# passwordless sudo, keys only, no root login. What differs per host or per checkout (the
# SSH host key, the deploy user's authorized key) is not in the image: lab_up.yml
# generates it under .lab/ and mounts it, so every container has its own host key and
# the controller knows it before the first connection.
#
# LAB_IMAGE  repository name (no tag), default localhost/llmgw-debian13-systemd.
#            A name outside localhost/ is pulled as :latest instead of built, for
#            machines that can use a published systemd image.
set -euo pipefail

image=${LAB_IMAGE:-localhost/llmgw-debian13-systemd}
suite=trixie
mirror=http://deb.debian.org/debian
include=systemd,systemd-sysv,python3,dbus,iproute2,procps,sudo,ca-certificates,openssh-server

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
# No host keys in a shared image: lab_up.yml mounts one per container.
rm -f "${rootfs}"/etc/ssh/ssh_host_*
cat >"${rootfs}/etc/ssh/sshd_config.d/lab.conf" <<'SSHD'
# Hardened like a production host: keys only, no root, one mounted host key, and the
# authorized keys the lab mounts (read-only, root-owned) instead of ~/.ssh.
PermitRootLogin no
PasswordAuthentication no
KbdInteractiveAuthentication no
HostKey /etc/ssh/lab/host/ssh_host_ed25519_key
AuthorizedKeysFile /etc/ssh/lab/authorized_keys/%u
# The controller reaches the lab networks (10.89.50.0/24, 10.89.51.0/24) from the podman
# bridge's address; the tests fail logins on purpose, which must not lock Ansible out.
PerSourcePenaltyExemptList 10.89.0.0/16
SSHD
# '*': no password to log in with, yet not a locked account (which sshd would refuse).
chroot "$rootfs" useradd --create-home --shell /bin/bash --password '*' deploy
echo 'deploy ALL=(ALL) NOPASSWD: ALL' >"${rootfs}/etc/sudoers.d/deploy"
chmod 0440 "${rootfs}/etc/sudoers.d/deploy"
tar -C "$rootfs" -c . | podman import --change 'CMD ["/sbin/init"]' - "${image}:${recipe_hash}"
podman tag "${image}:${recipe_hash}" "${image}:latest"
echo "image: built ${image}:${recipe_hash} (also :latest)"
