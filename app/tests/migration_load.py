"""`llm-gateway migrate` while the app's own ExchangeWriter keeps inserting exchanges.

Used by tests/test_partitions.py (small) and bench/db_bench.py (1M rows). A producer hands
the writer one exchange every ``interval_s`` (as the request path would) before, during
and after the migration; afterwards every one of them is counted in the database.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

from sqlalchemy import create_engine, text

from llm_gateway import metrics
from llm_gateway.config import DatabaseSettings, WriterSettings
from llm_gateway.db import make_engine
from llm_gateway.settings import EnvSettings
from llm_gateway.spool import Spool
from llm_gateway.writer import ExchangeWriter

DURING_PREFIX = "req_during_"


def live_record(request_id: str) -> dict:
    """An exchange that starts now (so it lands in today's partition)."""
    return {
        "request_id": request_id,
        "route": "/v1/chat/completions",
        "method": "POST",
        "url": "/v1/chat/completions",
        "headers": {"content-type": "application/json", "authorization": "[REDACTED]"},
        "body": {"model": "gpt-test", "messages": [{"role": "user", "content": "hello"}]},
        "model": "gpt-test",
        "status_code": 200,
        "key_alias": "master",
        "user": None,
        "started_at": time.time(),
        "response_body": {"choices": [{"message": {"content": "hi"}}]},
        "latency_ms": 2.5,
        "prompt_tokens": 3,
        "completion_tokens": 1,
        "tokens_used": 4,
        "cost": 0.000004,
    }


async def migrate_while_writing(
    url: str, spool_dir: Path, target: str = "head", interval_s: float = 0.002, around_s=0.5
) -> dict:
    """Run the migration to ``target`` in a subprocess while exchanges keep coming.
    Returns its time, its output and what the writer did; ``count_during`` the rows."""
    database = DatabaseSettings()
    engine = make_engine(EnvSettings(database_url=url).sqlalchemy_url(), database)
    spool = Spool(spool_dir)
    spool.open()
    settings = WriterSettings(flush_interval_ms=10, retry_interval_s=0.2)
    writer = ExchangeWriter(engine, spool, settings, database)
    before = metrics.writer_summary()
    writer.start()
    sent: list[str] = []
    stop = asyncio.Event()

    async def produce() -> None:
        while not stop.is_set():
            request_id = f"{DURING_PREFIX}{len(sent)}"
            writer.submit(live_record(request_id))
            sent.append(request_id)
            await asyncio.sleep(interval_s)

    producer = asyncio.create_task(produce())
    await asyncio.sleep(around_s)
    started = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "llm_gateway.cli", "migrate", target,
        env={**os.environ, "DATABASE_URL": url},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await proc.communicate()
    seconds = time.perf_counter() - started
    await asyncio.sleep(around_s)
    stop.set()
    await producer
    await writer.stop(timeout=120)
    engine.dispose()
    after = metrics.writer_summary()
    moved = {key: after[key] - before[key] for key in ("exchanges_written", "spooled", "lost")}
    return {
        "returncode": proc.returncode,
        "output": (out + err).decode(errors="replace"),
        "migration_s": round(seconds, 3),
        "sent": len(sent),
        "writer": moved,
    }


def count_during(url: str, sent: int) -> dict:
    """lost / duplicated among the ``sent`` exchanges the producer made."""
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return _count(conn, sent)
    finally:
        engine.dispose()


def _count(conn, sent: int) -> dict:
    found, rows, responses = conn.execute(
        text(
            "SELECT count(DISTINCT request_id), count(*), (SELECT count(*) FROM responses p"
            "  JOIN requests q ON p.request_id_fk = q.id"
            "  AND p.request_created_at = q.created_at WHERE q.request_id LIKE :prefix)"
            " FROM requests WHERE request_id LIKE :prefix"
        ),
        {"prefix": DURING_PREFIX + "%"},
    ).one()
    return {"lost": sent - found, "duplicated": rows - found, "without_response": rows - responses}
