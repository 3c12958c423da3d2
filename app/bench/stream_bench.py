"""Streamed answers and a compressing upstream: what the gateway adds, on this machine.

Starts a throwaway PostgreSQL, the fake upstream (zero latency, no pause between chunks)
and the gateway under gunicorn (2 workers, async log mode), all on 127.0.0.1. One client
(aiohttp, concurrency 1) then alternates, request by request, between the upstream
called directly and the gateway:

- stream: time to first byte (first event) and to the end of a streamed chat answer of
  about 25 content chunks; the gateway's added TTFB, and its added time per chunk
  ((added total - added TTFB) / chunks);
- compressed: a plain answer the upstream gzips whatever is asked (as a CDN might),
  against the same answer uncompressed; the difference is what decoding costs.

Figures are medians; the last line is the machine-readable RESULT_STREAM. Everything
stops and is removed on exit. Usage: stream_bench.py [--requests 300]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
from procs import (
    Processes,
    free_port,
    migrate,
    start_fake_upstream,
    start_gateway,
    start_postgres,
)

WORDS = " ".join(f"word{i}" for i in range(72))  # about 25 deltas of 3 words
MESSAGES = [{"role": "user", "content": WORDS}]
UPSTREAM_MODEL = "fake-model"
GZIP_UPSTREAM_MODEL = "fake-encoded-gzip"


def config(upstream_port: int, upstream_key: str) -> str:
    def entry(name: str, model: str) -> dict:
        return {"model_name": name, "litellm_params": {
            "model": f"openai/{model}", "api_base": f"http://127.0.0.1:{upstream_port}/v1",
            "api_key": upstream_key}}  # fmt: skip

    return json.dumps({
        "model_list": [entry("plain", UPSTREAM_MODEL), entry("gzip", GZIP_UPSTREAM_MODEL)],
        "general_settings": {"master_key": "os.environ/GATEWAY_MASTER_KEY"},
    })  # fmt: skip


async def timed(session, url: str, key: str, body: dict, headers=None) -> tuple[float, float, int]:
    """(seconds to the first body bytes, seconds to the end, events) of one call."""
    started = time.perf_counter()
    first = None
    events = 0
    async with session.post(
        url, json=body, headers={"Authorization": f"Bearer {key}", **(headers or {})}
    ) as response:
        assert response.status == 200, await response.text()
        async for chunk in response.content.iter_any():
            if first is None:
                first = time.perf_counter() - started
            events += chunk.count(b"\n\n")
    return first or 0.0, time.perf_counter() - started, events


async def measure(args, upstream: str, gateway: str, upstream_key: str, master_key: str):
    stream = {"messages": MESSAGES, "stream": True}
    plain = {"messages": MESSAGES[:1]}
    samples: dict[str, list[tuple[float, float, int]]] = {}
    # auto_decompress: the client decodes gzip like the openai SDK would.
    async with aiohttp.ClientSession() as session:
        for _ in range(args.requests):
            for name, url, key, body, headers in (
                ("direct stream", upstream, upstream_key, {**stream, "model": UPSTREAM_MODEL},
                 None),
                ("gateway stream", gateway, master_key, {**stream, "model": "plain"}, None),
                ("gateway plain", gateway, master_key, {**plain, "model": "plain"}, None),
                ("gateway gzip upstream", gateway, master_key, {**plain, "model": "gzip"},
                 None),
            ):  # fmt: skip
                samples.setdefault(name, []).append(await timed(session, url, key, body, headers))
    return samples


def median(values) -> float:
    return statistics.median(values) * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300, help="per target")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="llmgw-stream-bench-"))
    work.chmod(0o755)  # the postgres user must reach its data directory inside
    with contextlib.ExitStack() as stack:
        stack.callback(shutil.rmtree, work, ignore_errors=True)
        procs = Processes(stack, work)
        database_url = start_postgres(stack, work)
        env = {**os.environ, "DATABASE_URL": database_url}
        migrate(env)
        upstream_key = "sk-upstream-" + secrets.token_hex(8)
        master_key = "sk-bench-" + secrets.token_hex(16)
        upstream_port = free_port()
        start_fake_upstream(procs, env, upstream_key, upstream_port, "--chunk-delay-ms", "0")
        config_path = work / "config.yaml"
        config_path.write_text(config(upstream_port, upstream_key))
        port = free_port()
        gateway_env = {**env, "GATEWAY_CONFIG": str(config_path), "GATEWAY_MASTER_KEY":
                       master_key, "GATEWAY_SPOOL_DIR": str(work / "spool")}  # fmt: skip
        start_gateway(procs, "gateway", gateway_env, port, 2, "llm_gateway.main:create_app()")
        samples = asyncio.run(
            measure(args, f"http://127.0.0.1:{upstream_port}/v1/chat/completions",
                    f"http://127.0.0.1:{port}/v1/chat/completions", upstream_key, master_key)
        )  # fmt: skip
    for name, values in samples.items():
        print(f"{name:24} ttfb p50 {median(v[0] for v in values):6.2f} ms   total p50 "
              f"{median(v[1] for v in values):6.2f} ms   events {values[0][2]}")  # fmt: skip
    direct, through = samples["direct stream"], samples["gateway stream"]
    added_ttfb = median(v[0] for v in through) - median(v[0] for v in direct)
    added_total = median(v[1] for v in through) - median(v[1] for v in direct)
    chunks = statistics.median(v[2] for v in direct)
    per_chunk_us = (added_total - added_ttfb) / chunks * 1000
    gzip_cost = median(v[1] for v in samples["gateway gzip upstream"]) - median(
        v[1] for v in samples["gateway plain"]
    )
    print(
        f"RESULT_STREAM added_ttfb_p50_ms={added_ttfb:.3f} added_per_chunk_us={per_chunk_us:.1f}"
        f" chunks={chunks:.0f} gzip_upstream_added_p50_ms={gzip_cost:.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
