"""Writer throughput: exchanges/s the app's own ExchangeWriter commits in a burst.

Over HTTP the gateway produces only a few thousand exchanges/s on this machine, so an
HTTP-driven number would measure the request path, not the writer. Here a producer keeps
the writer's bounded queue full with records shaped by the gateway's own code
(``Exchange.record``), and we time until ``stop()`` has drained and committed all of them,
then count them in the database.

Usage: writer_bench.py DATABASE_URL SPOOL_DIR COUNT   (prints one WRITER_JSON line)
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path

from pydantic import SecretStr
from sqlalchemy import func, select
from starlette.requests import Request

from llm_gateway import metrics
from llm_gateway.config import DatabaseSettings, Deployment, WriterSettings
from llm_gateway.db import make_engine
from llm_gateway.models import RequestRecord
from llm_gateway.proxy import Exchange
from llm_gateway.settings import EnvSettings
from llm_gateway.spool import Spool
from llm_gateway.writer import ExchangeWriter

ID_PREFIX = "req_writerbench_"
REQUEST_BODY = {
    "model": "bench-model",
    "messages": [
        {"role": "system", "content": "You are a terse assistant."},
        {"role": "user", "content": "Say hello to the benchmark please"},
    ],
}
RESPONSE_BODY = {
    "id": "chatcmpl-bench",
    "object": "chat.completion",
    "created": 1_800_000_000,
    "model": "fake-model",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Fake reply: Say hello to the benchmark"},
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 11, "completion_tokens": 8, "total_tokens": 19},
}
SCOPE = {
    "type": "http",
    "method": "POST",
    "scheme": "http",
    "server": ("127.0.0.1", 4000),
    "path": "/v1/chat/completions",
    "root_path": "",
    "query_string": b"",
    "headers": [
        (b"host", b"127.0.0.1:4000"),
        (b"content-type", b"application/json"),
        (b"authorization", b"Bearer sk-not-logged"),
        (b"user-agent", b"wrk"),
    ],
}


def sample_records(count: int, run_tag: str) -> list[dict]:
    deployment = Deployment(
        model_name="bench-model",
        upstream_model="fake-model",
        api_base="http://127.0.0.1:9000/v1",
        api_key=SecretStr("sk-unused"),
        timeout_s=30,
        input_cost_per_token=1e-6,
        output_cost_per_token=2e-6,
    )
    records = []
    for index in range(count):
        exchange = Exchange(
            request=Request(SCOPE),
            alias="master",
            request_id=f"{ID_PREFIX}{run_tag}_{index}",
            body=REQUEST_BODY,
            model="bench-model",
            deployment=deployment,
        )
        records.append(exchange.record(200, RESPONSE_BODY, RESPONSE_BODY["usage"], 0.0012))
    return records


async def burst(url: str, spool_dir: Path, count: int) -> dict:
    database = DatabaseSettings()
    engine = make_engine(EnvSettings(database_url=url).sqlalchemy_url(), database)
    spool = Spool(spool_dir)
    spool.open()
    writer = ExchangeWriter(engine, spool, WriterSettings(), database)
    run_tag = str(time.time_ns())
    records = sample_records(count, run_tag)  # built before the clock starts
    writer.start()
    started = time.perf_counter()
    for record in records:
        await writer.queue.put(
            record
        )  # waits while the queue is full: sustained, not burst-to-spool
    await writer.stop(timeout=300)
    elapsed = time.perf_counter() - started
    with engine.connect() as conn:
        found = conn.scalar(
            select(func.count()).where(
                RequestRecord.request_id.startswith(f"{ID_PREFIX}{run_tag}_")
            )
        )
    engine.dispose()
    stats = metrics.writer_summary()  # this process: this burst
    return {
        "exchanges": count,
        "seconds": round(elapsed, 3),
        "exchanges_per_s": round(stats["exchanges_written"] / elapsed, 1),
        "found": found,
        "batches": stats["batches"],
        "spooled": stats["spooled"],
        "batch_commit_ms_p50": stats["batch_commit_ms_p50"],
        "batch_commit_ms_p99": stats["batch_commit_ms_p99"],
    }


def main() -> None:
    url, spool_dir, count = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    print("WRITER_JSON " + json.dumps(asyncio.run(burst(url, spool_dir, count))), flush=True)


if __name__ == "__main__":
    main()
