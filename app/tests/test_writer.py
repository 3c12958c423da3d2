"""The exchange writer: batching, outages (spool + replay exactly once), shutdown, sync mode."""

import asyncio
import json
import signal
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import create_engine

from llm_gateway import metrics
from llm_gateway.config import DatabaseSettings, Deployment, WriterSettings
from llm_gateway.proxy import _token_count, usage_columns
from llm_gateway.spool import Spool
from llm_gateway.writer import STALL_AFTER_S, ExchangeWriter, encode, insert_exchanges

from conftest import all_stored_once, query
from helpers import CHAT_BODY, exchange_record, wait_until


def chat_many(gateway, count: int, concurrency: int = 8, stream_every: int = 0) -> list[str]:
    """Send ``count`` chats; every response must be a 200. Returns their request ids."""

    def one(i: int) -> str:
        body = {**CHAT_BODY, "stream": bool(stream_every and i % stream_every == 0)}
        reply = gateway.call("POST", "/v1/chat/completions", body)
        assert reply.status == 200, reply.raw
        return reply.headers["x-request-id"]

    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(one, range(count)))


def test_writer_commits_in_batches(start_gateway, pg_cluster, database):
    gw = start_gateway(
        pg_cluster.url(database), writer={"flush_interval_ms": 200, "batch_size": 50}
    )
    ids = chat_many(gw, 100, concurrency=16)
    wait_until(lambda: all_stored_once(pg_cluster, database, ids))
    writer = gw.call("GET", "/api/db-stats").json()["writer"]
    assert writer["exchanges_written"] == 100
    assert writer["batches"] < 100


def test_full_queue_overflows_to_the_spool_without_loss(start_gateway, pg_cluster, database):
    # A two-slot queue and a slow flush timer: most exchanges find the queue full.
    writer = {"queue_size": 2, "batch_size": 2, "flush_interval_ms": 300}
    gw = start_gateway(pg_cluster.url(database), writer=writer)
    ids = chat_many(gw, 30)
    wait_until(lambda: all_stored_once(pg_cluster, database, ids))
    stats = gw.call("GET", "/api/db-stats").json()["writer"]
    assert stats["queue_full"] > 0
    assert stats["spooled"] >= stats["queue_full"]


def test_database_outage_spools_then_replays_exactly_once(start_gateway, restore_cluster, database):
    pg_cluster = restore_cluster
    gw = start_gateway(pg_cluster.url(database))
    before = chat_many(gw, 10)
    wait_until(lambda: all_stored_once(pg_cluster, database, before))

    pg_cluster.stop()
    during = chat_many(gw, 40, stream_every=4)  # chat keeps working
    health = gw.call("GET", "/api/health", key=None)
    assert health.status == 503
    assert health.json()["database"]["ok"] is False
    # A balancer checking liveness keeps this gateway in rotation: it serves and spools.
    assert gw.call("GET", "/api/health/liveness", key=None).status == 200
    wait_until(lambda: gw.call("GET", "/api/health").json()["writer"]["spool_backlog"] == 40)
    assert list(gw.workdir.joinpath("spool").glob("*.jsonl"))
    assert gw.call("GET", "/api/requests").status == 503

    pg_cluster.start()
    after = chat_many(gw, 10)
    ids = before + during + after
    wait_until(lambda: all_stored_once(pg_cluster, database, ids))
    assert query(pg_cluster, database, "SELECT count(*) FROM requests") == [(60,)]
    assert query(pg_cluster, database, "SELECT count(*) FROM responses") == [(60,)]
    health = wait_until(lambda: (h := gw.call("GET", "/api/health")).status == 200 and h)
    assert health.json()["writer"]["spool_backlog"] == 0
    writer = gw.call("GET", "/api/db-stats").json()["writer"]
    assert writer["spooled"] >= 40
    assert writer["replayed"] >= 40


