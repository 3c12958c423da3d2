"""Background exchange writer: the request path only enqueues; batches commit off-path.

One writer per worker process. An asyncio queue (bounded) feeds a task that gathers a
batch (by size or after a short timer) and commits it in a dedicated thread, because the
psycopg2 driver blocks. When the database fails or the queue is full, exchanges go to
the on-disk spool and are replayed, in order and idempotently, once the database answers.

No single record can stop the writer: each is serialized on its own, and one that cannot
be serialized or that the database refuses is logged in a reduced form (its row keeps
status, tokens, cost and caller; payloads are replaced by a marker) with the original in
the dead-letter file. The writer task is supervised and restarted if it ever ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from llm_gateway import metrics
from llm_gateway.config import DatabaseSettings, WriterSettings
from llm_gateway.events import emit_event
from llm_gateway.loggable import reduced_record
from llm_gateway.spool import Spool

log = logging.getLogger(__name__)

Exchange = dict[str, Any]
# An exchange serialized for the batch statement or the spool, with its request_id.
Encoded = tuple[str, bytes]

# Seconds without progress, while exchanges wait, after which the writer counts as stalled.
STALL_AFTER_S = 10.0
# Pause before a crashed writer task is started again (a crash loop must not spin).
RESTART_DELAY_S = 1.0
# How often the writer looks for spool files of workers that exited after it started.
ORPHAN_CHECK_S = 5.0

# One statement per batch: the whole batch travels as one JSON array parameter that
# PostgreSQL unpacks with jsonb_to_recordset, so the client does no per-row parameter
# work (SQLAlchemy's executemany spent 26-31 ms of CPU per 500 exchanges; this ~2 ms).
# RETURNING tells the response insert which requests are new; a replayed duplicate
# returns nothing, so its response row is skipped too. Both rows are written by the same
# statement, so they commit together even in autocommit: every write is idempotent on
# request_id and never leaves a request without its response.
#
# created_at is the exchange's own start time (started_at travels in the spool), so a
# replay gives a request the same (request_id, created_at): the partitioned schema's
# unique key (revision 0003), and the day partition its response joins it in.
_INSERT_TEMPLATE = """
WITH data AS (
    SELECT * FROM jsonb_to_recordset(CAST(:batch AS jsonb)) AS x(
        request_id text, route text, method text, url text, headers jsonb, body jsonb,
        model text, status_code integer, key_alias text, "user" text, started_at float8,
        response_body jsonb, latency_ms float8, prompt_tokens integer,
        completion_tokens integer, tokens_used integer, cost float8, deployment text,
        attempts smallint)
), ins AS (
    INSERT INTO requests (request_id, route, method, url, headers, body, model,
                          status_code, key_alias, "user", created_at)
    SELECT request_id, route, method, url, headers, body, model,
           status_code, key_alias, "user", to_timestamp(started_at)
    FROM data
    ON CONFLICT ({conflict}) DO NOTHING
    RETURNING id, request_id, created_at
)
INSERT INTO responses (request_id_fk, {response_key}response_body, status_code, latency_ms,
                       prompt_tokens, completion_tokens, tokens_used, cost, created_at,
                       deployment, attempts)
SELECT ins.id, {response_key_value}d.response_body, d.status_code,
       round(d.latency_ms::numeric, 2), d.prompt_tokens, d.completion_tokens, d.tokens_used,
       d.cost, to_timestamp(d.started_at) + d.latency_ms * interval '1 millisecond',
       d.deployment, d.attempts
