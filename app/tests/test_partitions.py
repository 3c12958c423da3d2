"""Daily partitions (revision 0003): what a user of the log notices, and an upgrade from
the unpartitioned tables, with their rows, while the writer keeps inserting. Weekly
partitions when the database asks for them, and a refused upgrade when it asks for
something else."""

import asyncio
import itertools
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta

import pytest
from alembic import command
from alembic.config import Config
from exchange_rows import run_insert
from migration_load import DURING_PREFIX, count_during, migrate_while_writing
from sqlalchemy import create_engine

from llm_gateway.api import _newest_requests, _newest_responses, newest_first
from llm_gateway.config import DatabaseSettings, WriterSettings
from llm_gateway.spool import Spool
from llm_gateway.writer import ExchangeWriter, encode, insert_exchanges

from conftest import query
from helpers import exchange_record

_names = itertools.count()


def day_start(days_from_today: int) -> datetime:
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return today + timedelta(days=days_from_today)


def partition(table: str, days_from_today: int) -> str:
    return f"{table}_p{day_start(days_from_today):%Y%m%d}"


def where_rows_are(pg_cluster, database, request_id: str) -> tuple[str, str]:
    ((requests, responses),) = query(
        pg_cluster,
        database,
        "SELECT r.tableoid::regclass::text, p.tableoid::regclass::text FROM requests r"
        " JOIN responses p ON p.request_id_fk = r.id AND p.request_created_at = r.created_at"
        " WHERE r.request_id = %s",
        (request_id,),
    )
    return requests, responses


def add_days(pg_cluster, database, offsets) -> None:
    """Daily partitions of both tables for these days (counted from today)."""
    for offset in offsets:
        for table in ("requests", "responses"):
            lower, upper = day_start(offset), day_start(offset + 1)
            pg_cluster.execute(
                f"CREATE TABLE {partition(table, offset)} PARTITION OF {table}"
                f" FOR VALUES FROM ('{lower.isoformat()}') TO ('{upper.isoformat()}')",
                database,
            )


def insert(pg_cluster, database, *records) -> None:
    engine = create_engine(pg_cluster.url(database))
    try:
        with engine.begin() as conn:
            insert_exchanges(conn, list(records))
    finally:
        engine.dispose()


def test_an_exchange_lands_in_its_days_partitions(pg_cluster, database):
    insert(pg_cluster, database, exchange_record("req_today", started_at=day_start(0).timestamp()))
    assert where_rows_are(pg_cluster, database, "req_today") == (
        partition("requests", 0),
        partition("responses", 0),
    )


def test_a_day_without_a_partition_goes_to_the_default_partition(pg_cluster, database):
    # Maintenance fell behind (or a clock is off): the insert still succeeds.
    far = day_start(400).timestamp()
    insert(pg_cluster, database, exchange_record("req_far", started_at=far))
    assert where_rows_are(pg_cluster, database, "req_far") == (
        "requests_default",
        "responses_default",
    )


def test_deleting_a_request_deletes_its_response(pg_cluster, database):
    insert(pg_cluster, database, exchange_record("req_x", started_at=day_start(1).timestamp()))
    pg_cluster.execute("DELETE FROM requests WHERE request_id = 'req_x'", database)
    assert query(pg_cluster, database, "SELECT count(*) FROM responses") == [(0,)]


def test_dropping_a_days_partitions_removes_exactly_that_days_exchanges(pg_cluster, database):
    days = {1: ["req_d1_a", "req_d1_b"], 2: ["req_d2_a", "req_d2_b", "req_d2_c"], 3: ["req_d3"]}
    for offset, ids in days.items():
        start = day_start(offset).timestamp()
        # The last one a millisecond before midnight: still that day's.
        starts = [start + 60 * i for i in range(len(ids) - 1)] + [start + 86399.999]
        records = [exchange_record(i, started_at=at) for i, at in zip(ids, starts, strict=True)]
        insert(pg_cluster, database, *records)
    # Retention's order: responses first (they reference requests), then requests.
    for table in ("responses", "requests"):
        pg_cluster.execute(f"ALTER TABLE {table} DETACH PARTITION {partition(table, 2)}", database)
        pg_cluster.execute(f"DROP TABLE {partition(table, 2)}", database)
    left = query(
        pg_cluster,
        database,
        "SELECT r.request_id FROM requests r JOIN responses p ON p.request_id_fk = r.id"
        " AND p.request_created_at = r.created_at ORDER BY 1",
    )
    assert [row[0] for row in left] == sorted(days[1] + days[3])
    assert query(pg_cluster, database, "SELECT count(*) FROM responses") == [(3,)]