def test_service_starts_without_database_and_catches_up(start_gateway, restore_cluster, database):
    pg_cluster = restore_cluster
    pg_cluster.stop()
    gw = start_gateway(pg_cluster.url(database))
    wait_until(lambda: "db_unavailable" in gw.stderr())
    # The operator is told why, in the driver's words, not just an exception class.
    line = next(ln for ln in gw.stderr().splitlines() if ln.startswith("db_unavailable"))
    assert "connection" in json.loads(line.split(" ", 1)[1])["reason"].lower()
    ids = chat_many(gw, 5)
    assert gw.call("GET", "/api/health").status == 503

    pg_cluster.start()
    wait_until(lambda: "db_connected" in gw.stderr())
    wait_until(lambda: all_stored_once(pg_cluster, database, ids))
    assert gw.call("GET", "/api/health").status == 200


def test_without_database_url_exchanges_stay_in_the_spool(start_gateway):
    gw = start_gateway(None)
    assert "db_unavailable" in gw.stderr()
    chat_many(gw, 3)
    gw.stop()
    spool = gw.workdir / "spool"
    lines = sum(len(p.read_bytes().splitlines()) for p in spool.glob("*.jsonl"))
    assert lines == 3
    assert not list(spool.glob("rejected-*"))


def test_sigterm_drains_the_queue(start_gateway, pg_cluster, database):
    # A long flush timer keeps exchanges queued until the stop.
    gw = start_gateway(
        pg_cluster.url(database), writer={"flush_interval_ms": 5000, "batch_size": 1000}
    )
    ids = chat_many(gw, 20)
    gw.stop()
    assert '"event":"shutdown"' in gw.stderr()
    assert all_stored_once(pg_cluster, database, ids)


def test_a_stop_while_the_database_hangs_spools_every_answered_exchange(
    start_gateway, pg_cluster, database, tmp_path
):
    """A database that stops answering (here: a lock held on the table) hangs the writer
    thread in its INSERT. A stop must still put every answered exchange on disk within
    its drain time, not wait for that thread until the worker is killed."""
    gw = start_gateway(
        pg_cluster.url(database),
        workdir=tmp_path,
        extra_env={"GATEWAY_HTTP_SHUTDOWN_DRAIN_S": "2"},  # the drain waits 1.6 s
    )
    first = chat_many(gw, 1)
    wait_until(lambda: all_stored_once(pg_cluster, database, first))
    locker = pg_cluster.connect(database)
    try:
        with locker.cursor() as cur:
            cur.execute("BEGIN; LOCK TABLE requests IN ACCESS EXCLUSIVE MODE")
        ids = chat_many(gw, 20)
        gw.proc.send_signal(signal.SIGTERM)

        def spooled_ids() -> set[str]:
            lines = [
                line
                for path in (tmp_path / "spool").glob("*.jsonl")
                if not path.name.startswith("rejected-")
                for line in path.read_bytes().splitlines()
            ]
            return {json.loads(line)["request_id"] for line in lines}

        # On disk while the database still hangs.
        wait_until(lambda: set(ids) <= spooled_ids(), timeout=10)
    finally:
        with locker.cursor() as cur:
            cur.execute("ROLLBACK")
        locker.close()
    gw.proc.wait(30)
    second = start_gateway(pg_cluster.url(database), workdir=tmp_path)
    wait_until(lambda: all_stored_once(pg_cluster, database, first + ids))
    assert second.call("GET", "/api/health", key=None).status == 200


def test_spool_left_at_shutdown_is_replayed_by_the_next_process(
    start_gateway, restore_cluster, database
):
    pg_cluster = restore_cluster
    first = start_gateway(pg_cluster.url(database))
    pg_cluster.stop()
    ids = chat_many(first, 12, stream_every=3)
    first.stop()
    assert list(first.workdir.joinpath("spool").glob("*.jsonl"))

    pg_cluster.start()
    start_gateway(pg_cluster.url(database), workdir=first.workdir)
    wait_until(lambda: all_stored_once(pg_cluster, database, ids))
    assert not list(first.workdir.joinpath("spool").glob("*.jsonl"))


def test_sync_mode_commits_before_responding(start_gateway, pg_cluster, database):
    gw = start_gateway(pg_cluster.url(database), log_mode="sync")
    nul = {**CHAT_BODY, "messages": [{"role": "user", "content": "a\u0000b"}]}
    for body in (CHAT_BODY, {**CHAT_BODY, "model": "upstream-500"}, nul):
        reply = gw.call("POST", "/v1/chat/completions", body)
        # No waiting: the row must already be there when the answer arrives.
        assert all_stored_once(pg_cluster, database, [reply.headers["x-request-id"]])
        assert float(reply.headers["x-db-overhead"].removesuffix("ms")) > 0


