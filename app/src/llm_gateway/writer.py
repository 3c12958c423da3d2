"""Background exchange writer: the request path only enqueues; batches commit off-path.

One writer per worker process. An asyncio queue (bounded) feeds a task that gathers a
batch (by size or after a short timer) and commits it in a dedicated thread, because the
psycopg2 driver blocks. When the database fails or the queue is full, exchanges go to
the on-disk spool and are replayed, in order and idempotently, once the database answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import statistics
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from llm_gateway import metrics
from llm_gateway.config import WriterSettings
from llm_gateway.spool import Spool

log = logging.getLogger(__name__)

Exchange = dict[str, Any]

# One statement per batch: the whole batch travels as one JSON array parameter that
# PostgreSQL unpacks with jsonb_to_recordset, so the client does no per-row parameter
# work (SQLAlchemy's executemany spent 26-31 ms of CPU per 500 exchanges; this ~2 ms).
# RETURNING tells the response insert which requests are new; a replayed duplicate
# returns nothing, so its response row is skipped too. Both rows are written by the same
# statement, so they commit together even in autocommit: every write is idempotent on
# request_id and never leaves a request without its response.
_INSERT_BATCH = text(
    """
WITH data AS (
    SELECT * FROM jsonb_to_recordset(CAST(:batch AS jsonb)) AS x(
        request_id text, route text, method text, url text, headers jsonb, body jsonb,
        model text, status_code integer, key_alias text, "user" text, started_at float8,
        response_body jsonb, latency_ms float8, prompt_tokens integer,
        completion_tokens integer, tokens_used integer, cost float8)
), ins AS (
    INSERT INTO requests (request_id, route, method, url, headers, body, model,
                          status_code, key_alias, "user", created_at)
    SELECT request_id, route, method, url, headers, body, model,
           status_code, key_alias, "user", to_timestamp(started_at)
    FROM data
    ON CONFLICT (request_id) DO NOTHING
    RETURNING id, request_id
)
INSERT INTO responses (request_id_fk, response_body, status_code, latency_ms, prompt_tokens,
                       completion_tokens, tokens_used, cost, created_at)
SELECT ins.id, d.response_body, d.status_code, round(d.latency_ms::numeric, 2),
       d.prompt_tokens, d.completion_tokens, d.tokens_used, d.cost,
       to_timestamp(d.started_at) + d.latency_ms * interval '1 millisecond'
