"""Nothing is lost while the deployment changes under load: steady traffic through the
balancer (plain calls and streams, the official `openai` client with its own retries
off) while (a) PostgreSQL restarts and (b) a rolling deploy of a changed app version goes
across every gateway. Each time: no failed call (no 5xx, no connection error, no
truncated stream), and every answered call has exactly one request row and one response
row. Bounded: a few concurrent clients, stopped when the change is over."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import REPOSITORY, SHARED, ansible_playbook, build_changed_release
from traffic import judge, traffic

pytestmark = [pytest.mark.host_group("loadbalancer")]


@pytest.fixture(scope="module")
def address(hostvars: dict[str, Any]) -> str:
    return hostvars["service_address"]


@pytest.fixture(scope="module")
def master_key(credential: Callable[[str], str]) -> str:
    return credential("gateway_master_key")


def test_a_database_restart_under_load_loses_nothing(
    address: str, master_key: str, group_host: Callable[[str], Any]
) -> None:
    db_host = group_host("database")
    with traffic(address, master_key) as load:
        restarted = db_host.run("systemctl restart postgresql@17-main.service")
        assert restarted.rc == 0, restarted.stderr
    judge(db_host, load, "database restart")


def current_release(gateway: Any) -> str:
    return gateway.file("/opt/llm-gateway/current").linked_to


# The version the serving workers imported (GET /api/health on the gateway itself, which
# answers plain HTTP behind the balancer): proves the restart, not only the symlink.
RUNNING_VERSION = (
    "import json, sys, urllib.error, urllib.request\n"
    "try:\n"
    "    reply = urllib.request.urlopen(sys.argv[1], timeout=10)\n"
    "except urllib.error.HTTPError as error:\n"
    "    reply = error\n"
    "print(json.load(reply).get('version', ''))"
)


def running_version(gateway: Any) -> str:
    url = f"http://127.0.0.1:{SHARED['gateway_port']}/api/health"
    result = gateway.run("python3 -c %s %s", RUNNING_VERSION, url)
    assert result.rc == 0, result.stderr
    return result.stdout.strip()


def test_a_rolling_deploy_under_load_loses_nothing(
    address: str,
    master_key: str,
    group_host: Callable[[str], Any],
    group_hosts: Callable[[str], list[Any]],
    request: pytest.FixtureRequest,
    changed_release: tuple[Path, str],
) -> None:
    release_dir, version = changed_release
    inventory = request.config.option.ansible_inventory
    with traffic(address, master_key) as load:
        deploy = ansible_playbook(
            inventory,
            "gateway.yml",
            f"gateway_release_dir={release_dir}",
            f"gateway_release_version={version}",
        )
    assert deploy.returncode == 0, deploy.stdout[-3000:] + deploy.stderr[-2000:]
    for gateway in group_hosts("gateway"):
        assert current_release(gateway).endswith(version)
        assert running_version(gateway) == version
    judge(group_host("database"), load, "rolling deploy")


def test_a_release_that_fails_its_health_check_stops_the_rollout(
    address: str,
    master_key: str,
    group_host: Callable[[str], Any],
    group_hosts: Callable[[str], list[Any]],
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    """The first gateway gets a release whose workers cannot start: the play fails there
    with the journal, the other gateways keep their release, and the clients never see it
    (the failed host stays drained at the balancer). Then the operator's fix, deploying the
    build/ release again, brings every gateway back."""
    release_dir, version = build_changed_release(
        tmp_path, "main.py", 'raise RuntimeError("deliberately broken release")'
    )
    inventory = request.config.option.ansible_inventory
    gateways = group_hosts("gateway")
    before = [current_release(gateway) for gateway in gateways]
    try:
        with traffic(address, master_key) as load:
            deploy = ansible_playbook(
                inventory,
                "gateway.yml",
                f"gateway_release_dir={release_dir}",
                f"gateway_release_version={version}",
                "gateway_health_timeout=20",
            )
        # The failure's message goes to stdout or stderr, depending on the result callback.
        said = deploy.stdout + deploy.stderr
        output = deploy.stdout[-4000:] + deploy.stderr[-2000:]
        assert deploy.returncode != 0, output
        assert "did not answer 200 on /api/health" in said, output
        assert "deliberately broken release" in said, "the journal is not shown"
        now = [current_release(gateway) for gateway in gateways]
        # serial: 1, so exactly one gateway got the release; the others kept theirs.
        assert [link.endswith(version) for link in now].count(True) == 1, now
        assert [a == b for a, b in zip(now, before, strict=True)].count(False) == 1, now
        judge(group_host("database"), load, "failed release")
    finally:
        restored = ansible_playbook(inventory, "gateway.yml")
    assert restored.returncode == 0, restored.stdout[-3000:] + restored.stderr[-2000:]
    # Every gateway runs the build/ release again (the rollback of RUNBOOK section 7).
    deployed = (REPOSITORY / "build" / "VERSION").read_text().strip()
    assert [running_version(gateway) for gateway in gateways] == [deployed] * len(gateways)
    assert all(current_release(gateway).endswith(deployed) for gateway in gateways)
