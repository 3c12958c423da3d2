"""`make bench`: the gateway against its upstream called directly, on this machine.

Starts a throwaway PostgreSQL, the fake upstream (zero latency) and the gateway under
gunicorn (2 uvicorn workers), all on 127.0.0.1, then drives both with wrk at concurrency
1 and 8, targets interleaved, for a few rounds; figures are medians over rounds. Runs once
with log_mode async (the default) and once with sync. After each mode the gateway is
stopped (SIGTERM drains its writer) and every exchange wrk saw is looked up in the
database: `lost` counts those missing. A separate burst measures the writer alone.
The last line is the machine-readable RESULT. Everything stops and is removed on exit,
also on error or Ctrl-C.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psycopg2
from load import Run, Target, percentile, run_wrk
from procs import (
    Processes,
    child_pids,
    free_port,
    migrate,
    start_fake_upstream,
    start_gateway,
    start_postgres,
)

UPSTREAM_MODEL = "fake-model"
GATEWAY_MODEL = "bench-model"
MESSAGES = [
    {"role": "system", "content": "You are a terse assistant."},
    {"role": "user", "content": "Say hello to the benchmark please"},
]
WORKERS = 2
# Per round: (concurrency, target) in this order, so drift hits both targets alike.
SCHEDULE = {
    "async": [(1, "direct"), (1, "gateway"), (8, "direct"), (8, "gateway")],
    # direct at c=8 is the same as in the async pass, so sync skips it to save time.
    "sync": [(1, "direct"), (1, "gateway"), (8, "gateway")],
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=int, default=8, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--writer-exchanges", type=int, default=30_000)
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs)")
    parser.add_argument(
        "--app",
        default="llm_gateway.main:create_app()",
        help="gunicorn app spec; a factory on PYTHONPATH allows A/B trials of hot-path changes",
    )
    return parser.parse_args()


def gateway_config(upstream_port: int, upstream_key: str, log_mode: str) -> str:
    # JSON is valid YAML, so the LiteLLM-format config needs no YAML writer here.
    return json.dumps(
        {
            "model_list": [
                {
                    "model_name": GATEWAY_MODEL,
                    "litellm_params": {
                        "model": f"openai/{UPSTREAM_MODEL}",
                        "api_base": f"http://127.0.0.1:{upstream_port}/v1",
                        "api_key": upstream_key,
                        "timeout": 30,
                    },
                    "model_info": {"input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6},
                }
            ],
            "general_settings": {
                "master_key": "os.environ/GATEWAY_MASTER_KEY",
                "log_mode": log_mode,
            },
        },
        indent=2,
    )


class Bench:
    def __init__(self, args: argparse.Namespace, stack: contextlib.ExitStack, work: Path):
        self.args = args
        self.work = work
        self.procs = Processes(stack, work)
        self.master_key = "sk-bench-" + secrets.token_hex(16)
        self.upstream_key = "sk-upstream-" + secrets.token_hex(8)
        self.database_url = start_postgres(stack, work)
        self.env = {**os.environ, "DATABASE_URL": self.database_url}
        self.runs: list[tuple[int, Run]] = []  # (round, run)
        self.lost: dict[str, int] = {}

    def say(self, message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)

    def migrate(self) -> None:
        self.say("migrating")
        migrate(self.env)

    def start_upstream(self) -> None:
        self.upstream_port = free_port()
        self.upstream = start_fake_upstream(
            self.procs, self.env, self.upstream_key, self.upstream_port
        )
        self.direct = Target(
            "direct",
            f"http://127.0.0.1:{self.upstream_port}/v1/chat/completions",
            json.dumps({"model": UPSTREAM_MODEL, "messages": MESSAGES}),
            self.upstream_key,
            lambda: [self.upstream.pid],
        )

    def start_gateway(self, mode: str) -> subprocess.Popen:
        port = free_port()
        config = self.work / f"config-{mode}.yaml"
        config.write_text(gateway_config(self.upstream_port, self.upstream_key, mode))
        env = {
            **self.env,
            "GATEWAY_CONFIG": str(config),
            "GATEWAY_SPOOL_DIR": str(self.work / f"spool-{mode}"),
            "GATEWAY_MASTER_KEY": self.master_key,
        }
        gateway = start_gateway(self.procs, f"gateway-{mode}", env, port, WORKERS, self.args.app)
        self.gateway_port = port
        self.gateway_target = Target(
            "gateway",
            f"http://127.0.0.1:{port}/v1/chat/completions",
            json.dumps({"model": GATEWAY_MODEL, "messages": MESSAGES}),
            self.master_key,
            lambda: child_pids(gateway.pid),
        )
        return gateway

    def db_stats(self) -> dict:
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.gateway_port}/api/db-stats",
            headers={"Authorization": f"Bearer {self.master_key}"},
        )
        with urllib.request.urlopen(request, timeout=5) as resp:
            return json.load(resp)

    def run_mode(self, mode: str) -> None:
        gateway = self.start_gateway(mode)
        targets = {"direct": self.direct, "gateway": self.gateway_target}
        out = self.work / "records.tsv"
        # Warm-up (connections, pools, caches): not in the table, but checked in the DB.
        gateway_runs = [run_wrk(self.gateway_target, mode, 8, 2, out)]
        run_wrk(self.direct, mode, 8, 2, out)
        for round_no in range(1, self.args.rounds + 1):
            for concurrency, name in SCHEDULE[mode]:
                run = run_wrk(targets[name], mode, concurrency, self.args.duration, out)
                self.say(
                    f"{mode} round {round_no}: {name:7} c={concurrency} {run.rps:8.0f} req/s"
                    f"  p50 {run.p50_ms:.2f} ms  p99 {run.p99_ms:.2f} ms  failed {run.failed}"
                )
                self.runs.append((round_no, run))
                if name == "gateway":
                    gateway_runs.append(run)
        try:
            self.say(f"{mode}: /api/db-stats (one worker): {json.dumps(self.db_stats())[:600]}")
        except (OSError, ValueError) as exc:  # informational only
            self.say(f"{mode}: /api/db-stats unavailable: {exc}")
        self.say(f"{mode}: stopping the gateway (SIGTERM drains the writer)")
        Processes.stop(gateway)
        sent = [request_id for run in gateway_runs for request_id in run.request_ids]
        # An answer without X-Request-ID cannot be looked up, so it counts as lost.
        unverifiable = sum(run.statuses.total() for run in gateway_runs) - len(sent)
        if unverifiable:
            self.say(f"{mode}: {unverifiable} answers had no X-Request-ID")
        self.lost[mode] = self.count_missing(sent, mode) + unverifiable

    def count_missing(self, request_ids: list[str], mode: str) -> int:
        """Exchanges wrk got an answer for whose request or response row is missing."""
        dsn = self.database_url.replace("postgresql+psycopg2://", "postgresql://")
        with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
            cur.execute("CREATE TEMP TABLE sent (request_id text)")
            cur.copy_expert(
                "COPY sent FROM STDIN", io.StringIO("".join(f"{r}\n" for r in request_ids))
            )
            cur.execute(
                "SELECT count(*) FROM sent s WHERE NOT EXISTS (SELECT 1 FROM requests r"
                " JOIN responses p ON p.request_id_fk = r.id WHERE r.request_id = s.request_id)"
            )
            missing = cur.fetchone()[0]
            cur.execute("SELECT (SELECT count(*) FROM requests), (SELECT count(*) FROM responses)")
            requests_rows, responses_rows = cur.fetchone()
        duplicates = len(request_ids) - len(set(request_ids))
        self.say(
            f"{mode}: {len(request_ids)} answered exchanges checked, {missing} missing,"
            f" {duplicates} duplicate ids; table totals requests={requests_rows}"
            f" responses={responses_rows} (includes requests in flight when wrk stopped)"
        )
        return missing + duplicates

    def writer_burst(self) -> dict:
        rates, results = [], []
        for attempt in range(3):
            spool = self.work / f"spool-writer-{attempt}"
            completed = subprocess.run(
                [sys.executable, str(Path(__file__).with_name("writer_bench.py")),
                 self.database_url, str(spool), str(self.args.writer_exchanges)],
                env=self.env, capture_output=True, text=True, check=True, timeout=300,
            )  # fmt: skip
            line = next(ln for ln in completed.stdout.splitlines() if ln.startswith("WRITER_JSON"))
            result = json.loads(line.removeprefix("WRITER_JSON "))
            self.say(f"writer burst {attempt + 1}: {json.dumps(result)}")
            rates.append(result["exchanges_per_s"])
            results.append(result)
        self.lost["writer"] = sum(r["exchanges"] - r["found"] for r in results)
        return {"exchanges_per_s": statistics.median(rates)}


def median_of(runs: list[Run], attr: str) -> float:
    return statistics.median(getattr(run, attr) for run in runs)


def added(bench: Bench, mode: str, concurrency: int, attr: str) -> float:
    """Median over rounds of (gateway - direct) in the same round: paired, so drift cancels."""
    by_round: dict[int, dict[str, Run]] = {}
    for round_no, run in bench.runs:
        if run.mode == mode and run.concurrency == concurrency:
            by_round.setdefault(round_no, {})[run.target] = run
    diffs = [
        getattr(pair["gateway"], attr) - getattr(pair["direct"], attr)
        for pair in by_round.values()
        if len(pair) == 2
    ]
    return statistics.median(diffs) if diffs else float("nan")


def report(bench: Bench, writer_rate: float) -> str:
    header = (f"{'mode':6} {'target':8} {'c':>2} {'req/s':>8} {'p50 ms':>7} {'p99 ms':>7}"
              f" {'+p50 ms':>8} {'+p99 ms':>8} {'dbo p50':>8} {'dbo p99':>8} {'cpu ms/req':>10}"
              f" {'failed':>6}  conns/process")  # fmt: skip
    lines = [header, "-" * len(header)]
    overheads: dict[str, list[float]] = {}
    for mode in SCHEDULE:
        for concurrency in (1, 8):
            for target in ("direct", "gateway"):
                runs = [
                    r for _, r in bench.runs
                    if (r.mode, r.concurrency, r.target) == (mode, concurrency, target)
                ]  # fmt: skip
                if not runs:
                    continue
                dbo = [v for r in runs for v in r.db_overheads_ms]
                added_p50 = added_p99 = float("nan")
                conns = ""
                if target == "gateway":
                    overheads.setdefault(mode, []).extend(dbo)
                    added_p50 = added(bench, mode, concurrency, "p50_ms")
                    added_p99 = added(bench, mode, concurrency, "p99_ms")
                    conns = " ".join("/".join(map(str, r.connections)) for r in runs)
                lines.append(
                    f"{mode:6} {target:8} {concurrency:>2} {median_of(runs, 'rps'):>8.0f}"
                    f" {median_of(runs, 'p50_ms'):>7.2f} {median_of(runs, 'p99_ms'):>7.2f}"
                    f" {added_p50:>8.2f} {added_p99:>8.2f}"
                    f" {percentile(dbo, 50):>8.3f} {percentile(dbo, 99):>8.3f}"
                    f" {median_of(runs, 'cpu_ms_per_request'):>10.3f}"
                    f" {sum(r.failed for r in runs):>6}  {conns}"
                )
    print("\n".join(lines))
    print(
        "+p50/+p99: gateway minus direct in the same round (median of rounds); dbo: X-DB-Overhead"
        " over all answers; cpu: server CPU (gunicorn workers or upstream) per request;"
        " conns/process: wrk's connections per gateway worker mid-run, one entry per round"
    )
    gateway_c8 = [
        r for _, r in bench.runs if (r.mode, r.concurrency, r.target) == ("async", 8, "gateway")
    ]
    direct_c8 = [r for _, r in bench.runs if (r.concurrency, r.target) == (8, "direct")]
    return (
        f"RESULT overhead_p50_ms={added(bench, 'async', 1, 'p50_ms'):.3f}"
        f" overhead_p99_ms={added(bench, 'async', 1, 'p99_ms'):.3f}"
        f" rps_c8={median_of(gateway_c8, 'rps'):.0f}"
        f" direct_rps_c8={median_of(direct_c8, 'rps'):.0f}"
        f" db_overhead_p99_ms={percentile(overheads.get('async', []), 99):.3f}"
        f" sync_db_overhead_p99_ms={percentile(overheads.get('sync', []), 99):.3f}"
        f" writer_exchanges_per_s={writer_rate:.0f}"
        f" lost={sum(bench.lost.values())}"
    )


def main() -> int:
    args = parse_args()
    # SIGTERM (e.g. make killed) unwinds like Ctrl-C, so the ExitStack still cleans up.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = Path(tempfile.mkdtemp(prefix="llmgw-bench-"))
    work.chmod(0o755)  # the postgres user must reach its data directory inside
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        if not args.keep:
            stack.callback(shutil.rmtree, work, ignore_errors=True)
        bench = Bench(args, stack, work)
        try:
            bench.migrate()
            bench.start_upstream()
            for mode in SCHEDULE:
                bench.run_mode(mode)
            writer = bench.writer_burst()
        except Exception:
            for log in sorted(work.glob("*.log")):
                tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
                print(f"--- last lines of {log.name} ---\n{tail}", file=sys.stderr)
            raise
        result = report(bench, writer["exchanges_per_s"])
    # Other work on a shared machine shows up as noise, mostly in p99; say how busy it was.
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"bench took {time.monotonic() - started:.0f} s; load average at the end: {load}")
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    print(result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