def test_replaying_the_same_spooled_exchange_twice_stores_it_once(tmp_path, pg_cluster, database):
    engine = create_engine(pg_cluster.url(database))
    spool = Spool(tmp_path)
    spool.open()
    line = encode(exchange_record("req_twice", started_at=day_start(0).timestamp() + 1.5))
    # A crash after the commit and before the spool file went: the same line twice.
    spool.append([line])
    spool.append([line, encode(exchange_record("req_other"))])

    def write(batch):
        with engine.begin() as conn:
            insert_exchanges(conn, batch)

    try:
        spool.replay(write, pytest.fail, chunk=1)
    finally:
        engine.dispose()
    assert query(
        pg_cluster,
        database,
        "SELECT r.request_id, count(*) FROM requests r JOIN responses p"
        " ON p.request_id_fk = r.id AND p.request_created_at = r.created_at GROUP BY 1 ORDER BY 1",
    ) == [("req_other", 1), ("req_twice", 1)]


def explain(conn, build, limit: int) -> str:
    since = datetime.now(UTC) - timedelta(days=1)
    compiled = build(since, limit).compile(conn, compile_kwargs={"literal_binds": True})
    return "\n".join(row[0] for row in conn.exec_driver_sql(f"EXPLAIN {compiled}"))


def test_newest_first_reads_touch_only_the_newest_partitions(pg_cluster, database):
    add_days(pg_cluster, database, range(-6, 0))  # older days, as a deployment accumulates them
    records = [
        exchange_record(f"req_{offset}_{i}", started_at=day_start(offset).timestamp() + 3600 + i)
        for offset in range(-6, 1)
        for i in range(3)
    ]
    insert(pg_cluster, database, *records)
    engine = create_engine(pg_cluster.url(database))
    try:
        with engine.connect() as conn:
            plans = [explain(conn, build, 2) for build in (_newest_requests, _newest_responses)]
            newest = newest_first(conn, _newest_requests, 2)
            everything = newest_first(conn, _newest_requests, 100)
            responses = newest_first(conn, _newest_responses, 100)
    finally:
        engine.dispose()
    for plan, table in zip(plans, ("requests", "responses"), strict=True):
        assert partition(table, 0) in plan
        assert partition(table, -1) in plan  # the window reaches back one day
        for offset in range(-6, -1):
            assert partition(table, offset) not in plan, plan
    assert [row["request_id"] for row in newest] == ["req_0_2", "req_0_1"]
    # Fewer than asked for in the window: the whole table, still newest first.
    assert [row["request_id"] for row in everything] == [r["request_id"] for r in records][::-1]
    assert [row["request_id_fk"] for row in responses] == [row["id"] for row in everything]


def new_0002_database(pg_cluster) -> str:
    name = f"gw_0002_{next(_names)}"
    pg_cluster.execute(f"CREATE DATABASE {name}")
    migrate(pg_cluster, name, "0002")
    return name


def migrate(pg_cluster, database: str, target: str) -> None:
    done = run_migrate(pg_cluster, database, target)
    assert done.returncode == 0, done.stderr


def run_migrate(pg_cluster, database: str, target: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "llm_gateway.cli", "migrate", target],
        env={**os.environ, "DATABASE_URL": pg_cluster.url(database)},
        capture_output=True,
        text=True,
    )


def ask_for_interval(pg_cluster, database: str, interval: str) -> None:
    """What the deployment's postgresql role records before the gateways migrate."""
    pg_cluster.execute(
        f"ALTER DATABASE {database} SET llm_gateway.log_partition_interval = '{interval}'"
    )


def children(pg_cluster, database: str, table: str) -> list[tuple]:
    """(name, from, to) of each dated child, oldest first."""
    return query(
        pg_cluster,
        database,
        "SELECT c.relname, b[1]::timestamptz, b[2]::timestamptz FROM pg_inherits i"
        " JOIN pg_class c ON c.oid = i.inhrelid,"
        " regexp_match(pg_get_expr(c.relpartbound, c.oid), $$FROM \\('([^']*)'\\) TO$$"
        " || $$ \\('([^']*)'\\)$$) AS b"
        " WHERE i.inhparent = %s::regclass AND b IS NOT NULL ORDER BY 2",
        (table,),
    )