FROM data AS d JOIN ins USING (request_id)
"""
)


def _unique(exchanges: Sequence[Exchange]) -> Sequence[Exchange]:
    """The first of each request_id (a spool replayed after a crash may repeat lines; two
    copies in one statement would give one request two responses)."""
    if len({ex["request_id"] for ex in exchanges}) == len(exchanges):
        return exchanges
    seen: set[str] = set()
    unique = []
    for ex in exchanges:
        if ex["request_id"] not in seen:
            seen.add(ex["request_id"])
            unique.append(ex)
    return unique


def insert_exchanges(conn: Connection, exchanges: Sequence[Exchange]) -> int:
    """Insert request+response rows for ``exchanges`` in one statement (atomic, also in
    autocommit). Returns how many were new."""
    if not exchanges:
        return 0
    # A JSON null (e.g. the body of unparseable input) lands as SQL NULL; reads give None.
    payload = orjson.dumps(_unique(exchanges), option=orjson.OPT_NON_STR_KEYS).decode()
    return conn.execute(_INSERT_BATCH, {"batch": payload}).rowcount


def insert_one_exchange(conn: Connection, ex: Exchange) -> int:
    return insert_exchanges(conn, [ex])


def is_outage(exc: BaseException) -> bool:
    """Connectivity trouble (retry later) as opposed to data the database refuses."""
    return isinstance(exc, OperationalError | InterfaceError | PoolTimeoutError) or bool(
        getattr(exc, "connection_invalidated", False)
    )


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
    def __init__(self, engine: Engine | None, spool: Spool, settings: WriterSettings):
        self.engine = engine
        self.spool = spool
        self.settings = settings
        self.queue: asyncio.Queue[Exchange] = asyncio.Queue(maxsize=settings.queue_size)
        # One thread: batches commit in order and never compete with each other.
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="exchange-writer")
        self._task: asyncio.Task | None = None
        self._stopping = False
        self.db_ok = engine is not None
        # Every write is one statement, so autocommit is atomic and saves BEGIN/COMMIT.
        self._autocommit = engine and engine.execution_options(isolation_level="AUTOCOMMIT")
        # The writer thread keeps one connection checked out: no pool checkout (and no
        # pre-ping round trip) per commit. Only that thread touches it.
        self._conn: Connection | None = None
        self._conn_since = 0.0
        self._recycle_s = getattr(engine.pool, "_recycle", -1) if engine is not None else -1
        # log_mode sync: exchanges waiting for the next group commit, and whether one runs.
        self._sync_pending: list[tuple[Exchange, asyncio.Future]] = []
        self._sync_busy = False
        self._next_retry = 0.0
        self.stats = {
            "exchanges_written": 0,
            "batches": 0,
            "failures": 0,
            "spooled": 0,
            "replayed": 0,
            "queue_full": 0,
            "rejected": 0,
            "lost": 0,
        }
        self._commit_ms: deque[float] = deque(maxlen=2000)

    # ---- request path -------------------------------------------------------------
    def submit(self, exchange: Exchange) -> None:
        """Hand an exchange over; microseconds unless the queue is full (then it spools)."""
        try:
            self.queue.put_nowait(exchange)
        except asyncio.QueueFull:
            self.stats["queue_full"] += 1
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
        try:
            if not self._db_usable() or not self._commit(exchanges, "sync"):
                self._spool(exchanges)
        except Exception:
            log.exception("writer: unexpected error; spooling the sync group")
            self._spool(exchanges)

    # ---- lifecycle ------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="exchange-writer")

    async def stop(self, timeout: float = 25.0) -> None:
        """Drain the queue (SIGTERM / lifespan shutdown). What cannot be committed stays
        in the spool and is replayed by the next process."""
        self._stopping = True
        if self._task is not None:
            try:
                await asyncio.wait_for(self._task, timeout)
            except TimeoutError:
                self._task.cancel()
                remaining = []
                while not self.queue.empty():
                    remaining.append(self.queue.get_nowait())
                self._spool(remaining)
        self._executor.submit(self._close_conn)
        self._executor.shutdown(wait=True)

    # ---- writer task ----------------------------------------------------------------
    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        flush_s = self.settings.flush_interval_ms / 1000
        while True:
            batch = await self._gather(flush_s)
            if batch:
                await loop.run_in_executor(self._executor, self._write_batch, batch)
            elif self.spool.has_backlog():
                await loop.run_in_executor(self._executor, self._maybe_replay)
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
        limit = self.settings.batch_size
        if self.queue.qsize() < limit - 1 and not self._stopping:
            await asyncio.sleep(flush_s)
        batch = [first]
        while len(batch) < limit and not self.queue.empty():
            batch.append(self.queue.get_nowait())
        return batch

    # ---- writer thread --------------------------------------------------------------
    def _write_batch(self, batch: list[Exchange]) -> None:
        try:
            # While anything is spooled, new exchanges queue up behind it to keep the order.
            if self.spool.has_backlog() or not self._db_usable():
                self._spool(batch)
                self._maybe_replay()
            elif not self._commit(batch, "live"):
                self._spool(batch)
        except Exception:
            # A bug must not cost exchanges: keep them on disk (re-inserts are no-ops).
            log.exception("writer: unexpected error; spooling the batch")
            self._spool(batch)

    def _commit(self, batch: list[Exchange], path: str) -> bool:
        """Commit ``batch``; False when the database is unreachable (caller spools it)."""
        started = time.perf_counter()
        written = len(batch)
        try:
            self._execute(batch)
        except (SQLAlchemyError, ValueError, TypeError) as exc:
            if is_outage(exc):
                self._db_failed(exc)
                return False
            # Data the database refuses must not block the exchanges around it.
            rejected = self._commit_one_by_one(batch)
            if rejected is None:
                return False
            written -= rejected
        elapsed = time.perf_counter() - started
        self._commit_ms.append(elapsed * 1000)
        metrics.BATCH_COMMIT.observe(elapsed)
        metrics.WRITER_EXCHANGES.labels(path).inc(written)
        self.stats["batches"] += 1
        self.stats["exchanges_written"] += written
        if not self.db_ok:
            log.warning("writer: database reachable again")
        self.db_ok = True
        return True

    def _commit_one_by_one(self, batch: list[Exchange]) -> int | None:
        """Insert exchanges singly; returns how many were rejected, None on an outage."""
        rejected = 0
        for exchange in batch:
            error: Exception | None = None
            for candidate in (exchange, without_nul(exchange)):
                try:
                    self._execute([candidate])
                    break
                except (SQLAlchemyError, ValueError, TypeError) as exc:
                    if is_outage(exc):
                        self._db_failed(exc)
                        return None  # the whole batch is spooled; re-inserts are no-ops
                    error = exc
            else:
                self._reject(exchange, error)
                rejected += 1
        return rejected

    def _reject(self, exchange: Exchange, error: Exception | None) -> None:
        """Keep what the database refuses even after cleaning, for an operator to inspect."""
        self.stats["rejected"] += 1
        log.error(
            "writer: database refused exchange %s: %s",
            exchange.get("request_id"),
            error.__class__.__name__,
        )
        path = self.spool.directory / f"rejected-{self.spool.pid}.jsonl"
        line = orjson.dumps({"error": str(error)[:500], "exchange": exchange}) + b"\n"
        with path.open("ab") as handle:
            handle.write(line)

    def _execute(self, exchanges: list[Exchange]) -> None:
        """Writer thread: insert over the kept connection. A kept connection that turns out
        dead (e.g. the server restarted while we idled) is replaced once before this
        counts as an outage, since the pool's pre-ping no longer runs per commit."""
        fresh = self._conn is None or (
            self._recycle_s >= 0 and time.monotonic() - self._conn_since > self._recycle_s
        )
        if fresh:
            self._close_conn()
            self._conn = self._autocommit.connect()
            self._conn_since = time.monotonic()
        try:
            insert_exchanges(self._conn, exchanges)
        except SQLAlchemyError as exc:
            if not is_outage(exc):
                raise
            self._close_conn()
            if fresh:
                raise
            self._conn = self._autocommit.connect()
            self._conn_since = time.monotonic()
            insert_exchanges(self._conn, exchanges)

    def _close_conn(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            # A dead connection may fail to close; it is gone anyway.
            with contextlib.suppress(Exception):
                conn.close()

    def _db_usable(self) -> bool:
        return self.engine is not None and (self.db_ok or time.monotonic() >= self._next_retry)

    def _db_failed(self, exc: Exception) -> None:
        self.stats["failures"] += 1
        metrics.WRITER_FAILURES.inc()
        if self.db_ok:
            log.error("writer: database write failed, spooling: %s", exc.__class__.__name__)
        self.db_ok = False
        self._next_retry = time.monotonic() + self.settings.retry_interval_s

    def _spool(self, batch: list[Exchange]) -> None:
        try:
            written = self.spool.append(batch)
        except OSError as exc:
            # Disk full or unwritable: nothing else can keep these; say so loudly.
            self.stats["lost"] += len(batch)
            log.error("writer: cannot spool %d exchanges: %s", len(batch), exc)
            return
        self.stats["spooled"] += written
        metrics.SPOOLED.inc(written)
        metrics.SPOOL_BACKLOG.set(self.spool.backlog)

    def _maybe_replay(self, force: bool = False) -> None:
        if self.engine is None or not self.spool.has_backlog():
            return
        if not (force or self._db_usable()):
            return

        def write(chunk: list[Exchange]) -> None:
            if not self._commit(chunk, "replay"):
                raise _ReplayStopped
            self.stats["replayed"] += len(chunk)

        try:
            count = self.spool.replay(write)
        except _ReplayStopped:
            count = 0
        except OSError as exc:
            log.error("writer: spool replay failed: %s", exc)
            count = 0
        if count:
            log.warning("writer: replayed %d spooled exchanges", count)
        metrics.SPOOL_BACKLOG.set(self.spool.backlog)

    # ---- reporting ------------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        commits = sorted(self._commit_ms)

        def pct(q: float) -> float | None:
            if not commits:
                return None
            return round(commits[min(len(commits) - 1, int(q * len(commits)))], 3)

        return {
            **self.stats,
            "queue_depth": self.queue.qsize(),
            "queue_capacity": self.settings.queue_size,
            "spool_backlog": self.spool.backlog,
            "db_ok": self.db_ok,
            "batch_commit_ms_p50": round(statistics.median(commits), 3) if commits else None,
            "batch_commit_ms_p99": pct(0.99),
        }


class _ReplayStopped(Exception):
    """The database failed during replay; the remaining spool stays for the next try."""
