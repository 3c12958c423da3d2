"""requests and responses range-partitioned by day or week (UTC), moved over with their rows

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30

Keys. PostgreSQL wants the partition key in every unique key, so
  requests   PARTITION BY RANGE (created_at)          PK (id, created_at)
             UNIQUE (request_id, created_at)           the writer's ON CONFLICT target
  responses  PARTITION BY RANGE (request_created_at)  PK (id, request_created_at)
             FK (request_id_fk, request_created_at) -> requests (id, created_at) CASCADE
`request_created_at` is the request's `created_at`, so an exchange's two rows sit in the
same partitions and a day (or week) is dropped as a pair (responses first). The writer stamps
`created_at` from the exchange's own start time (`started_at`, carried in the spool), so a
replayed exchange has the same (request_id, created_at) and ON CONFLICT still skips it.
Ids stay unique in practice (one identity sequence per parent) but are no longer enforced
unique across days; nothing references `id` alone.

Width of a child. The database says it: the deployment's postgresql role records
`ALTER DATABASE ... SET llm_gateway.log_partition_interval = 'daily' | 'weekly'` before the
gateways migrate; unset means daily. A weekly child runs from Monday to Monday (ISO weeks),
as pg_partman makes them with `p_date_trunc_interval => 'week'`. Any other value fails the
migration before it changes anything. The width cannot change afterwards (pg_partman keeps
a set at the interval it was registered with; the role refuses a changed one).

Children are named as pg_partman 5 names them (`requests_p20261130`: the first day, bounds
at midnight UTC) plus `requests_default` / `responses_default`, so
`partman.create_parent(..., p_interval => '1 day' | '1 week')` can adopt the sets later. The
default partitions catch a row whose day has no partition yet (maintenance behind, clock
skew): an insert never fails for want of a partition. No pg_partman here: native DDL only.

Moving the rows while gateways keep writing, in this one transaction:
1. Read the responses' then the requests' identity sequences (B, then A): every response
   with id <= B belongs to a request with id <= A (the writer allocates a request's id
   before its response's, in one statement).
2. Wait (bounded, WAIT_FOR_WRITERS_S) until every transaction that held a lock on either
   table at that moment has ended, so every row with id <= A (<= B) is committed.
3. Create the partitioned tables beside the old ones, copy the rows id <= A (<= B),
   then build keys, indexes and the FK. Gateways keep inserting into the old tables.
   Then catch up: new marks, the same wait, copy the rows between the marks; again
   until a pass copies at most CATCH_UP_ENOUGH requests (or CATCH_UP_PASSES passes).
4. LOCK both old tables ACCESS EXCLUSIVE (waiting at most LOCK_TIMEOUT; on timeout the
   migration fails and changes nothing: run it again). Writers now wait on the lock
   (their writer queues, then spools, and replays afterwards).
5. Copy what came in since (id > A, id > B), check that the old tables count as many
   rows as both copies together, drop the old tables, give the new ones their names, and
   set the identities past every id ever allocated. COMMIT releases the lock; a waiting
   insert finds the new table.
The exclusive window is step 4-5: the rows written during the last catch-up pass plus a
count of the old tables. The migration reports both phases' durations on stderr (migrate_0003).

Downgrade copies everything back into plain tables under an exclusive lock held for the
whole copy (writers wait and spool for that long): a rollback is rare and must not lose
rows, so it trades availability for simplicity.
"""

from __future__ import annotations

import time
from datetime import date, timedelta

from alembic import op
from sqlalchemy import Connection

from llm_gateway.events import emit_event

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

# The setting the database carries (see above), its values and their width in days.
INTERVAL_SETTING = "llm_gateway.log_partition_interval"
INTERVAL_DAYS = {"daily": 1, "weekly": 7}
DEFAULT_INTERVAL = "daily"
# Children created ahead of the current one (pg_partman's default premake).
PREMAKE = 4
# Rows older than this many days before today go to the default partition instead of a
# child each: a stray timestamp from 1970 must not create 20,000 tables, and every
# child costs planning time. (pg_partman's partition_data_proc can move them out later.)
MAX_BACKFILL_DAYS = 90
# Longest wait for the exclusive lock: while we wait, new writes queue behind us.
LOCK_TIMEOUT = "10s"
# Catch-up passes before the lock: at most this many, done once a pass copied this few.
CATCH_UP_PASSES = 5
CATCH_UP_ENOUGH = 2000
MAINTENANCE_WORK_MEM = "512MB"
WORK_MEM = "128MB"
# Longest wait for the writes in flight when the move starts to finish.
WAIT_FOR_WRITERS_S = 60.0