def seed(pg_cluster, database: str, count: int) -> list[tuple]:
    """``count`` exchanges over the last 10 days; returns (request id, request_id, response id)."""
    conn = pg_cluster.connect(database)
    try:
        with conn.cursor() as cursor:
            run_insert(cursor, count, days=10, body_chunks=2)
    finally:
        conn.close()
    return exchanges(pg_cluster, database, "req_seed_%")


def exchanges(pg_cluster, database: str, pattern: str) -> list[tuple]:
    return query(
        pg_cluster,
        database,
        "SELECT r.id, r.request_id, p.id FROM requests r JOIN responses p"
        " ON p.request_id_fk = r.id WHERE r.request_id LIKE %s ORDER BY r.id",
        (pattern,),
    )


def test_upgrade_keeps_every_row_while_the_writer_keeps_inserting(tmp_path, pg_cluster):
    database = new_0002_database(pg_cluster)
    before = seed(pg_cluster, database, 3000)
    url = pg_cluster.url(database)
    result = asyncio.run(migrate_while_writing(url, tmp_path / "spool", interval_s=0.002))
    assert result["returncode"] == 0, result["output"]
    assert query(pg_cluster, database, "SELECT version_num FROM alembic_version") == [("0003",)]
    # Every row that was there is there, with its ids, and its response in its day.
    assert exchanges(pg_cluster, database, "req_seed_%") == before
    assert query(
        pg_cluster,
        database,
        "SELECT count(*) FROM responses p JOIN requests r ON r.id = p.request_id_fk"
        " WHERE p.request_created_at <> r.created_at OR p.tableoid::regclass::text"
        " <> replace(r.tableoid::regclass::text, 'requests', 'responses')",
    ) == [(0,)]
    during = count_during(url, result["sent"])
    assert result["sent"] > 100
    assert during == {"lost": 0, "duplicated": 0, "without_response": 0}
    assert result["writer"]["lost"] == 0
    # New ids continue past every old one.
    first_new = query(
        pg_cluster,
        database,
        "SELECT min(id) FROM requests WHERE request_id LIKE %s AND id > %s",
        (DURING_PREFIX + "%", before[-1][0]),
    )
    assert first_new[0][0] is not None
    assert query(pg_cluster, database, "SELECT relkind FROM pg_class WHERE relname = 'requests'")[
        0
    ] == ("p",)


def downgrade(pg_cluster, database: str, target: str) -> None:
    """`alembic downgrade` on one connection, as `llm-gateway migrate` runs upgrades (the
    CLI has no downgrade: a rollback is an operator's deliberate act)."""
    engine = create_engine(pg_cluster.url(database))
    config = Config()
    config.set_main_option("script_location", "llm_gateway:migrations")
    try:
        with engine.connect() as conn:
            config.attributes["connection"] = conn
            with conn.begin():
                command.downgrade(config, target)
    finally:
        engine.dispose()


def test_downgrade_keeps_the_rows_and_upgrade_again(pg_cluster):
    database = new_0002_database(pg_cluster)
    before = seed(pg_cluster, database, 500)
    migrate(pg_cluster, database, "0003")
    downgrade(pg_cluster, database, "0002")
    assert exchanges(pg_cluster, database, "req_seed_%") == before
    assert query(pg_cluster, database, "SELECT relkind FROM pg_class WHERE relname = 'requests'")[
        0
    ] == ("r",)
    # The writer of this code writes the 0002 tables too (deployed before migrate runs).
    insert(pg_cluster, database, exchange_record("req_on_0002", started_at=time.time()))
    migrate(pg_cluster, database, "0003")
    assert exchanges(pg_cluster, database, "req_seed_%") == before
    assert len(exchanges(pg_cluster, database, "req_on_0002")) == 1


