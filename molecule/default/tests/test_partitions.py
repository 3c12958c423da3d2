"""The log tables' partitions, kept by pg_partman (roles/postgresql, tasks/partman.yml and
tasks/partitions.yml): both tables registered, days made ahead by the maintenance timer,
and retention by dropping whole days. The retention test dates exchanges in the past (in
SQL: the gateway stamps every exchange with the time it happened), sets a retention of
RETENTION_DAYS with partitions.yml, and checks that exactly the days beyond it are gone,
from both tables and without a trace, while traffic through the balancer is answered and
logged throughout. The retention is set back to the inventory's afterwards."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from datetime import date, timedelta
from typing import Any

import pytest
from conftest import SHARED, ansible_playbook, psql
from testinfra.utils.ansible_runner import AnsibleRunner
from traffic import judge, traffic

OWNER = SHARED["postgresql_app_owner"]
UNIT = "postgresql-partman-maintenance"
RETENTION_DAYS = 30
# Days before today that get partitions and exchanges: beyond the retention, and within it.
OLD_DAYS = (45, 40, 31)
KEPT_DAYS = (29, 3)
EXCHANGES_PER_DAY = 3

pytestmark = [pytest.mark.host_group("database")]


def as_owner(host: Any, sql: str) -> str:
    """SQL run as the tables' owner (whom pg_partman's maintenance also runs as), in UTC."""
    return psql(host, f"SET ROLE {OWNER}; SET TimeZone = 'UTC'; {sql}")


def partitions(host: Any, table: str) -> list[str]:
    return psql(
        host,
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
        f" WHERE i.inhparent = '{table}'::regclass ORDER BY c.relname",
    ).splitlines()


def day_name(table: str, day: date) -> str:
    return f"{table}_p{day:%Y%m%d}"


def today(host: Any) -> date:
    return date.fromisoformat(psql(host, "SELECT (now() AT TIME ZONE 'UTC')::date"))


def test_both_log_tables_are_kept_by_pg_partman_in_maintenance_order(host: Any) -> None:
    rows = psql(
        host,
        "SELECT parent_table, control, partition_interval, premake, retention_schema,"
        " maintenance_order, infinite_time_partitions FROM partman.part_config"
        " ORDER BY maintenance_order",
    ).splitlines()
    # responses first: its day must be gone before the same day of requests, which the
    # foreign key references; that one is detached into partman_retired, then dropped.
    assert rows == [
        "public.responses|request_created_at|1 day|4||1|t",
        "public.requests|created_at|1 day|4|partman_retired|2|t",
    ]


def test_the_database_records_the_interval_its_migration_partitioned_with(host: Any) -> None:
    # The gateways' migration read it from here; pg_partman keeps days ("1 day" above).
    assert psql(host, "SHOW llm_gateway.log_partition_interval") == "daily"


def test_a_new_interval_for_the_partitioned_tables_is_refused_and_changes_nothing(
    host: Any, request: pytest.FixtureRequest
) -> None:
    settings = "SELECT parent_table, partition_interval FROM partman.part_config ORDER BY 1"
    before = psql(host, settings)
    run = ansible_playbook(
        request.config.option.ansible_inventory,
        "partitions.yml",
        "postgresql_partman_interval=weekly",
    )
    assert run.returncode != 0
    # The failure is on stderr where the environment says so (molecule's does), and
    # colored where a terminal is assumed.
    said = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", run.stdout + run.stderr).split())
    assert (
        "postgresql_partman_interval is weekly, but the log tables are already partitioned"
        " daily." in said
    ), run.stdout[-3000:] + run.stderr[-3000:]
    assert psql(host, settings) == before
    assert psql(host, "SHOW llm_gateway.log_partition_interval") == "daily"


def test_the_maintenance_timer_is_scheduled_and_its_last_run_succeeded(host: Any) -> None:
    timer = host.service(f"{UNIT}.timer")
    assert timer.is_enabled and timer.is_running
    result = host.run(f"systemctl show {UNIT}.service --property=Result,ExecMainStatus")
    assert result.stdout.split() == ["Result=success", "ExecMainStatus=0"], result.stdout


def test_days_are_made_ahead(host: Any) -> None:
    # Four days are made ahead (premake); just after midnight UTC the fourth appears only
    # with the timer's next run, so three are what is always there.
    ahead = today(host) + timedelta(days=3)
    for table in ("requests", "responses"):
        assert day_name(table, ahead) in partitions(host, table)


def _date_exchanges(host: Any, days: list[date], marker: str) -> None:
    """Each day's partitions, then EXCHANGES_PER_DAY exchanges (request and response rows)
    at noon UTC of it. create_partition_time takes each stamp as a partition's lower bound
    as it is, without rounding it to the day, so it is given midnights."""
    midnights = ", ".join(f"'{day} 00:00:00+00'" for day in days)
    noons = ", ".join(f"'{day} 12:00:00+00'" for day in days)
    as_owner(
        host,
        "SELECT partman.create_partition_time(p, ARRAY["
        + midnights
        + "]::timestamptz[]) FROM unnest(ARRAY['public.requests', 'public.responses']) AS p;"
        " WITH made AS ("
        "  INSERT INTO requests (request_id, route, method, url, headers, status_code,"
        '   "user", created_at)'
        f"  SELECT '{marker}-' || d || '-' || n, '/v1/chat/completions', 'POST',"
        "   'https://gateway/v1/chat/completions', '{}'::jsonb, 200,"
        f"   '{marker}', t FROM unnest(ARRAY[{noons}]::timestamptz[]) AS t,"
        f"   generate_series(1, {EXCHANGES_PER_DAY}) AS n,"
        "   LATERAL (SELECT to_char(t, 'YYYYMMDD') AS d) AS day"
        "  RETURNING id, created_at)"
        " INSERT INTO responses (request_id_fk, request_created_at, status_code, latency_ms)"
        " SELECT id, created_at, 200, 1 FROM made",
    )


def test_retention_drops_exactly_the_days_beyond_it_while_the_gateways_log(
    host: Any,
    credential: Callable[[str], str],
    request: pytest.FixtureRequest,
) -> None:
    inventory = request.config.option.ansible_inventory
    marker = f"retention-{uuid.uuid4().hex[:8]}"
    first = today(host)
    old = [first - timedelta(days=d) for d in OLD_DAYS]
    kept = [first - timedelta(days=d) for d in KEPT_DAYS]
    _date_exchanges(host, old + kept, marker)
    for table in ("requests", "responses"):
        assert {day_name(table, d) for d in old + kept} <= set(partitions(host, table))

    runner = AnsibleRunner(inventory)
    address = runner.get_variables(runner.get_hosts("loadbalancer")[0])["service_address"]
    try:
        with traffic(address, credential("gateway_master_key")) as load:
            run = ansible_playbook(
                inventory, "partitions.yml", f"postgresql_partman_retention_days={RETENTION_DAYS}"
            )
            assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
            # The new retention was written, and maintenance ran at once to apply it.
            assert "RUNNING HANDLER [postgresql : Run pg_partman maintenance now]" in run.stdout
        judge(host, load, "retention")
    finally:
        reset = ansible_playbook(inventory, "partitions.yml")
        assert reset.returncode == 0, reset.stdout[-4000:] + reset.stderr[-2000:]

    for table in ("requests", "responses"):
        left = set(partitions(host, table))
        assert not {day_name(table, d) for d in old} & left, sorted(left)
        assert {day_name(table, d) for d in kept} <= left
    assert psql(host, "SELECT count(*) FROM pg_tables WHERE schemaname = 'partman_retired'") == "0"
    # Only the rows of the kept days are left, and every one of them still has its pair.
    kept_rows = EXCHANGES_PER_DAY * len(KEPT_DAYS)
    assert (
        psql(
            host,
            "SELECT count(*), count(DISTINCT q.created_at::date), count(s.id) FROM requests q"
            f" LEFT JOIN responses s ON s.request_id_fk = q.id WHERE q.\"user\" = '{marker}'",
        )
        == f"{kept_rows}|{len(KEPT_DAYS)}|{kept_rows}"
    )
    # The run said what it dropped; requests' days went by the detach-then-drop path.
    journal = host.run(f"journalctl -u {UNIT}.service --no-pager -o cat -n 200").stdout
    for day in old:
        assert f"dropped retired partition {day_name('requests', day)}" in journal, journal[-2000:]
    # The inventory's retention (none) is back.
    assert psql(host, "SELECT count(*) FROM partman.part_config WHERE retention IS NOT NULL") == "0"
