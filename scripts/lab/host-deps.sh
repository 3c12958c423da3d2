#!/usr/bin/env bash
# Installs what the controller needs to run the lab and the tests on Debian 12, and
# configures podman for this host. Idempotent: installs only missing packages and
# writes the podman runtime setting only when it differs.
set -euo pipefail

packages=(
  podman runc slirp4netns uidmap containernetworking-plugins fuse-overlayfs  # lab containers
  debootstrap                                                                # lab image
  python3 python3-venv make git rsync curl openssh-client                    # controller tools
  postgresql wrk                                                             # app tests, bench
)
containers_conf=/etc/containers/containers.conf

if [[ $(id -u) -ne 0 ]]; then
  echo "host-deps: needs root (apt-get install, ${containers_conf}); run: sudo make host-deps" >&2
  exit 1
fi

missing=()
for pkg in "${packages[@]}"; do
  status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
  [[ $status == installed ]] || missing+=("$pkg")
done
if ((${#missing[@]})); then
  echo "host-deps: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -q
  apt-get install -y -q --no-install-recommends "${missing[@]}"
else
  echo "host-deps: all ${#packages[@]} packages present"
fi

# crun, podman's default runtime, refuses to start containers when cgroups are v1 or
# hybrid ("cgroups in hybrid mode not supported"); runc works. On cgroup v2 keep crun.
if [[ $(stat -fc %T /sys/fs/cgroup) == cgroup2fs ]]; then
  echo "host-deps: cgroup v2, podman keeps its default runtime"
elif grep -qxF 'runtime = "runc"' "$containers_conf" 2>/dev/null; then
  echo "host-deps: podman already uses runc (cgroup v1/hybrid)"
elif [[ -s $containers_conf ]]; then
  echo "host-deps: cgroup v1/hybrid needs podman's runtime = \"runc\", but ${containers_conf}" \
    "already has other settings; add it to its [engine] table by hand" >&2
  exit 1
else
  mkdir -p "$(dirname "$containers_conf")"
  printf '# Written by scripts/lab/host-deps.sh: crun does not support cgroup v1/hybrid.\n[engine]\nruntime = "runc"\n' >"$containers_conf"
  echo "host-deps: wrote ${containers_conf} (runtime = runc)"
fi
