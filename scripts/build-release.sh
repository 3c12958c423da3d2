#!/usr/bin/env bash
# Build the gateway's release artifact, the only thing the gateway role installs:
#   build/llm-gateway-<version>-py<XY>-<arch>.tar
# holding the app's wheel, the binary wheels of its pinned dependencies
# (app/requirements.lock) for the target's Python and architecture, the lock file and the
# same pins as pip constraints, and SOURCE (version, commit, app/ tree, uncommitted changes).
#
# The app is built from a clean export (git archive of a tree object), never from the
# working tree itself, so ignored leftovers such as a stale app/build/lib or *.egg-info
# cannot get into a release. The tree is app/ as git would commit it now: tracked files
# with their uncommitted changes plus new files that .gitignore does not exclude, staged
# into a throwaway index so the real index and the stash stay untouched.
#
# The version is <pyproject version>+g<first 12 hex digits of the app/ tree's hash>: it
# changes with every change under app/ and with nothing else, so the same code gives the
# same artifact (built once, then reused) and the role reinstalls only when it changes.
# build/VERSION names the newest build; older artifacts stay for a rollback.
#
# Usage: scripts/build-release.sh [PYTHON_VERSION...]   (default: 3.13, the lab's Debian 13)
# Environment: PYTHON (the pip to download with), RELEASE_DIR (default build), TARGET_ARCH
# (default this machine's), RELEASE_KEEP (artifacts kept per target, default 5).
set -euo pipefail

cd "$(git rev-parse --show-toplevel)"
PYTHON=${PYTHON:-python3}
RELEASE_DIR=${RELEASE_DIR:-build}
TARGET_ARCH=${TARGET_ARCH:-$(uname -m)}
RELEASE_KEEP=${RELEASE_KEEP:-5}
# Oldest and newest manylinux glibc accepted: 2.17 (manylinux2014) up to Debian 12's 2.36,
# which Ubuntu 24.04 (2.39) and Debian 13 (2.41) run as well.
GLIBC_MINORS=$(seq 36 -1 17)
targets=("${@:-3.13}")

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export GIT_INDEX_FILE="$work/index"
git read-tree HEAD
git add --all app
tree=$(git write-tree --prefix=app/)
unset GIT_INDEX_FILE
base_version=$(git cat-file blob "$tree:pyproject.toml" | sed -n 's/^version = "\(.*\)"$/\1/p')
version="$base_version+g${tree:0:12}"
mkdir -p "$RELEASE_DIR"

exported=false
export_app() {
	$exported && return
	git archive --format=tar --prefix=app/ "$tree" | tar -x -C "$work"
	sed -i "s/^version = \".*\"$/version = \"$version\"/" "$work/app/pyproject.toml"
	"$PYTHON" -m pip wheel --quiet --disable-pip-version-check --no-deps \
		--wheel-dir "$work/app-wheel" "$work/app"
	exported=true
}

for target in "${targets[@]}"; do
	xy=${target/./}
	artifact="$RELEASE_DIR/llm-gateway-$version-py$xy-$TARGET_ARCH.tar"
	if [[ -f $artifact ]]; then
		echo "release: $artifact is up to date"
		continue
	fi
	export_app
	wheels="$work/py$xy"
	mkdir -p "$wheels"
	cp "$work/app-wheel"/*.whl "$work/app/requirements.lock" "$wheels/"
	# The installer pins every dependency with this (pip's constraints take no extras).
	sed 's/\[[^]]*\]//' "$work/app/requirements.lock" >"$wheels/constraints.txt"
	platforms=()
	for minor in $GLIBC_MINORS; do
		platforms+=("--platform=manylinux_2_${minor}_$TARGET_ARCH")
	done
	platforms+=("--platform=manylinux2014_$TARGET_ARCH")
	"$PYTHON" -m pip download --quiet --disable-pip-version-check --only-binary=:all: \
		--implementation=cp --python-version="$target" --abi="cp$xy" "${platforms[@]}" \
		--requirement="$work/app/requirements.lock" --dest="$wheels"
	# What it was built from, for the evidence and for whoever reads the host: the commit
	# checked out, and whether app/ had changes not in it (the version hashes those too).
	{
		echo "version: $version"
		echo "commit: $(git rev-parse HEAD)"
		echo "app_tree: $tree"
		if [[ $tree == "$(git rev-parse HEAD:app)" ]]; then
			echo "uncommitted_changes: false"
		else
			echo "uncommitted_changes: true"
		fi
	} >"$wheels/SOURCE"
	# Written under a temporary name and renamed: an interrupted build leaves no artifact.
	tar -C "$wheels" -cf "$artifact.tmp" .
	mv "$artifact.tmp" "$artifact"
	echo "release: built $artifact ($(du -h "$artifact" | cut -f1))"

	# Keep the newest RELEASE_KEEP artifacts of this target.
	mapfile -t old < <(ls -1t "$RELEASE_DIR"/llm-gateway-*-py"$xy-$TARGET_ARCH".tar | tail -n +"$((RELEASE_KEEP + 1))")
	((${#old[@]} == 0)) || rm -f -- "${old[@]}"
done
echo "$version" >"$RELEASE_DIR/VERSION.tmp"
mv "$RELEASE_DIR/VERSION.tmp" "$RELEASE_DIR/VERSION"