REQUEST_COLUMNS = (
    "id, request_id, route, method, url, headers, body, model, status_code, key_alias,"
    ' "user", created_at'
)
RESPONSE_COLUMNS = (
    "id, request_id_fk, response_body, status_code, latency_ms, prompt_tokens,"
    " completion_tokens, tokens_used, cost, created_at, deployment, attempts"
)


def partition_name(table: str, day: date) -> str:
    """pg_partman 5's name for a child of a daily or weekly set: <parent>_p<YYYYMMDD>."""
    return f"{table}_p{day:%Y%m%d}"


def partition_interval(conn: Connection) -> str:
    """The width the database asks for (INTERVAL_SETTING), daily when it says nothing."""
    value = conn.exec_driver_sql(f"SELECT current_setting('{INTERVAL_SETTING}', true)").scalar()
    value = value or DEFAULT_INTERVAL
    if value not in INTERVAL_DAYS:
        raise RuntimeError(
            f"the database's {INTERVAL_SETTING} is {value!r}, not one of"
            f" {', '.join(INTERVAL_DAYS)}; nothing was changed"
        )
    return value


def period_start(day: date, days: int) -> date:
    """The first day of the child that holds ``day``: the day itself, or its week's Monday."""
    return day - timedelta(days=day.weekday()) if days == 7 else day


def _utc(day: date) -> str:
    # Explicit offset: the bounds must not depend on the session's TimeZone.
    return f"'{day.isoformat()} 00:00:00+00'"


def _create_tables(conn: Connection, suffix: str) -> None:
    """The partitioned parents (no keys yet: they are built after the bulk copy)."""
    conn.exec_driver_sql(f"""
        CREATE TABLE requests{suffix} (
            id bigint GENERATED BY DEFAULT AS IDENTITY NOT NULL,
            request_id varchar(255) NOT NULL,
            route varchar(255) NOT NULL,
            method varchar(16) NOT NULL,
            url text NOT NULL,
            headers jsonb NOT NULL,
            body jsonb,
            model varchar(255),
            status_code integer NOT NULL,
            key_alias varchar(255),
            "user" varchar(255),
            created_at timestamptz NOT NULL DEFAULT now()
        ) PARTITION BY RANGE (created_at)""")
    conn.exec_driver_sql(f"""
        CREATE TABLE responses{suffix} (
            id bigint GENERATED BY DEFAULT AS IDENTITY NOT NULL,
            request_id_fk bigint NOT NULL,
            request_created_at timestamptz NOT NULL,
            response_body jsonb,
            status_code integer NOT NULL,
            latency_ms numeric(10, 2) NOT NULL,
            prompt_tokens integer,
            completion_tokens integer,
            tokens_used integer,
            cost numeric(12, 6),
            created_at timestamptz NOT NULL DEFAULT now(),
            deployment varchar(255),
            attempts smallint
        ) PARTITION BY RANGE (request_created_at)""")


def _create_partitions(conn: Connection, suffix: str, first: date, last: date, days: int) -> None:
    """Children of ``days`` days covering first..last (inclusive) and a default partition,
    for both tables."""
    for table in ("requests", "responses"):
        start = period_start(first, days)
        while start <= last:
            end = start + timedelta(days=days)
            conn.exec_driver_sql(
                f"CREATE TABLE {partition_name(table, start)} PARTITION OF {table}{suffix}"
                f" FOR VALUES FROM ({_utc(start)}) TO ({_utc(end)})"
            )
            start = end
        conn.exec_driver_sql(f"CREATE TABLE {table}_default PARTITION OF {table}{suffix} DEFAULT")