def test_sync_mode_under_concurrency_commits_every_exchange_before_its_answer(
    start_gateway, pg_cluster, database
):
    gw = start_gateway(pg_cluster.url(database), log_mode="sync")

    def one(i: int) -> str:
        body = {**CHAT_BODY, "stream": i % 5 == 0}
        reply = gw.call("POST", "/v1/chat/completions", body)
        assert reply.status == 200, reply.raw
        request_id = reply.headers["x-request-id"]
        # Checked the moment this answer arrives, while other requests are in flight.
        assert all_stored_once(pg_cluster, database, [request_id]), request_id
        return request_id

    with ThreadPoolExecutor(16) as pool:
        ids = list(pool.map(one, range(80)))
    assert all_stored_once(pg_cluster, database, ids)
    writer = gw.call("GET", "/api/db-stats").json()["writer"]
    assert writer["exchanges_written"] == 80
    # Group commit: requests that waited together shared one statement.
    assert writer["batches"] < 80
    assert writer["spooled"] == 0


def test_sync_mode_spools_when_the_database_is_down(start_gateway, restore_cluster, database):
    pg_cluster = restore_cluster
    gw = start_gateway(pg_cluster.url(database), log_mode="sync")
    pg_cluster.stop()
    ids = chat_many(gw, 5)
    pg_cluster.start()
    wait_until(lambda: all_stored_once(pg_cluster, database, ids))


def new_writer(engine, spool_dir, **settings) -> ExchangeWriter:
    spool = Spool(spool_dir)
    spool.open()
    return ExchangeWriter(engine, spool, WriterSettings(**settings), DatabaseSettings())


def writer_counts_since(before: dict) -> dict:
    """How this process's writer metrics moved since ``before`` (a writer_summary)."""
    after = metrics.writer_summary()
    keys = ("exchanges_written", "failures", "spooled", "lost", "restarts")
    return {key: after[key] - before[key] for key in keys}


def spooled(*request_ids: str) -> list[bytes]:
    return [encode(exchange_record(request_id)) for request_id in request_ids]


def test_replay_is_idempotent_and_hands_over_torn_lines(tmp_path, pg_cluster, database):
    engine = create_engine(pg_cluster.url(database))
    unreadable = []

    def write(batch):
        with engine.begin() as conn:
            insert_exchanges(conn, batch)

    try:
        spool = Spool(tmp_path)
        spool.open()
        spool.append(spooled(*(f"req_{i}" for i in range(5))))
        # A crash after committing but before the file was removed: same lines again.
        spool.append(spooled(*(f"req_{i}" for i in range(3))))
        with spool.active.open("ab") as handle:
            handle.write(b'{"request_id": "req_torn", "rou')  # crash mid-append
        assert spool.replay(write, lambda raw, why: unreadable.append(raw), chunk=2) == 8
        assert unreadable == [b'{"request_id": "req_torn", "rou']
        assert not spool.has_backlog()
    finally:
        engine.dispose()
    assert query(pg_cluster, database, "SELECT count(*) FROM requests") == [(5,)]
    assert query(pg_cluster, database, "SELECT count(*) FROM responses") == [(5,)]


def test_spool_of_a_dead_worker_is_adopted(tmp_path):
    orphan = Spool(tmp_path, pid=2**22 + 12345)  # above pid_max: never a live process
    orphan.open()
    orphan.append(spooled("req_orphan"))
    adopter = Spool(tmp_path)
    adopter.open()
    assert adopter.backlog == 1
    seen = []
    adopter.replay(lambda batch: seen.extend(e["request_id"] for e in batch), pytest.fail)
    assert seen == ["req_orphan"]
    assert not list(tmp_path.glob("*.jsonl"))


