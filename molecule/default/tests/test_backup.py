"""Backups restore exactly what was logged before a point in time: a full backup,
exchanges through the balancer, the time T on the database's clock, more exchanges, then
the restore drill (restore_drill.yml) to T. The drill compares the restored cluster with
the live one up to T (row counts and checksums of requests and responses, no row after T,
no orphan, the foreign key) and fails on any difference; this test also checks that T
separates the two sets of exchanges on the live cluster, so the restored cluster holds
exactly the exchanges made before T."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import openai
import pytest
from conftest import SHARED, ansible_playbook, client_tls, psql
from testinfra.utils.ansible_runner import AnsibleRunner

STANZA = SHARED["pgbackrest_stanza"]
BEFORE, AFTER = 5, 4
ROWS_WAIT_SECONDS = 60
MODEL = "fake-gpt"

pytestmark = [
    pytest.mark.host_group("backup"),
    pytest.mark.systemd_unit("pgbackrest.service"),
]


def pgbackrest(host: Any, *args: str) -> str:
    result = host.run(
        "runuser -u postgres -- pgbackrest --stanza=%s " + " ".join(["%s"] * len(args)),
        STANZA,
        *args,
    )
    assert result.rc == 0, result.stdout + result.stderr
    return result.stdout


def exchanges(address: str, key: str, user: str, count: int) -> list[str]:
    """count chat calls through the balancer (the official client, no retries); their ids."""
    client = openai.OpenAI(
        base_url=f"https://{address}:{SHARED['gateway_port']}/v1",
        api_key=key,
        max_retries=0,
        http_client=openai.DefaultHttpxClient(verify=client_tls()),
    )
    ids = []
    for _ in range(count):
        raw = client.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], user=user
        )
        assert raw.parse().choices[0].message.content, "empty answer"
        ids.append(raw.headers["x-request-id"])
    return ids


def wait_logged(db_host: Any, ids: list[str]) -> None:
    """Until every exchange has its request and its response row."""
    quoted = ",".join(f"'{i}'" for i in ids)
    sql = (
        "SELECT count(*) FROM requests r JOIN responses p ON p.request_id_fk = r.id"
        f" WHERE r.request_id IN ({quoted})"
    )
    deadline = time.monotonic() + ROWS_WAIT_SECONDS
    while psql(db_host, sql) != str(len(ids)):
        assert time.monotonic() < deadline, f"not all of {len(ids)} exchanges logged"
        time.sleep(1)


def created_after(db_host: Any, ids: list[str], target: str) -> int:
    quoted = ",".join(f"'{i}'" for i in ids)
    return int(
        psql(
            db_host,
            f"SELECT count(*) FROM requests WHERE request_id IN ({quoted})"
            f" AND created_at > '{target}'::timestamptz",
        )
    )


def test_restore_to_a_point_in_time_restores_exactly_the_exchanges_before_it(
    host: Any,
    group_host: Callable[[str], Any],
    credential: Callable[[str], str],
    request: pytest.FixtureRequest,
    tmp_path: Path,
) -> None:
    db_host = group_host("database")
    # Where clients enter: the first balancer, else the first gateway.
    runner = AnsibleRunner(request.config.option.ansible_inventory)
    entry = (runner.get_hosts("loadbalancer") or runner.get_hosts("gateway"))[0]
    address = runner.get_variables(entry)["service_address"]
    key = credential("gateway_master_key")
    user = f"backup-test-{uuid.uuid4().hex[:8]}"

    pgbackrest(host, "--type=full", "backup")
    before = exchanges(address, key, user, BEFORE)
    wait_logged(db_host, before)
    time.sleep(2)
    target = psql(
        db_host, "SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || '+00'"
    )
    time.sleep(2)
    after = exchanges(address, key, user, AFTER)
    wait_logged(db_host, after)

    # On the live cluster, T separates the two sets.
    assert created_after(db_host, before, target) == 0
    assert created_after(db_host, after, target) == AFTER

    drill = ansible_playbook(
        request.config.option.ansible_inventory,
        "restore_drill.yml",
        f"restore_target_time='{target}'",
        f"pgbackrest_drill_output_root={tmp_path}",
    )
    assert drill.returncode == 0, drill.stdout[-4000:] + drill.stderr[-2000:]
    # <root>/<environment>/<UTC timestamp>-restore-drill/restore_drill.txt
    reports = list(tmp_path.glob("*/*-restore-drill/restore_drill.txt"))
    assert len(reports) == 1, drill.stdout[-2000:]
    report = reports[0].read_text()
    print(report)
    assert report.startswith("Restore drill: PASS"), report
    source_rows = re.search(r"^requests_rows\s+(\d+)\s+(\d+)", report, re.M)
    assert source_rows and source_rows.group(1) == source_rows.group(2), report
    # Every row up to T on the live cluster, ours before T among them, none of ours after.
    live_up_to_t = psql(
        db_host, f"SELECT count(*) FROM requests WHERE created_at <= '{target}'::timestamptz"
    )
    assert source_rows.group(2) == live_up_to_t, (source_rows.groups(), live_up_to_t)
    # The scratch cluster is gone, and the live one kept archiving.
    assert not db_host.file("/var/lib/postgresql/restore-drill").exists
    pgbackrest(host, "check")