FROM data AS d JOIN ins USING (request_id)
"""
_INSERT_BATCH = text(
    _INSERT_TEMPLATE.format(
        conflict="request_id, created_at",
        response_key="request_created_at, ",
        response_key_value="ins.created_at, ",
    )
)
# Revision 0002's unpartitioned tables: the same statement, for the code that is deployed
# before `llm-gateway migrate` runs 0003 (and keeps writing while it runs).
_INSERT_BATCH_UNPARTITIONED = text(
    _INSERT_TEMPLATE.format(conflict="request_id", response_key="", response_key_value="")
)
# Up to this many partitions of requests the FK checks use a generic plan, beyond it the
# plan cache's default, which re-plans per row at a cost that does not grow with the
# count. A generic plan skips the planning but opens every partition for every row.
# `make bench-db BENCH_DB_ARGS='--parts e'` prints both, per 500-exchange batch (on
# PostgreSQL 15: generic 53 / 70 / 83 / 158 ms at 6 / 37 / 97 / 367 partitions, default
# 75-84 ms throughout; the same statements on 17.12 gave 46 / 58 / 71 / 195 against
# 68-75). The crossover is near 90; 64 keeps a margin.
GENERIC_PLAN_MAX_PARTITIONS = 64
_PARTITION_COUNT = text(
    "SELECT count(*) FROM pg_inherits WHERE inhparent = to_regclass('requests')"
)
_IS_PARTITIONED = text("SELECT relkind = 'p' FROM pg_class WHERE oid = to_regclass('requests')")
# Where a connection remembers which schema it writes to (Connection.info lives as long as
# the DBAPI connection).
_SCHEMA_KEY = "llm_gateway_partitioned"


def encode(exchange: Exchange) -> bytes:
    """One exchange as JSON. Raises TypeError (orjson.JSONEncodeError) when it cannot be."""
    return orjson.dumps(exchange, option=orjson.OPT_NON_STR_KEYS)


def _unique(encoded: Sequence[Encoded]) -> Sequence[Encoded]:
    """The first of each request_id (a spool replayed after a crash may repeat lines; two
    copies in one statement would give one request two responses)."""
    if len({request_id for request_id, _ in encoded}) == len(encoded):
        return encoded
    seen: set[str] = set()
    unique = []
    for item in encoded:
        if item[0] not in seen:
            seen.add(item[0])
            unique.append(item)
    return unique


def insert_encoded(conn: Connection, encoded: Sequence[Encoded]) -> int:
    """Insert request+response rows in one statement (atomic, also in autocommit).
    Records are serialized one by one, so the array adds no nesting to any of them.
    Returns how many were new."""
    if not encoded:
        return 0
    # A JSON null (e.g. the body of unparseable input) lands as SQL NULL; reads give None.
    payload = b"[" + b",".join(line for _, line in _unique(encoded)) + b"]"
    params = {"batch": payload.decode()}
    partitioned = conn.info.get(_SCHEMA_KEY)
    if partitioned is None:
        partitioned = conn.info[_SCHEMA_KEY] = bool(conn.scalar(_IS_PARTITIONED))
    try:
        return conn.execute(_statement(partitioned), params).rowcount
    except SQLAlchemyError as exc:
        # Revision 0003 may have replaced the tables under a running writer (its statement
        # waited on the migration's lock, then met the new table): ask again and, if the
        # schema did change, write the batch the new way. Otherwise the refusal stands.
        if is_outage(exc) or not _autocommit(conn):
            raise
        now = bool(conn.scalar(_IS_PARTITIONED))
        if now == partitioned:
            raise
        conn.info[_SCHEMA_KEY] = now
        log.warning("writer: tables are %spartitioned now", "" if now else "no longer ")
        return conn.execute(_statement(now), params).rowcount


def _statement(partitioned: bool):
    return _INSERT_BATCH if partitioned else _INSERT_BATCH_UNPARTITIONED


def _autocommit(conn: Connection) -> bool:
    """A failed statement leaves an open transaction unusable, an autocommit one not."""
    return bool(getattr(conn.connection.dbapi_connection, "autocommit", False))


def insert_exchanges(conn: Connection, exchanges: Sequence[Exchange]) -> int:
    return insert_encoded(conn, [(ex["request_id"], encode(ex)) for ex in exchanges])


def is_outage(exc: BaseException) -> bool:
    """Connectivity trouble (retry later) as opposed to data the database refuses."""
    return isinstance(exc, OperationalError | InterfaceError | PoolTimeoutError) or bool(
        getattr(exc, "connection_invalidated", False)
    )


# How orjson writes U+0000. A string holding the six characters \u0000 is written
# "\\u0000", which contains it too: a false alarm costs one needless without_nul pass.
_JSON_NUL = b"\\u0000"


def without_nul(value: Any) -> Any:
    """PostgreSQL text and JSONB cannot hold U+0000; callers may send it anyway."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {without_nul(k): without_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [without_nul(v) for v in value]
    return value


