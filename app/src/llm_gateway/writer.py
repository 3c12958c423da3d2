"""Background exchange writer: the request path only enqueues; batches commit off-path.

One writer per worker process. An asyncio queue (bounded) feeds a task that gathers a
batch (by size or after a short timer) and commits it in a dedicated thread, because the
psycopg2 driver blocks. When the database fails or the queue is full, exchanges go to
the on-disk spool and are replayed, in order and idempotently, once the database answers.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, bindparam, insert, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.exc import InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from llm_gateway import metrics
from llm_gateway.config import WriterSettings
from llm_gateway.models import RequestRecord, ResponseRecord
from llm_gateway.spool import Spool

log = logging.getLogger(__name__)

Exchange = dict[str, Any]

_REQUESTS = RequestRecord.__table__
_RESPONSES = ResponseRecord.__table__
# RETURNING tells us which requests are new; a replayed duplicate returns nothing, so its
# response row is skipped too. That makes every write idempotent on request_id.
_INSERT_REQUESTS = (
    pg_insert(_REQUESTS)
    .on_conflict_do_nothing(index_elements=["request_id"])
    .returning(_REQUESTS.c.id, _REQUESTS.c.request_id)
)
_INSERT_RESPONSES = insert(_RESPONSES)


def _request_row(ex: Exchange) -> dict[str, Any]:
    return {
        "request_id": ex["request_id"],
        "route": ex["route"],
        "method": ex["method"],
        "url": ex["url"],
        "headers": ex["headers"],
        "body": ex["body"],
        "model": ex["model"],
        "status_code": ex["status_code"],
        "key_alias": ex["key_alias"],
        "user": ex["user"],
        "created_at": datetime.fromtimestamp(ex["started_at"], UTC),
    }


def _response_row(ex: Exchange) -> dict[str, Any]:
    """Response columns except request_id_fk."""
    return {
        "response_body": ex["response_body"],
        "status_code": ex["status_code"],
        "latency_ms": round(ex["latency_ms"], 2),
        "prompt_tokens": ex["prompt_tokens"],
        "completion_tokens": ex["completion_tokens"],
        "tokens_used": ex["tokens_used"],
        "cost": ex["cost"],
        "created_at": datetime.fromtimestamp(ex["started_at"], UTC)
        + timedelta(milliseconds=ex["latency_ms"]),
    }


def insert_exchanges(conn: Connection, exchanges: Sequence[Exchange]) -> int:
    """Insert request+response rows for ``exchanges`` (caller commits). Returns rows new."""
    returned = conn.execute(_INSERT_REQUESTS, [_request_row(ex) for ex in exchanges])
    new_ids = {request_id: pk for pk, request_id in returned}
    response_rows = [
        {"request_id_fk": new_ids[ex["request_id"]], **_response_row(ex)}
        for ex in exchanges
        if ex["request_id"] in new_ids
    ]
    if response_rows:
        conn.execute(_INSERT_RESPONSES, response_rows)
    return len(response_rows)


def _single_exchange_statement():
    """One statement for one exchange (sync mode): a CTE inserts the request and feeds its
    id to the response insert, so the commit costs a single round trip in autocommit."""
    request_cols = [c for c in _REQUESTS.c if c.name != "id"]
    response_cols = [c for c in _RESPONSES.c if c.name not in ("id", "request_id_fk")]
    new_request = (
        pg_insert(_REQUESTS)
        .values({c.name: bindparam(f"req_{c.name}", type_=c.type) for c in request_cols})
        .on_conflict_do_nothing(index_elements=["request_id"])
        .returning(_REQUESTS.c.id)
        .cte("new_request")
    )
    values = [bindparam(f"resp_{c.name}", type_=c.type) for c in response_cols]
    return insert(_RESPONSES).from_select(
        ["request_id_fk", *(c.name for c in response_cols)],
        select(new_request.c.id, *values),
    )


_INSERT_SINGLE = _single_exchange_statement()


def insert_one_exchange(conn: Connection, ex: Exchange) -> None:
    params = {f"req_{k}": v for k, v in _request_row(ex).items()}
    params.update({f"resp_{k}": v for k, v in _response_row(ex).items()})
    conn.execute(_INSERT_SINGLE, params)


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
        # Same pool; one statement needs no explicit transaction (saves a round trip).
        self._autocommit = engine and engine.execution_options(isolation_level="AUTOCOMMIT")
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
        """``log_mode: sync``: the row is committed (or fsync'd to the spool) on return."""
        await asyncio.get_running_loop().run_in_executor(None, self._commit_sync, exchange)

    def _commit_sync(self, exchange: Exchange) -> None:
        if self.engine is not None and self.db_ok:
            try:
                with self._autocommit.connect() as conn:
                    insert_one_exchange(conn, exchange)
                self.stats["exchanges_written"] += 1
                metrics.WRITER_EXCHANGES.labels("sync").inc()
                return
            except (SQLAlchemyError, ValueError) as exc:
                if is_outage(exc):
                    self._db_failed(exc)
                elif self._commit([exchange], "sync"):  # isolates what the DB refuses
                    return
        self._spool([exchange])

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
            with self.engine.begin() as conn:
                insert_exchanges(conn, batch)
        except (SQLAlchemyError, ValueError) as exc:
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
                    with self.engine.begin() as conn:
                        insert_exchanges(conn, [candidate])
                    break
                except (SQLAlchemyError, ValueError) as exc:
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