def _add_keys(conn: Connection, suffix: str) -> None:
    """Keys, indexes and the FK, built once the bulk of the rows is in (faster than
    maintaining them row by row, and validated in one pass)."""
    for statement in (
        f"ALTER TABLE requests{suffix} ADD CONSTRAINT pk_requests{suffix}"
        " PRIMARY KEY (id, created_at)",
        f"ALTER TABLE requests{suffix} ADD CONSTRAINT uq_requests_request_id{suffix}"
        " UNIQUE (request_id, created_at)",
        f"CREATE INDEX ix_requests_model{suffix} ON requests{suffix} (model)",
        f"CREATE INDEX ix_requests_created_at{suffix} ON requests{suffix} (created_at)",
        f"ALTER TABLE responses{suffix} ADD CONSTRAINT pk_responses{suffix}"
        " PRIMARY KEY (id, request_created_at)",
        # The FK's lookup index: the cascade deletes by both columns, joins use the first.
        f"CREATE INDEX ix_responses_request_id_fk{suffix} ON responses{suffix}"
        " (request_id_fk, request_created_at)",
        # Its final name at once: FK names are per table (no index), and the copies
        # PostgreSQL makes on every partition keep the name they were created with.
        f"ALTER TABLE responses{suffix} ADD CONSTRAINT fk_responses_request_id_fk_requests"
        " FOREIGN KEY (request_id_fk, request_created_at)"
        f" REFERENCES requests{suffix} (id, created_at) ON DELETE CASCADE",
    ):
        conn.exec_driver_sql(statement)


def _rename(conn: Connection, suffix: str) -> None:
    """Give the new parents, their keys, indexes and sequences the canonical names."""
    for table in ("requests", "responses"):
        conn.exec_driver_sql(f"ALTER TABLE {table}{suffix} RENAME TO {table}")
        conn.exec_driver_sql(f"ALTER SEQUENCE {table}{suffix}_id_seq RENAME TO {table}_id_seq")
    for name in ("pk_requests", "uq_requests_request_id", "pk_responses"):
        table = "requests" if "requests" in name else "responses"
        conn.exec_driver_sql(f"ALTER TABLE {table} RENAME CONSTRAINT {name}{suffix} TO {name}")
    for name in ("ix_requests_model", "ix_requests_created_at", "ix_responses_request_id_fk"):
        conn.exec_driver_sql(f"ALTER INDEX {name}{suffix} RENAME TO {name}")


def _sequence_position(conn: Connection, table: str) -> int:
    """The highest id the table's identity ever handed out (0: none yet). Sequences are
    not transactional, so this sees allocations of transactions still in flight."""
    sequence = conn.exec_driver_sql(f"SELECT pg_get_serial_sequence('{table}', 'id')").scalar()
    last, called = conn.exec_driver_sql(f"SELECT last_value, is_called FROM {sequence}").one()
    return int(last) if called else 0


def _continue_identity(conn: Connection, table: str, position: int) -> None:
    """New ids continue past every id the old table handed out (and past every row)."""
    top = conn.exec_driver_sql(f"SELECT coalesce(max(id), 0) FROM {table}").scalar()
    position = max(position, int(top))
    if position:
        conn.exec_driver_sql(
            f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), {position}, true)"
        )


def _marks(conn: Connection) -> tuple[int, int]:
    """(requests, responses) ids up to which every row is committed once this returns.
    The responses' sequence is read first: a response's id is allocated after its
    request's, so every response up to its mark has its request up to the other."""
    responses = _sequence_position(conn, "responses")
    requests = _sequence_position(conn, "requests")
    _wait_for_writers(conn, ("requests", "responses"))
    return requests, responses


def _wait_for_writers(conn: Connection, tables: tuple[str, ...]) -> None:
    """Wait until every transaction holding a lock on ``tables`` now has ended (the way
    CREATE INDEX CONCURRENTLY waits): ids read from the sequences before this are then
    all committed or rolled back. Writers hold their lock for one statement."""
    oids = ", ".join(f"'{table}'::regclass" for table in tables)
    holders = conn.exec_driver_sql(
        "SELECT array_agg(DISTINCT virtualtransaction) FROM pg_locks"
        f" WHERE relation IN ({oids}) AND pid <> pg_backend_pid()"
        # Writers' lock; not autovacuum's, which can run for minutes and allocates no ids.
        " AND mode = 'RowExclusiveLock'"
        # Other databases have relations with the same oids.
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    ).scalar()
    deadline = time.monotonic() + WAIT_FOR_WRITERS_S
    while holders:
        holders = conn.exec_driver_sql(
            "SELECT array_agg(virtualxid) FROM pg_locks"
            " WHERE locktype = 'virtualxid' AND virtualxid = ANY(%(vxids)s)",
            {"vxids": holders},
        ).scalar()
        if holders and time.monotonic() > deadline:
            raise RuntimeError(
                f"transactions {holders} holding locks on {tables} did not end within"
                f" {WAIT_FOR_WRITERS_S:.0f} s (an idle transaction?); nothing was changed,"
                " run the migration again"
            )
        if holders:
            time.sleep(0.05)


