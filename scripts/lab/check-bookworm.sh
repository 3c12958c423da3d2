#!/usr/bin/env bash
# `make check-bookworm`: a dry run of the deployment on a bare Debian 12 host ends cleanly
# and says what a real run would install (issue 11, item 5).
#
# The host is a fresh container from scripts/lab/build-bookworm-image.sh (built once, then
# cached by recipe hash), `llmgw-bookworm-check` on the podman network of the same name
# (10.89.60.0/24), started by lab_up.yml like the lab's hosts (SSH as deploy with sudo, pinned
# host key) and removed at the end, so every run starts from a bare host. The PGDG repository
# is not reachable from here, which is the case a first dry run must handle anyway: the
# repository is not configured yet.
#
# Checks, each with a bounded time:
#   database.yml --check --diff                          ends ok, says it would add PGDG and install postgresql-17
#   database.yml --check --tags postgresql_configure     any tag subset ends ok too
#   gateway.yml --check --diff                           ends ok, says what it would install and start
#   the host is still bare afterwards (no PGDG source, no python3-debian, no venv)
# The gateway needs the release artifact for Debian 12's Python 3.11 (built once, then reused).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

name=llmgw-bookworm-check
inventory=inventory/bookworm-check
export LAB_IMAGE=localhost/$name

scripts/lab/build-bookworm-image.sh
PYTHON=${PYTHON:-.venv/bin/python} timeout 900 scripts/build-release.sh 3.11

remove() { podman rm --force --time 0 "$name" >/dev/null 2>&1 || true; }
remove
trap remove EXIT

echo "check-bookworm: starting $name"
timeout 300 ansible-playbook -i "$inventory" lab_up.yml \
  -e lab_network="$name" -e lab_subnet=10.89.60.0/24 -e '{"lab_published_ports": []}' >/dev/null

log=$(mktemp)
trap 'remove; rm -f "$log"' EXIT
failures=0
# expect "<description>" "<text the output must contain>" ansible-playbook arguments...
expect() {
  local what=$1 needle=$2
  shift 2
  local started=$SECONDS status=0
  timeout 600 ansible-playbook -i "$inventory" "$@" >"$log" 2>&1 || status=$?
  if ((status == 0)) && grep -qF -- "$needle" "$log"; then
    echo "check-bookworm: ok   $what ($((SECONDS - started))s)"
  else
    echo "check-bookworm: FAIL $what (exit $status; expected to see: $needle)"
    cat "$log"
    failures=$((failures + 1))
  fi
}

expect "database.yml --check --diff on a bare Debian 12 host" \
  "Would install ca-certificates and python3-debian, add the PGDG apt repository" \
  database.yml --check --diff
grep -F -e "Would install" -e "a real run installs" "$log" | sed 's/^ */  /'
expect "database.yml --check --tags postgresql_configure" \
  "is not installed yet: a real run installs postgresql-17" \
  database.yml --check --diff --tags postgresql_configure
expect "gateway.yml --check --diff on a bare Debian 12 host" \
  "Would install, enable and start llm-gateway.service" \
  gateway.yml --check --diff
grep -F -e "Would " "$log" | sed 's/^ */  /'

if podman exec "$name" sh -c 'test ! -e /etc/apt/sources.list.d/pgdg.sources && test ! -e /opt/llm-gateway \
    && ! dpkg -s python3-debian >/dev/null 2>&1 && ! dpkg -s python3-apt >/dev/null 2>&1'; then
  echo "check-bookworm: ok   the host is still bare (no PGDG source, no python3-debian, no python3-apt, no /opt/llm-gateway)"
else
  echo "check-bookworm: FAIL the dry run changed the host"
  failures=$((failures + 1))
fi
((failures == 0))