def test_spool_of_a_worker_that_exits_later_is_adopted_and_replayed(
    start_gateway, pg_cluster, database, tmp_path
):
    """A graceful reload (gunicorn HUP) starts new workers before the old ones have
    finished their streams and spooled what the database would not take: the running
    gateway takes over such files, not only the next one to start."""
    gw = start_gateway(pg_cluster.url(database), workdir=tmp_path)
    wait_until(lambda: gw.call("GET", "/api/health", key=None).status == 200)
    dead_pid = 2**22 + 54321  # above pid_max: never a live process
    left = tmp_path / "spool" / f"active-{dead_pid}.jsonl"
    left.write_bytes(b"\n".join(spooled("req_left_1", "req_left_2")) + b"\n")
    wait_until(lambda: all_stored_once(pg_cluster, database, ["req_left_1", "req_left_2"]))
    assert not left.exists()
    wait_until(
        lambda: gw.call("GET", "/api/health", key=None).json()["writer"]["spool_backlog"] == 0
    )


def test_an_exchange_committed_twice_is_stored_once(tmp_path, pg_cluster, database):
    engine = create_engine(pg_cluster.url(database))
    writer = new_writer(engine, tmp_path)

    async def scenario():
        writer.start()
        # Two statements, as when a spool replay repeats an exchange already committed.
        await writer.commit_now(exchange_record("req_once"))
        await writer.commit_now(exchange_record("req_once"))
        await writer.stop()

    try:
        asyncio.run(scenario())
    finally:
        engine.dispose()
    rows = query(
        pg_cluster,
        database,
        "SELECT r.request_id, p.tokens_used, p.cost FROM requests r"
        " JOIN responses p ON p.request_id_fk = r.id",
    )
    assert [(r[0], r[1], float(r[2])) for r in rows] == [("req_once", 3, 0.000005)]


def test_batch_with_repeated_request_ids_is_stored_exactly_once(pg_cluster, database):
    engine = create_engine(pg_cluster.url(database))
    try:
        with engine.begin() as conn:
            first = insert_exchanges(conn, [exchange_record("req_a"), exchange_record("req_b")])
        with engine.begin() as conn:
            # A replay after a crash: old lines again, one of them twice in the same chunk.
            second = insert_exchanges(
                conn, [exchange_record("req_a"), exchange_record("req_c"), exchange_record("req_c")]
            )
    finally:
        engine.dispose()
    assert (first, second) == (2, 1)
    assert all_stored_once(pg_cluster, database, ["req_a", "req_b", "req_c"])
    rows = query(
        pg_cluster,
        database,
        "SELECT r.created_at = to_timestamp(1700000000), p.latency_ms,"
        " p.created_at - r.created_at, r.body->>'model', p.response_body"
        " FROM requests r JOIN responses p ON p.request_id_fk = r.id"
        " WHERE r.request_id = 'req_a'",
    )
    ((same_start, latency, delta, model, response_body),) = rows
    assert same_start and float(latency) == 1.23 and model == "gpt-test"
    assert delta.total_seconds() == pytest.approx(0.001234)
    assert response_body == {"ok": True}


def test_a_nul_in_one_exchange_does_not_split_its_batch(tmp_path, pg_cluster, database):
    """U+0000, which JSONB refuses, is replaced before the batch is sent: the batch goes
    in as one statement, instead of failing and being retried exchange by exchange (the
    database counts each refused statement as a rolled-back transaction)."""

    def rolled_back() -> int:
        sql = "SELECT xact_rollback FROM pg_stat_database WHERE datname = current_database()"
        return query(pg_cluster, database, sql)[0][0]

    def rollbacks_writing(batch: list[dict]) -> int:
        before = rolled_back()
        engine = create_engine(pg_cluster.url(database))
        writer = new_writer(engine, tmp_path)
        try:
            writer._write_batch(batch)
            writer._close_conn()
        finally:
            engine.dispose()  # backends flush their statistics when they exit
        time.sleep(0.5)
        return rolled_back() - before

    clean = [exchange_record(f"req_clean_{i}") for i in range(200)]
    with_nul = [exchange_record(f"req_batch_{i}") for i in range(200)]
    with_nul[7] = exchange_record("req_nul", body={"messages": [{"content": "a\x00b"}]})
    assert rollbacks_writing(with_nul) == rollbacks_writing(clean)
    ids = [exchange["request_id"] for exchange in clean + with_nul]
    assert all_stored_once(pg_cluster, database, ids)
    stored = query(pg_cluster, database, "SELECT body FROM requests WHERE request_id = 'req_nul'")
    assert stored[0][0]["messages"][0]["content"] == "a\ufffdb"


