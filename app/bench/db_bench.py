"""bench-db: the partitioned log tables (revision 0003) against issue 12's targets.

In one throwaway cluster (durable settings, as bench.py), one run, so every baseline is
measured beside its figure:
  (a) retention: dropping one day's partitions (responses, then requests) against a
      DELETE of the same rows (on the same table, rolled back afterwards);
  (b) the newest-first read /api/requests?limit=100 runs (newest_first, the endpoint's
      own function) p50/p95, and its plan: only the newest partitions are scanned;
  (c) the writer's batch throughput (bench/writer_bench.py) on revision 0003 against 0002,
      each on a fresh database, then each holding the same generated exchanges;
  (d) `llm-gateway migrate` of an unpartitioned 0002 database holding --migrate-exchanges
      exchanges to 0003, while the app's writer inserts throughout: its time and lost=0;
  (e) why the writer gives its FK checks generic plans only up to
      writer.GENERIC_PLAN_MAX_PARTITIONS partitions: the writer's statement per batch on
      0002 and on 0003 at several partition counts, generic plans against the plan
      cache's default, batch by batch in turn (no generated data set needed).
Data is generated in SQL (tests/exchange_rows.py), ~2 KB of JSONB per exchange, spread
over --days days ending now. Prints one line per figure and BENCH_DB_JSON at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from procs import PostgresCluster, migrate
from sqlalchemy import text

from llm_gateway.api import _newest_requests, newest_first
from llm_gateway.config import DatabaseSettings
from llm_gateway.db import make_engine
from llm_gateway.settings import EnvSettings
from llm_gateway.writer import (
    _INSERT_BATCH,
    _INSERT_BATCH_UNPARTITIONED,
    _PARTITION_COUNT,
    encode,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from exchange_rows import run_insert
from migration_load import count_during, migrate_while_writing
from writer_bench import sample_records

# Durable (fsync on, as production); room for the bulk load without forced checkpoints.
SERVER_SETTINGS = {"max_wal_size": "16GB", "shared_buffers": "1GB", "checkpoint_timeout": "30min"}
CHUNK = 250_000  # exchanges per generating statement (bounded memory and transaction)
PARTITION = re.compile(r"^requests_(p\d{8}|default)$")


def say(line: str) -> None:
    print(line, flush=True)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--exchanges", type=int, default=5_000_000)
    parser.add_argument("--migrate-exchanges", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--reads", type=int, default=200)
    parser.add_argument("--writer-exchanges", type=int, default=50_000)
    parser.add_argument("--writer-tries", type=int, default=5)
    parser.add_argument("--fk-batches", type=int, default=30)
    parser.add_argument(
        "--parts", default="abcde", help="which figures (d and e need no generated data set)"
    )
    return parser.parse_args()


def day(offset: int) -> datetime:
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return today + timedelta(days=offset)


class Bench:
    def __init__(self, args: argparse.Namespace, cluster: PostgresCluster, work: Path):
        self.args, self.cluster, self.work = args, cluster, work
        self.figures: dict = {}

    def database(self, name: str, revision: str) -> str:
        self.cluster.execute(f"CREATE DATABASE {name}")
        url = self.cluster.url(name)
        migrate({**os.environ, "DATABASE_URL": url}, revision)
        return url

    def sql(self, database: str, statement: str):
        conn = self.cluster.connect(database)
        try:
            with conn.cursor() as cursor:
                cursor.execute(statement)
                return cursor.fetchall() if cursor.description else None
        finally:
            conn.close()

    def generate(self, database: str, count: int) -> float:
        """``count`` exchanges over the last --days days, in chunks; returns seconds."""
        started = time.perf_counter()
        chunks = max(1, -(-count // CHUNK))
        span = self.args.days / chunks
        conn = self.cluster.connect(database)
        try:
            with conn.cursor() as cursor:
                for index in range(chunks):
                    size = min(CHUNK, count - index * CHUNK)
                    end = f"now() - interval '1 day' * {span * (chunks - 1 - index)}"
                    run_insert(cursor, size, span, end=end, prefix=f"req_gen{index}_")
                cursor.execute("VACUUM ANALYZE requests")
                cursor.execute("VACUUM ANALYZE responses")
        finally:
            conn.close()
        return time.perf_counter() - started

    def add_past_partitions(self, database: str, days: int | None = None) -> None:
        """The daily children a deployment running for --days days (or ``days``) has."""
        for offset in range(-(days or self.args.days) - 1, 0):
            for table in ("requests", "responses"):
                self.sql(
                    database,
                    f"CREATE TABLE {table}_p{day(offset):%Y%m%d} PARTITION OF {table}"
                    f" FOR VALUES FROM ('{day(offset).isoformat()}')"
                    f" TO ('{day(offset + 1).isoformat()}')",
                )

    # ---- (a) ----------------------------------------------------------------------
    def retention(self, database: str) -> None:
        oldest = day(-self.args.days + 1)  # the oldest full day (the first is partial)
        stamp = f"{oldest:%Y%m%d}"
        lower, upper = oldest.isoformat(), day(-self.args.days + 2).isoformat()
        rows = self.sql(
            database,
            "SELECT count(*) FROM requests"
            f" WHERE created_at >= '{lower}' AND created_at < '{upper}'",
        )[0][0]
        conn = self.cluster.connect(database)
        conn.autocommit = False
        try:
            with conn.cursor() as cursor:
                started = time.perf_counter()
                cursor.execute(
                    f"DELETE FROM requests WHERE created_at >= '{lower}' AND created_at < '{upper}'"
                )  # the FK cascades to the responses
                delete_s = time.perf_counter() - started
                conn.rollback()
                steps = []
                for table in ("responses", "requests"):
                    for statement in (
                        f"ALTER TABLE {table} DETACH PARTITION {table}_p{stamp}",
                        f"DROP TABLE {table}_p{stamp}",
                    ):
                        started = time.perf_counter()
                        cursor.execute(statement)
                        steps.append((statement, (time.perf_counter() - started) * 1000))
                started = time.perf_counter()
                conn.commit()
                steps.append(("COMMIT", (time.perf_counter() - started) * 1000))
                drop_s = sum(ms for _, ms in steps) / 1000
        finally:
            conn.close()
        say(
            f"(a) retention of one day ({rows} exchanges): detach+drop {drop_s * 1000:.1f} ms,"
            f" DELETE of the same rows {delete_s * 1000:.0f} ms (same run, rolled back)"
        )
        say("(a) " + "; ".join(f"{statement} {ms:.1f} ms" for statement, ms in steps))
        self.figures["retention"] = {"rows": rows, "drop_ms": drop_s * 1000,
                                     "delete_ms": delete_s * 1000}  # fmt: skip

    # ---- (b) ----------------------------------------------------------------------
    def newest_reads(self, url: str) -> None:
        # The gateway's own engine (orjson for JSONB), as the endpoint reads with it.
        engine = make_engine(EnvSettings(database_url=url).sqlalchemy_url(), DatabaseSettings())
        timings = []
        try:
            with engine.connect() as conn:
                for _ in range(self.args.reads):
                    started = time.perf_counter()
                    rows = newest_first(conn, _newest_requests, 100)
                    timings.append((time.perf_counter() - started) * 1000)
                since = datetime.now(UTC) - timedelta(days=1)
                query = _newest_requests(since, 100).compile(
                    conn, compile_kwargs={"literal_binds": True}
                )
                plan = conn.execute(text(f"EXPLAIN (ANALYZE, COSTS OFF) {query}")).scalars().all()
        finally:
            engine.dispose()
        timings.sort()
        p50 = statistics.median(timings)
        p95 = timings[int(len(timings) * 0.95) - 1]
        say(
            f"(b) newest 100 requests (the endpoint's query, {len(rows)} rows):"
            f" p50 {p50:.2f} ms  p95 {p95:.2f} ms over {len(timings)} calls"
        )
        say("(b) its plan:\n    " + "\n    ".join(plan))
        scanned = sorted({word for line in plan for word in line.split() if PARTITION.match(word)})
        say(f"(b) partitions in the plan: {', '.join(scanned)}")
        self.figures["newest_100"] = {"p50_ms": p50, "p95_ms": p95, "partitions": scanned}

    # ---- (c) ----------------------------------------------------------------------
    def writer(self, url: str, label: str) -> float:
        spool = self.work / f"spool-{label}"
        done = subprocess.run(
            [sys.executable, str(Path(__file__).with_name("writer_bench.py")), url, str(spool),
             str(self.args.writer_exchanges)],
            capture_output=True, text=True, check=True, timeout=600,
        )  # fmt: skip
        line = next(ln for ln in done.stdout.splitlines() if ln.startswith("WRITER_JSON"))
        result = json.loads(line.removeprefix("WRITER_JSON "))
        say(f"(c) writer on {label}: {json.dumps(result)}")
        return result["exchanges_per_s"]

    def writer_ratio(self, loaded_url: str, plain_loaded_url: str) -> None:
        """Fresh 0002 against fresh 0003, then both holding the same generated exchanges,
        each pair alternated --writer-tries times so that drift hits both alike."""
        rates: dict[str, list[float]] = {"0002": [], "0003": []}
        for attempt in range(self.args.writer_tries):
            for revision in ("0002", "0003"):
                url = self.database(f"writer_{revision}_{attempt}", revision)
                rates[revision].append(self.writer(url, f"{revision} (fresh, try {attempt + 1})"))
        loaded: dict[str, list[float]] = {"0002": [], "0003": []}
        for attempt in range(self.args.writer_tries):
            for revision, url in (("0002", plain_loaded_url), ("0003", loaded_url)):
                label = f"{revision} loaded (try {attempt + 1})"
                loaded[revision].append(self.writer(url, label))
        # A log kept for good: a year of (empty) days, where the writer's FK checks leave
        # generic plans (writer.GENERIC_PLAN_MAX_PARTITIONS).
        year_url = self.database("writer_0003_year", "0003")
        self.add_past_partitions("writer_0003_year", days=365)
        year = self.writer(year_url, "0003 with a year of daily partitions")
        plain, partitioned = (statistics.median(rates[r]) for r in ("0002", "0003"))
        plain_loaded, part_loaded = (statistics.median(loaded[r]) for r in ("0002", "0003"))
        say(
            f"(c) writer_exchanges_per_s median of {self.args.writer_tries}, fresh: 0002"
            f" unpartitioned {plain:.0f}, 0003 partitioned {partitioned:.0f} (ratio"
            f" {partitioned / plain:.3f}); holding the generated exchanges: 0002"
            f" {plain_loaded:.0f}, 0003 {part_loaded:.0f} (ratio {part_loaded / plain_loaded:.3f};"
            f" against fresh 0002 {part_loaded / plain:.3f}); 0003 with a year of partitions"
            f" {year:.0f} (against fresh 0002 {year / plain:.3f})"
        )
        self.figures["writer"] = {
            "0002": plain, "0003": partitioned, "ratio": partitioned / plain,
            "0002_loaded": plain_loaded, "0003_loaded": part_loaded,
            "loaded_ratio": part_loaded / plain_loaded, "0003_year": year,
        }  # fmt: skip

    # ---- (d) ----------------------------------------------------------------------
    def migration(self) -> None:
        url = self.database("plain", "0002")
        seconds = self.generate("plain", self.args.migrate_exchanges)
        count = self.args.migrate_exchanges
        say(f"(d) generated {count} exchanges (0002 schema) in {seconds:.0f} s")
        before = self.sql("plain", "SELECT count(*), sum(id) FROM requests")[0]
        result = asyncio.run(migrate_while_writing(url, self.work / "spool-migrate"))
        if result["returncode"] != 0:
            raise RuntimeError(f"migrate failed: {result['output'][-2000:]}")
        during = count_during(url, result["sent"])
        after = self.sql(
            "plain", "SELECT count(*), sum(id) FROM requests WHERE request_id LIKE 'req_gen%'"
        )[0]
        kept = "all kept (same count and sum of ids)" if after == before else f"{before} -> {after}"
        say(
            f"(d) migrate 0002 -> 0003 of {self.args.migrate_exchanges} exchanges:"
            f" {result['migration_s']:.1f} s with the writer inserting throughout;"
            f" {result['sent']} exchanges made meanwhile: lost={during['lost']}"
            f" duplicated={during['duplicated']} without_response={during['without_response']};"
            f" writer {result['writer']}; the rows from before: {kept}"
        )
        event = next(
            (ln for ln in result["output"].splitlines() if ln.startswith("migrate_0003")), ""
        )
        say(f"(d) the migration's own account: {event}")
        self.figures["migration"] = {"seconds": result["migration_s"], **during,
                                     "sent": result["sent"], "kept": after == before}  # fmt: skip

    # ---- (e) ----------------------------------------------------------------------
    def fk_plans(self) -> None:
        batch = 500  # WriterSettings' default batch_size
        cases = [("0002", 0, "default")] + [
            ("0003", days, mode) for days in (0, 30, 90, 360) for mode in ("generic", "default")
        ]
        conns, statements = [], []
        for index, (revision, days, mode) in enumerate(cases):
            name = f"fk_{index}"
            self.database(name, revision)
            if days:
                self.add_past_partitions(name, days=days)
            conn = self.cluster.connect(name)
            if mode == "generic":
                conn.cursor().execute("SET plan_cache_mode = force_generic_plan")
            conns.append(conn)
            statement = _INSERT_BATCH if revision == "0003" else _INSERT_BATCH_UNPARTITIONED
            statements.append(str(statement.compile()).replace(":batch", "%(batch)s"))
        count = str(_PARTITION_COUNT)  # the writer's own question
        partitions = [self.sql(f"fk_{index}", count)[0][0] for index in range(len(cases))]
        rounds = self.args.fk_batches + 2  # the first two warm the caches, not counted
        records = iter(sample_records(rounds * len(cases) * batch, f"fk{time.time_ns()}"))
        timings: list[list[float]] = [[] for _ in cases]
        for round_ in range(rounds):
            for index, conn in enumerate(conns):
                payload = b"[" + b",".join(encode(next(records)) for _ in range(batch)) + b"]"
                with conn.cursor() as cursor:
                    started = time.perf_counter()
                    cursor.execute(statements[index], {"batch": payload.decode()})
                    elapsed = time.perf_counter() - started
                if round_ >= 2:
                    timings[index].append(elapsed * 1000)
        for conn in conns:
            conn.close()
        baseline = statistics.median(timings[0])
        figures = []
        for (revision, _, mode), parts, spent in zip(cases, partitions, timings, strict=True):
            p50 = statistics.median(spent)
            what = "0002 unpartitioned" if revision == "0002" else f"0003, {parts} partitions"
            say(f"(e) {batch} exchanges in one statement, {what}, {mode} plans:"
                f" p50 {p50:.1f} ms (0002 / this: {baseline / p50:.3f})")  # fmt: skip
            figures.append({"revision": revision, "partitions": parts, "plans": mode,
                            "p50_ms": round(p50, 1)})  # fmt: skip
        self.figures["fk_plans"] = figures


def main() -> None:
    args = parse_args()
    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-db-")))
        work.chmod(0o755)  # the server may run as `postgres` (we are root)
        base = work / "pg"
        base.mkdir()
        cluster = PostgresCluster.create(base, SERVER_SETTINGS)
        cluster.init()
        cluster.start()
        stack.callback(cluster.stop)
        bench = Bench(args, cluster, work)
        say(f"bench-db: parts {args.parts}, {args.exchanges} exchanges (a-c) and"
            f" {args.migrate_exchanges} (d) over {args.days} days, PostgreSQL"
            f" {cluster.bindir.parts[-2]}, {os.cpu_count()} CPUs")  # fmt: skip
        if set(args.parts) & set("abc"):
            url = bench.database("part", "head")
            bench.add_past_partitions("part")
            seconds = bench.generate("part", args.exchanges)
            size = bench.sql("part", "SELECT pg_size_pretty(pg_database_size('part'))")[0][0]
            say(f"generated {args.exchanges} exchanges (0003 schema) in {seconds:.0f} s; {size}")
        if "b" in args.parts:
            bench.newest_reads(url)
        if "a" in args.parts:
            bench.retention("part")
        if "c" in args.parts:
            # Today's schema holding the same exchanges: the loaded baseline.
            plain_loaded_url = bench.database("plain_loaded", "0002")
            seconds = bench.generate("plain_loaded", args.exchanges)
            say(f"generated {args.exchanges} exchanges (0002 schema) in {seconds:.0f} s")
            bench.writer_ratio(url, plain_loaded_url)
        if "d" in args.parts:
            bench.migration()
        if "e" in args.parts:
            bench.fk_plans()
        print("BENCH_DB_JSON " + json.dumps(bench.figures, default=str), flush=True)


if __name__ == "__main__":
    main()