class ExchangeWriter:
    """What it did is counted in ``metrics`` only (``metrics.writer_summary``)."""

    def __init__(
        self,
        engine: Engine | None,
        spool: Spool,
        settings: WriterSettings,
        database: DatabaseSettings,
    ):
        self.engine = engine
        self.spool = spool
        self.settings = settings
        self.queue: asyncio.Queue[Exchange] = asyncio.Queue(maxsize=settings.queue_size)
        # One thread: batches commit in order and never compete with each other.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="exchange-writer")
        self._task: asyncio.Task | None = None
        self._watchdog: asyncio.Task | None = None
        # The batch taken from the queue and not yet committed or spooled: if the writer
        # task ever dies, its supervisor spools it.
        self._in_flight: list[Exchange] = []
        self._stopping = False
        self.db_ok = engine is not None
        # Every write is one statement, so autocommit is atomic and saves BEGIN/COMMIT.
        self._autocommit = engine and engine.execution_options(isolation_level="AUTOCOMMIT")
        # The writer thread keeps one connection checked out: no pool checkout (and no
        # pre-ping round trip) per commit. Only that thread touches it.
        self._conn: Connection | None = None
        self._conn_since = 0.0
        # Which plans the FK checks on that connection use (None: not decided yet).
        self._generic_fk_plans: bool | None = None
        # Kept that long at most, like the pool's connections (-1: for good).
        self._recycle_s = database.pool_recycle
        # log_mode sync: exchanges waiting for the next group commit, and whether one runs.
        self._sync_pending: list[tuple[Exchange, asyncio.Future]] = []
        self._sync_busy = False
        self._next_retry = 0.0
        self._next_orphan_check = time.monotonic() + ORPHAN_CHECK_S
        # When the writer last finished a batch (committed or spooled), for stall checks.
        self._last_progress = time.monotonic()

    # ---- request path -------------------------------------------------------------
    def submit(self, exchange: Exchange) -> None:
        """Hand an exchange over; microseconds unless the queue is full (then it spools)."""
        try:
            self.queue.put_nowait(exchange)
        except asyncio.QueueFull:
            metrics.WRITER_QUEUE_FULL.inc()
            self._spool([exchange])

    async def commit_now(self, exchange: Exchange) -> None:
        """``log_mode: sync``: the row is committed (or fsync'd to the spool) on return.

        Group commit: the first waiting exchange starts a commit on the writer thread at
        once; exchanges arriving meanwhile wait for it and then go together in the next
        one (one statement, one WAL flush per group, not per request).
        """
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        self._sync_pending.append((exchange, done))
        if not self._sync_busy:
            self._start_sync_group(loop)
        # A client that leaves cancels this wait, not the commit.
        await asyncio.shield(done)

    def _start_sync_group(self, loop: asyncio.AbstractEventLoop) -> None:
        group, self._sync_pending = self._sync_pending, []
        exchanges = [exchange for exchange, _ in group]
        self._sync_busy = True
        try:
            running = loop.run_in_executor(self._executor, self._commit_group, exchanges)
        except RuntimeError:  # executor already shut down (late request during stop)
            self._spool(exchanges)
            self._sync_finished(loop, group)
            return
        running.add_done_callback(lambda _: self._sync_finished(loop, group))

    def _sync_finished(self, loop: asyncio.AbstractEventLoop, group: list) -> None:
        for _, done in group:
            if not done.done():
                done.set_result(None)
        self._sync_busy = False
        if self._sync_pending:
            self._start_sync_group(loop)

    def _commit_group(self, exchanges: list[Exchange]) -> None:
        """Writer thread: commit a sync group, or fsync it to the spool. Never raises."""
        self._write_batch(exchanges, path="sync")

    # ---- lifecycle ------------------------------------------------------------------
    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._supervise(), name="exchange-writer")
        self._watchdog = loop.create_task(self._watch(), name="exchange-writer-watchdog")

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def stalled(self) -> bool:
        """Exchanges wait and nothing was committed or spooled for STALL_AFTER_S."""
        waiting = not self.queue.empty() or bool(self._in_flight)
        return waiting and time.monotonic() - self._last_progress > STALL_AFTER_S

    async def stop(self, timeout: float = 25.0) -> None:
        """Drain the queue (SIGTERM / lifespan shutdown). What cannot be committed stays
        in the spool and is replayed by the next process; nothing queued is dropped, also
        when the writer task failed or the timeout ran out."""
        self._stopping = True
        if self._watchdog is not None:
            self._watchdog.cancel()
        stuck = False
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout)
            except TimeoutError:
                log.error("writer: drain did not finish in %.0f s; spooling the rest", timeout)
                stuck = True
            except Exception:
                log.exception("writer: failed while draining; spooling the rest")
        remaining = self._in_flight
        self._in_flight = []
        while not self.queue.empty():
            remaining.append(self.queue.get_nowait())
        if stuck:
            # The writer thread may hang in a database call (a server that stopped
            # answering, a lock): spooling through it would wait for it until the worker
            # is killed, with these exchanges in memory. The spool takes them from here.
            # Re-spooling a batch the thread may still commit is harmless: replays are
            # idempotent on request_id.
            self._spool(remaining)
            self._executor.shutdown(wait=False)
            return
        if remaining:
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._executor, self._spool, remaining)
        self._executor.submit(self._close_conn)
        self._executor.shutdown(wait=True)

    # ---- writer task ----------------------------------------------------------------
    async def _supervise(self) -> None:
        """Run the writer; should it ever end with an error, spool what it held, say so
        loudly (journal line, metric) and start it again."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                await self._run()
                return
            except Exception as exc:
                metrics.WRITER_RESTARTS.inc()
                log.exception("writer: task failed; restarting it")
                held, self._in_flight = self._in_flight, []
                emit_event(
                    "writer_restarted",
                    error=exc.__class__.__name__,
                    reason=str(exc)[:300],
                    held=len(held),
                )
                if held:
                    await loop.run_in_executor(self._executor, self._spool, held)
                # Also when stopping: the restarted task drains the queue and replays what
                # was just spooled; stop()'s timeout bounds a writer that keeps failing.
                await asyncio.sleep(RESTART_DELAY_S)

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        flush_s = self.settings.flush_interval_ms / 1000
        while True:
            self._in_flight = await self._gather(flush_s)
            if self._in_flight:
                await loop.run_in_executor(self._executor, self._write_batch, self._in_flight)
                self._in_flight = []
            elif self.spool.has_backlog():
                await loop.run_in_executor(self._executor, self._maybe_replay)
            if time.monotonic() >= self._next_orphan_check:
                self._next_orphan_check = time.monotonic() + ORPHAN_CHECK_S
                await loop.run_in_executor(self._executor, self._adopt_orphans)
            metrics.WRITER_QUEUE.set(self.queue.qsize())
            if self._stopping and self.queue.empty():
                await loop.run_in_executor(self._executor, self._maybe_replay, True)
                return

    async def _gather(self, flush_s: float) -> list[Exchange]:
        """Wait for the first exchange, give others the flush interval to join unless a
        full batch is already waiting, then take up to batch_size. One timer per batch,
        not one per exchange: this runs on the event loop that serves requests."""
        try:
            first = await asyncio.wait_for(self.queue.get(), self.settings.retry_interval_s)
        except TimeoutError:
            return []
        # The writer was idle until now: a quiet spell is no stall. Without this, work
        # arriving after STALL_AFTER_S without traffic read as "not draining" (a 503 from
        # /api/health) until its batch committed.
        self._last_progress = time.monotonic()
        limit = self.settings.batch_size
        if self.queue.qsize() < limit - 1 and not self._stopping:
            await asyncio.sleep(flush_s)
        batch = [first]
        while len(batch) < limit and not self.queue.empty():
            batch.append(self.queue.get_nowait())
        return batch

    async def _watch(self) -> None:
        """Keep the gauges current, also when the writer itself cannot."""
        while True:
            self.publish_state()
            await asyncio.sleep(1.0)

    def publish_state(self) -> None:
        """This worker's state to the gauges (the watchdog does it every second)."""
        metrics.WRITER_UP.set(1 if self.running else 0)
        metrics.WRITER_STALLED.set(1 if self.stalled else 0)
        metrics.WRITER_QUEUE.set(self.queue.qsize())
        metrics.SPOOL_BACKLOG.set(self.spool.backlog)
        metrics.WRITER_DB_OK.set(1 if self.db_ok else 0)

    # ---- writer thread --------------------------------------------------------------
    def _write_batch(self, batch: list[Exchange], path: str = "live") -> None:
        """Commit ``batch`` or spool it. Never raises."""
        try:
            encoded = [self._encode(exchange) for exchange in batch]
            # While anything is spooled, new exchanges queue up behind it to keep the order.
            if path == "live" and self.spool.has_backlog():
                self._spool_encoded(encoded)
                self._maybe_replay()
            elif not self._db_usable() or not self._commit(batch, encoded, path):
                self._spool_encoded(encoded)
        except Exception:
            # A bug must not cost exchanges: keep them on disk (re-inserts are no-ops).
            log.exception("writer: unexpected error; spooling the batch")
            self._spool(batch)
        self._last_progress = time.monotonic()

    def _encode(self, exchange: Exchange) -> Encoded:
        """The exchange as JSON; one that cannot be serialized is quarantined and its
        reduced form (which always can be) takes its place."""
        try:
            line = encode(exchange)
            if _JSON_NUL in line:
                # JSONB refuses U+0000: replaced here, the batch goes in whole. Left to the
                # database, one such exchange sent its 500-exchange batch in one by one
                # (20x the time), so a client sending it steadily throttled the log.
                line = encode(without_nul(exchange))
            return exchange["request_id"], line
        except (TypeError, ValueError) as exc:
            reduced = self._quarantine(exchange, f"cannot be serialized: {exc}")
            return reduced["request_id"], encode(reduced)

    def _commit(self, batch: list[Exchange], encoded: list[Encoded], path: str) -> bool:
        """Commit ``batch``; False when the database is unreachable (caller spools it)."""
        started = time.perf_counter()
        written = len(encoded)
        try:
            self._execute(encoded)
        except (SQLAlchemyError, ValueError, TypeError) as exc:
            if is_outage(exc):
                self._db_failed(exc)
                return False
            # Data the database refuses must not block the exchanges around it.
            lost = self._commit_one_by_one(batch, encoded)
            if lost is None:
                return False
            written -= lost
        metrics.BATCH_COMMIT.observe(time.perf_counter() - started)
        metrics.WRITER_EXCHANGES.labels(path).inc(written)
        # Each commit is progress, also the chunks of a long spool replay.
        self._last_progress = time.monotonic()
        if not self.db_ok:
            log.warning("writer: database reachable again")
        self.db_ok = True
        return True

    def _commit_one_by_one(self, batch: list[Exchange], encoded: list[Encoded]) -> int | None:
        """Insert exchanges singly: as they are, then with U+0000 replaced, then in the
        reduced form. Returns how many could not be inserted at all (lost), None on an
        outage (the caller spools the whole batch; re-inserts are no-ops)."""
        lost = 0
        for exchange, item in zip(batch, encoded, strict=True):
            error: Exception | None = None
            for candidate in self._fallbacks(exchange, item):
                try:
                    self._execute([candidate()])
                    break
                except (SQLAlchemyError, ValueError, TypeError) as exc:
                    if is_outage(exc):
                        self._db_failed(exc)
                        return None
                    error = exc
            else:
                log.error("writer: database refused even the reduced form of %s", item[0])
                self._dead_letter(exchange, f"refused by the database: {error}")
                self._count_lost(1)
                lost += 1
        return lost

    def _fallbacks(self, exchange: Exchange, item: Encoded):
        yield lambda: item

        def cleaned() -> Encoded:
            return item[0], encode(without_nul(exchange))

        yield cleaned

        def reduced() -> Encoded:
            error = "refused by the database (payload replaced)"
            form = self._quarantine(exchange, error)
            return form["request_id"], encode(form)

        yield reduced

    def _quarantine(self, exchange: Any, reason: str) -> dict[str, Any]:
        """Keep the original as a dead letter and return its reduced form for the log."""
        self._count_quarantined(1)
        request_id = exchange.get("request_id") if isinstance(exchange, dict) else None
        log.error("writer: exchange %s quarantined: %s", request_id, reason)
        self._dead_letter(exchange, reason)
        return reduced_record(exchange, reason)

    def _dead_letter(self, exchange: Any, reason: str, raw: bytes | None = None) -> None:
        """Write what can be kept of ``exchange`` to the dead-letter file, with the reason.
        Falls back to the reduced form and, failing that, to the raw bytes as text."""
        entry: dict[str, Any] = {"reason": reason[:1000], "at": time.time()}
        if raw is not None:
            candidates = [lambda: {**entry, "raw": raw.decode("utf-8", "replace")}]
        else:
            # The reduced form is built only when the original cannot be written.
            candidates = [
                lambda: {**entry, "exchange": exchange},
                lambda: {**entry, "reduced": reduced_record(exchange, reason)},
            ]
        for candidate in candidates:
            try:
                line = encode(candidate())
            except (TypeError, ValueError):
                continue
            try:
                self.spool.add_dead_letter(line)
            except OSError as exc:
                log.error("writer: cannot write a dead letter: %s", exc)
            return

    def _execute(self, encoded: list[Encoded]) -> None:
        """Writer thread: insert over the kept connection. A kept connection that turns out
        dead (e.g. the server restarted while we idled) is replaced once before this
        counts as an outage, since the pool's pre-ping no longer runs per commit."""
        fresh = self._conn is None or (
            self._recycle_s >= 0 and time.monotonic() - self._conn_since > self._recycle_s
        )
        if fresh:
            self._close_conn()
            self._connect()
        try:
            insert_encoded(self._conn, encoded)
        except SQLAlchemyError as exc:
            if not is_outage(exc):
                raise
            self._close_conn()
            if fresh:
                raise
            self._connect()
            insert_encoded(self._conn, encoded)

    def _connect(self) -> None:
        conn = self._autocommit.connect()
        try:
            self._choose_fk_check_plans(conn)
        except SQLAlchemyError:
            with contextlib.suppress(Exception):
                conn.close()
            raise
        self._conn = conn
        self._conn_since = time.monotonic()

    def _choose_fk_check_plans(self, conn: Connection) -> None:
        """Each response row's FK check is a cached SPI query on the partitioned requests.
        Left to the plan cache's default it is planned afresh for every row; a generic plan
        skips that but costs time for every partition on every row. Generic wins while
        there are few partitions, the default beyond (see GENERIC_PLAN_MAX_PARTITIONS).
        Asked again on every reconnect (pool_recycle), so a log that keeps every day
        moves over as it grows. The writer's own statement is never prepared, so only
        those checks change (harmless to the pool's other users should the connection go
        back to it)."""
        partitions = conn.scalar(_PARTITION_COUNT) or 0
        generic = partitions <= GENERIC_PLAN_MAX_PARTITIONS
        conn.exec_driver_sql(f"SET plan_cache_mode = {'force_generic_plan' if generic else 'auto'}")
        if generic != self._generic_fk_plans:
            self._generic_fk_plans = generic
            log.info(
                "writer: %d partitions of requests: FK checks use %s plans",
                partitions,
                "generic" if generic else "per-row",
            )

    def _close_conn(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            # A dead connection may fail to close; it is gone anyway.
            with contextlib.suppress(Exception):
                conn.close()

    def _db_usable(self) -> bool:
        return self.engine is not None and (self.db_ok or time.monotonic() >= self._next_retry)

    def _db_failed(self, exc: Exception) -> None:
        metrics.WRITER_FAILURES.inc()
        if self.db_ok:
            log.error("writer: database write failed, spooling: %s", exc.__class__.__name__)
        self.db_ok = False
        self._next_retry = time.monotonic() + self.settings.retry_interval_s

    def _count_quarantined(self, count: int) -> None:
        """Logged in the reduced form (payload replaced by a marker), original kept as a
        dead letter."""
        metrics.WRITER_QUARANTINED.inc(count)

    def _count_lost(self, count: int) -> None:
        """Answered, and neither in the database nor in the spool: never will be."""
        metrics.EXCHANGES_LOST.inc(count)

    def _spool(self, batch: list[Exchange]) -> None:
        self._spool_encoded([self._encode(exchange) for exchange in batch])

    def _spool_encoded(self, encoded: list[Encoded]) -> None:
        try:
            written = self.spool.append([line for _, line in encoded])
        except OSError as exc:
            # Disk full or unwritable: nothing else can keep these; say so loudly.
            self._count_lost(len(encoded))
            log.error("writer: cannot spool %d exchanges: %s", len(encoded), exc)
            return
        metrics.SPOOLED.inc(written)
        metrics.SPOOL_BACKLOG.set(self.spool.backlog)

    def _unreadable_line(self, raw: bytes, reason: str) -> None:
        """A spool line that is no exchange: keep its bytes; its exchange is lost."""
        self._count_quarantined(1)
        self._count_lost(1)
        self._dead_letter(None, f"unreadable spool line: {reason}", raw=raw)

    def _adopt_orphans(self) -> None:
        """Writer thread: take over the spool files of workers gone since this one started
        (their exchanges are then replayed like ours)."""
        try:
            adopted = self.spool.adopt_orphans()
        except OSError as exc:
            log.error("writer: cannot adopt spool files: %s", exc)
            return
        if adopted:
            log.warning("writer: adopted %d spooled exchanges of exited workers", adopted)
            metrics.SPOOL_BACKLOG.set(self.spool.backlog)

    def _maybe_replay(self, force: bool = False) -> None:
        if self.engine is None or not self.spool.has_backlog():
            return
        if not (force or self._db_usable()):
            return

        def write(chunk: list[Exchange]) -> None:
            try:
                encoded = [self._encode(exchange) for exchange in chunk]
                committed = self._commit(chunk, encoded, "replay")
            except Exception as exc:
                # Retrying would fail the same way forever: keep the chunk as dead letters.
                log.exception("writer: replay of %d spooled exchanges failed", len(chunk))
                for exchange in chunk:
                    self._dead_letter(exchange, f"replay failed: {exc!r}")
                self._count_quarantined(len(chunk))
                self._count_lost(len(chunk))
                return
            if not committed:
                raise _ReplayStopped

        try:
            count = self.spool.replay(write, self._unreadable_line)
        except _ReplayStopped:
            count = 0
        except OSError as exc:
            log.error("writer: spool replay failed: %s", exc)
            count = 0
        if count:
            log.warning("writer: replayed %d spooled exchanges", count)
        metrics.SPOOL_BACKLOG.set(self.spool.backlog)


class _ReplayStopped(Exception):
    """The database failed during replay; the remaining spool stays for the next try."""