def _copy(conn: Connection, suffix: str, requests_where: str, responses_where: str) -> list:
    """Copy the rows selected by the two conditions; returns how many of each."""
    copied = conn.exec_driver_sql(
        f"INSERT INTO requests{suffix} ({REQUEST_COLUMNS})"
        f" SELECT {REQUEST_COLUMNS} FROM requests WHERE {requests_where}"
    )
    # request_created_at from the old request row (the FK guarantees there is one).
    response_columns = ", ".join(f"p.{column.strip()}" for column in RESPONSE_COLUMNS.split(","))
    return [
        copied.rowcount,
        conn.exec_driver_sql(
            f"INSERT INTO responses{suffix} ({RESPONSE_COLUMNS}, request_created_at)"
            f" SELECT {response_columns}, r.created_at FROM responses p"
            f" JOIN requests r ON r.id = p.request_id_fk WHERE {responses_where}"
        ).rowcount,
    ]


def _counts(conn: Connection) -> list[int]:
    """Rows in the old tables (an index-only scan where vacuum has kept the visibility
    map, as autovacuum does for these insert-only tables)."""
    return list(
        conn.exec_driver_sql(
            "SELECT (SELECT count(*) FROM requests), (SELECT count(*) FROM responses)"
        ).one()
    )


def _copy_grants(conn: Connection, source: str, target: str) -> None:
    """The runtime role's rights (granted explicitly or by default privileges) on the old
    table or sequence, given on the new one; partitions are reached through their parent."""
    kind = "SEQUENCE" if target.endswith("_seq") else "TABLE"
    rows = conn.exec_driver_sql(
        "SELECT a.privilege_type, quote_ident(g.rolname) FROM pg_class c,"
        " aclexplode(c.relacl) a JOIN pg_roles g ON g.oid = a.grantee"
        f" WHERE c.oid = '{source}'::regclass AND a.grantee <> c.relowner"
    ).all()
    for privilege, grantee in rows:
        conn.exec_driver_sql(f"GRANT {privilege} ON {kind} {target} TO {grantee}")


def upgrade() -> None:
    conn = op.get_bind()
    suffix = "_partitioned"
    interval = partition_interval(conn)
    days = INTERVAL_DAYS[interval]
    conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
    # One session: memory for the index builds and the FK's validation join, which
    # otherwise spill to disk (and take most of the time outside the lock).
    conn.exec_driver_sql(f"SET LOCAL maintenance_work_mem = '{MAINTENANCE_WORK_MEM}'")
    conn.exec_driver_sql(f"SET LOCAL work_mem = '{WORK_MEM}'")
    requests_mark, responses_mark = _marks(conn)

    today, oldest = conn.exec_driver_sql(
        "SELECT (now() AT TIME ZONE 'UTC')::date,"
        " (SELECT (min(created_at) AT TIME ZONE 'UTC')::date FROM requests)"
    ).one()
    first = max(min(oldest or today, today), today - timedelta(days=MAX_BACKFILL_DAYS))
    _create_tables(conn, suffix)
    _create_partitions(conn, suffix, first, today + timedelta(days=PREMAKE * days), days)
    started = time.monotonic()
    bulk = _copy(conn, suffix, f"id <= {requests_mark}", f"p.id <= {responses_mark}")
    _add_keys(conn, suffix)
    # Catch up with what the gateways wrote meanwhile, the same way, until little is left
    # for the exclusive window (each pass takes a fraction of the one before).
    passes = []
    for _ in range(CATCH_UP_PASSES):
        requests_next, responses_next = _marks(conn)
        copied = _copy(
            conn,
            suffix,
            f"id > {requests_mark} AND id <= {requests_next}",
            f"p.id > {responses_mark} AND p.id <= {responses_next}",
        )
        bulk = [bulk[0] + copied[0], bulk[1] + copied[1]]
        passes.append(copied[0])
        requests_mark, responses_mark = requests_next, responses_next
        if copied[0] <= CATCH_UP_ENOUGH:
            break

    # The exclusive window: from here to COMMIT.
    locked = time.monotonic()
    conn.exec_driver_sql("LOCK TABLE requests, responses IN ACCESS EXCLUSIVE MODE")
    rest = _copy(conn, suffix, f"id > {requests_mark}", f"p.id > {responses_mark}")
    # The new side's counts are the copies' own; counting the freshly written tables
    # would read them whole while writers wait.
    counted = time.monotonic()
    old, new = _counts(conn), [bulk[0] + rest[0], bulk[1] + rest[1]]
    count_s = time.monotonic() - counted
    if old != new:
        raise RuntimeError(f"rows (requests, responses): {old} before, {new} copied")
    positions = {table: _sequence_position(conn, table) for table in ("requests", "responses")}
    for table in ("requests", "responses"):
        _copy_grants(conn, table, f"{table}{suffix}")
        _copy_grants(conn, f"{table}_id_seq", f"{table}{suffix}_id_seq")
    conn.exec_driver_sql("DROP TABLE responses, requests")
    _rename(conn, suffix)
    for table, position in positions.items():
        _continue_identity(conn, table, position)
    # On stderr for whoever runs it (and bench-db): how long writers waited on us.
    emit_event(
        "migrate_0003",
        partition_interval=interval,
        rows_before_lock=bulk,
        catch_up_passes=passes,
        rows_under_lock=rest,
        count_under_lock_s=round(count_s, 3),
        copy_and_keys_s=round(locked - started, 3),
        exclusive_s=round(time.monotonic() - locked, 3),
    )