def test_a_writer_meets_the_new_tables_and_goes_on(tmp_path, pg_cluster):
    """Its kept connection wrote the old tables; after the swap it writes the new ones."""
    database = new_0002_database(pg_cluster)
    engine = create_engine(pg_cluster.url(database))
    spool = Spool(tmp_path)
    spool.open()
    writer = ExchangeWriter(engine, spool, WriterSettings(), DatabaseSettings())
    try:
        writer._write_batch([exchange_record("req_old_tables", started_at=time.time())])
        migrate(pg_cluster, database, "0003")
        writer._write_batch([exchange_record("req_new_tables", started_at=time.time())])
        writer._close_conn()
    finally:
        engine.dispose()
    assert not spool.has_backlog()
    for request_id in ("req_old_tables", "req_new_tables"):
        assert where_rows_are(pg_cluster, database, request_id) == (
            partition("requests", 0),
            partition("responses", 0),
        )


def test_a_database_that_asks_for_weeks_gets_monday_to_monday_partitions(pg_cluster):
    database = new_0002_database(pg_cluster)
    ask_for_interval(pg_cluster, database, "weekly")
    before = seed(pg_cluster, database, 500)
    migrate(pg_cluster, database, "0003")
    assert exchanges(pg_cluster, database, "req_seed_%") == before
    today = day_start(0)
    this_monday = today - timedelta(days=today.weekday())
    oldest = query(pg_cluster, database, "SELECT min(created_at) FROM requests")[0][0]
    for table in ("requests", "responses"):
        weeks = children(pg_cluster, database, table)
        assert weeks, table
        for name, start, end in weeks:
            assert start.astimezone(UTC).weekday() == 0, name  # a Monday
            assert start.astimezone(UTC).time().isoformat() == "00:00:00", name
            assert end - start == timedelta(days=7), name
            assert name == f"{table}_p{start.astimezone(UTC):%Y%m%d}"
        # No gap from the oldest row's week to four weeks ahead of this one.
        assert [end for _, _, end in weeks[:-1]] == [start for _, start, _ in weeks[1:]]
        assert weeks[0][1] <= oldest
        assert weeks[-1][1] == this_monday + timedelta(weeks=4)
    # A new exchange goes to this week's pair of partitions.
    insert(pg_cluster, database, exchange_record("req_this_week", started_at=time.time()))
    assert where_rows_are(pg_cluster, database, "req_this_week") == (
        f"requests_p{this_monday:%Y%m%d}",
        f"responses_p{this_monday:%Y%m%d}",
    )


def test_an_interval_the_migration_does_not_know_fails_it_and_changes_nothing(pg_cluster):
    database = new_0002_database(pg_cluster)
    ask_for_interval(pg_cluster, database, "hourly")
    before = seed(pg_cluster, database, 50)
    done = run_migrate(pg_cluster, database, "0003")
    assert done.returncode == 1
    assert "llm_gateway.log_partition_interval is 'hourly'" in done.stderr
    assert "daily, weekly" in done.stderr
    assert query(pg_cluster, database, "SELECT version_num FROM alembic_version") == [("0002",)]
    assert query(pg_cluster, database, "SELECT relkind FROM pg_class WHERE relname = 'requests'")[
        0
    ] == ("r",)
    assert exchanges(pg_cluster, database, "req_seed_%") == before


@pytest.mark.parametrize(("old_days", "plans"), [(0, "generic"), (80, "per-row")])
def test_the_writer_picks_the_fk_check_plans_for_the_partition_count(
    tmp_path, caplog, pg_cluster, database, old_days, plans
):
    """Generic plans are cheaper with few partitions and far dearer with a year of them
    (GENERIC_PLAN_MAX_PARTITIONS); the rows are checked and written either way."""
    add_days(pg_cluster, database, range(-400, -400 + old_days))  # a log kept for good
    engine = create_engine(pg_cluster.url(database))
    spool = Spool(tmp_path)
    spool.open()
    writer = ExchangeWriter(engine, spool, WriterSettings(), DatabaseSettings())
    caplog.set_level("INFO", logger="llm_gateway.writer")
    try:
        writer._write_batch([exchange_record(f"req_{plans}", started_at=time.time())])
        writer._close_conn()
    finally:
        engine.dispose()
    assert f"FK checks use {plans} plans" in caplog.text
    assert where_rows_are(pg_cluster, database, f"req_{plans}") == (
        partition("requests", 0),
        partition("responses", 0),
    )
    assert not spool.has_backlog()
