"""Drive one target with wrk at a fixed concurrency and collect what it saw."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from procs import cpu_seconds

WRK = "/usr/bin/wrk"
LUA_SCRIPT = Path(__file__).with_name("post_chat.lua")


@dataclass(frozen=True)
class Target:
    name: str
    url: str
    body: str
    key: str
    # The server processes whose CPU time this target costs (gunicorn workers, the upstream).
    server_pids: Callable[[], list[int]]


@dataclass
class Run:
    target: str
    mode: str
    concurrency: int
    rps: float
    p50_ms: float
    p99_ms: float
    requests: int
    failed: int
    cpu_ms_per_request: float
    statuses: Counter = field(default_factory=Counter)
    request_ids: list[str] = field(default_factory=list)
    db_overheads_ms: list[float] = field(default_factory=list)
    # wrk's connections per server process mid-run, busiest first: gunicorn workers share
    # one listening socket, and a few keep-alive connections can all land on one worker.
    connections: list[int] = field(default_factory=list)


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile; NaN for no values, so a missing header shows as 'nan'."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(math.ceil(pct / 100 * len(ordered)) - 1, 0)]


def parse_ms(header: str) -> float | None:
    try:
        return float(header.removesuffix("ms"))
    except ValueError:
        return None


def connections_by_process(port: int) -> list[int]:
    """Established connections to ``port`` per server process, busiest first."""
    try:
        listing = subprocess.run(
            ["ss", "-tnpH", "state", "established", f"( sport = :{port} )"],
            capture_output=True, text=True, check=False,
        ).stdout  # fmt: skip
    except FileNotFoundError:  # no iproute2: the column stays empty
        return []
    return sorted(Counter(re.findall(r"pid=(\d+)", listing)).values(), reverse=True)


def run_wrk(target: Target, mode: str, concurrency: int, duration_s: int, out: Path) -> Run:
    # One wrk thread per 4 connections: enough to keep 8 busy without a third busy core.
    threads = max(1, concurrency // 4)
    env = {**os.environ, "BENCH_BODY": target.body, "BENCH_KEY": target.key, "BENCH_OUT": str(out)}
    pids = target.server_pids()
    cpu_before = sum(cpu_seconds(pid) for pid in pids)
    wrk = subprocess.Popen(
        [WRK, f"-t{threads}", f"-c{concurrency}", f"-d{duration_s}s", "--timeout", "10s",
         "-s", str(LUA_SCRIPT), target.url],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        time.sleep(duration_s / 2)
        connections = connections_by_process(urlsplit(target.url).port)
        stdout, stderr = wrk.communicate(timeout=duration_s + 30)
    finally:
        if wrk.poll() is None:
            wrk.kill()
            wrk.wait()
    if wrk.returncode != 0:
        raise RuntimeError(f"wrk failed ({wrk.returncode}): {stderr[-1000:]}")
    cpu = sum(cpu_seconds(pid) for pid in pids) - cpu_before
    line = next(ln for ln in stdout.splitlines() if ln.startswith("WRK_JSON "))
    summary = json.loads(line.removeprefix("WRK_JSON "))
    run = Run(
        target=target.name,
        mode=mode,
        concurrency=concurrency,
        rps=summary["requests"] / (summary["duration_us"] / 1e6),
        p50_ms=summary["p50_us"] / 1000,
        p99_ms=summary["p99_us"] / 1000,
        requests=summary["requests"],
        failed=summary["non_2xx"] + summary["socket_errors"],
        cpu_ms_per_request=cpu * 1000 / max(summary["requests"], 1),
        connections=connections,
    )
    for record in out.read_text().splitlines():
        status, request_id, overhead = record.split("\t")
        run.statuses[int(status)] += 1
        if request_id:
            run.request_ids.append(request_id)
        if (value := parse_ms(overhead)) is not None:
            run.db_overheads_ms.append(value)
    out.unlink()
    return run