def downgrade() -> None:
    conn = op.get_bind()
    suffix = "_plain"
    conn.exec_driver_sql(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'")
    conn.exec_driver_sql("LOCK TABLE requests, responses IN ACCESS EXCLUSIVE MODE")
    conn.exec_driver_sql(
        f"CREATE TABLE requests{suffix} (LIKE requests INCLUDING DEFAULTS INCLUDING IDENTITY)"
    )
    conn.exec_driver_sql(
        f"CREATE TABLE responses{suffix} (LIKE responses INCLUDING DEFAULTS INCLUDING IDENTITY)"
    )
    conn.exec_driver_sql(f"ALTER TABLE responses{suffix} DROP COLUMN request_created_at")
    conn.exec_driver_sql(
        f"INSERT INTO requests{suffix} ({REQUEST_COLUMNS}) SELECT {REQUEST_COLUMNS} FROM requests"
    )
    conn.exec_driver_sql(
        f"INSERT INTO responses{suffix} ({RESPONSE_COLUMNS})"
        f" SELECT {RESPONSE_COLUMNS} FROM responses"
    )
    positions = {table: _sequence_position(conn, table) for table in ("requests", "responses")}
    for table in ("requests", "responses"):
        _copy_grants(conn, table, f"{table}{suffix}")
        _copy_grants(conn, f"{table}_id_seq", f"{table}{suffix}_id_seq")
    conn.exec_driver_sql("DROP TABLE responses, requests")  # partitions go with them
    for statement in (
        f"ALTER TABLE requests{suffix} ADD CONSTRAINT pk_requests PRIMARY KEY (id)",
        f"ALTER TABLE requests{suffix} ADD CONSTRAINT uq_requests_request_id UNIQUE (request_id)",
        f"CREATE INDEX ix_requests_model ON requests{suffix} (model)",
        f"CREATE INDEX ix_requests_created_at ON requests{suffix} (created_at)",
        f"ALTER TABLE responses{suffix} ADD CONSTRAINT pk_responses PRIMARY KEY (id)",
        f"CREATE INDEX ix_responses_request_id_fk ON responses{suffix} (request_id_fk)",
        f"ALTER TABLE responses{suffix} ADD CONSTRAINT fk_responses_request_id_fk_requests"
        f" FOREIGN KEY (request_id_fk) REFERENCES requests{suffix} (id) ON DELETE CASCADE",
    ):
        conn.exec_driver_sql(statement)
    for table in ("requests", "responses"):
        conn.exec_driver_sql(f"ALTER TABLE {table}{suffix} RENAME TO {table}")
        conn.exec_driver_sql(f"ALTER SEQUENCE {table}{suffix}_id_seq RENAME TO {table}_id_seq")
    for table, position in positions.items():
        _continue_identity(conn, table, position)