def test_usage_an_upstream_inflates_still_fits_the_columns(pg_cluster, database):
    """An upstream's counts are its word: INT4-max prompt and completion without a total,
    at a price that makes the cost overflow, must not get the exchange refused."""
    usage = {"prompt_tokens": 2**31 - 1, "completion_tokens": 2**31 - 1}
    priced = Deployment("m", "m", "http://127.0.0.1:1/v1", None, None, 0.001, 0.002)
    prompt, completion, total, cost = usage_columns(usage, priced)
    assert (prompt, completion, total, cost) == (2**31 - 1, 2**31 - 1, None, None)
    record = exchange_record(
        "req_inflated",
        prompt_tokens=prompt,
        completion_tokens=completion,
        tokens_used=total,
        cost=cost,
    )
    engine = create_engine(pg_cluster.url(database))
    try:
        with engine.begin() as conn:
            assert insert_exchanges(conn, [record]) == 1
    finally:
        engine.dispose()
    assert usage_columns({"prompt_tokens": 3, "completion_tokens": 4}, priced) == (3, 4, 7, 0.011)


def test_writer_replaces_its_kept_connection_after_a_server_restart(
    tmp_path, restore_cluster, database
):
    pg_cluster = restore_cluster
    engine = create_engine(pg_cluster.url(database), pool_pre_ping=True)
    writer = new_writer(engine, tmp_path)
    before = metrics.writer_summary()
    try:
        writer._write_batch([exchange_record("req_before")])
        pg_cluster.stop()
        pg_cluster.start()
        # The kept connection is dead; one fresh connection must do, not an outage.
        writer._write_batch([exchange_record("req_after")])
        moved = writer_counts_since(before)
        assert (moved["exchanges_written"], moved["failures"], moved["spooled"]) == (2, 0, 0)
        writer._close_conn()
    finally:
        engine.dispose()
    assert all_stored_once(pg_cluster, database, ["req_before", "req_after"])


@pytest.mark.parametrize(
    ("value", "count"),
    [(11, 11), (11.0, 11), (True, None), ("11", None), (float("nan"), None), (-1, None),
     (2**31, None), (None, None)],
)  # fmt: skip
def test_token_counts_become_ints_the_columns_accept(value, count):
    assert _token_count(value) == count


def test_a_failing_writer_task_is_restarted_and_keeps_its_batch(
    tmp_path, pg_cluster, database, capfd
):
    """No record can make the writer fail any more, so the supervisor is proved with an
    injected fault: the first batch's write raises as a bug would."""
    engine = create_engine(pg_cluster.url(database))
    writer = new_writer(engine, tmp_path, flush_interval_ms=1)
    before = metrics.writer_summary()
    write_batch = writer._write_batch
    calls = []

    def fails_once(batch, path="live"):
        calls.append(len(batch))
        if len(calls) == 1:
            raise RuntimeError("injected fault")
        write_batch(batch, path)

    writer._write_batch = fails_once

    async def scenario():
        writer.start()
        writer.submit(exchange_record("req_in_crash"))
        while writer_counts_since(before)["restarts"] == 0:
            await asyncio.sleep(0.01)
        assert writer.running
        writer.submit(exchange_record("req_after_crash"))
        await writer.stop()

    try:
        asyncio.run(scenario())
    finally:
        engine.dispose()
    assert all_stored_once(pg_cluster, database, ["req_in_crash", "req_after_crash"])
    assert "writer_restarted" in capfd.readouterr().err
    assert writer_counts_since(before)["lost"] == 0


def test_a_writer_that_stops_draining_is_reported_stalled(tmp_path):
    writer = new_writer(None, tmp_path)
    writer.submit(exchange_record("req_waiting"))  # never started: nothing drains the queue
    assert not writer.running
    assert not writer.stalled  # not for long enough yet
    writer._last_progress -= STALL_AFTER_S + 1
    assert writer.stalled
    writer.publish_state()
    summary = metrics.writer_summary()
    assert (summary["running"], summary["stalled"], summary["queue_depth"]) == (False, True, 1)
