"""What a hostile (or just broken) client or upstream does to the log, not only to the answer.

Every case asserts the answer, the logged rows and the health output, and then that the
next ordinary call is still logged: nothing a peer sends may stop the log.
"""

from __future__ import annotations

import contextlib
import resource
import signal
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import orjson
import pytest

from llm_gateway.auth import KeyCache
from llm_gateway.config import hash_key
from llm_gateway.loggable import MAX_LOGGABLE_DEPTH
from llm_gateway.writer import encode

from conftest import MASTER_KEY, all_stored_once, logged_response, query
from helpers import CHAT_BODY, exchange_record, wait_until

DEAD_PID = 2**22 + 4242  # above pid_max: never a live process
DEFAULT_DEPTH_LIMIT = 128


def row(gw, pg_cluster, database, request_id: str) -> dict:
    sql = (
        "SELECT r.status_code, r.url, r.headers, r.body, r.key_alias, p.status_code,"
        " p.response_body, p.tokens_used FROM requests r"
        " JOIN responses p ON p.request_id_fk = r.id WHERE r.request_id = %s"
    )
    rows = wait_until(lambda: query(pg_cluster, database, sql, (request_id,)))
    assert len(rows) == 1
    keys = ("status", "url", "headers", "body", "key_alias", "response_status",
            "response_body", "tokens_used")  # fmt: skip
    return dict(zip(keys, rows[0], strict=True))


def writer_health(gw) -> dict:
    return gw.call("GET", "/api/health", key=None).json()


def assert_log_goes_on(gw, pg_cluster, database) -> None:
    """An ordinary call right after is answered and logged, and the writer is fine."""
    reply = gw.call("POST", "/v1/chat/completions", CHAT_BODY)
    assert reply.status == 200, reply.raw
    wait_until(lambda: all_stored_once(pg_cluster, database, [reply.headers["x-request-id"]]))
    writer = writer_health(gw)["writer"]
    assert writer["running"] and not writer["stalled"]
    assert writer["restarts"] == 0


def nested_arrays(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def chat_with_nested_field(depth: int) -> bytes:
    """A valid chat body plus one field ``depth`` arrays deep (the body nests depth + 1)."""
    return orjson.dumps(CHAT_BODY)[:-1] + b',"extra":' + nested_arrays(depth) + b"}"


# ---- bodies nested deeper than the log can hold -----------------------------------------


@pytest.mark.parametrize("depth", [DEFAULT_DEPTH_LIMIT, 253, 254, 300, 1024, 5000])
def test_a_deeply_nested_body_is_a_logged_400_and_the_log_goes_on(gateway, pg_cluster, depth):
    reply = gateway.call("POST", "/v1/chat/completions", raw=chat_with_nested_field(depth))
    assert reply.status == 400
    error = reply.json()["error"]
    # Up to 1,024 levels the JSON parses and the depth limit answers; deeper, the parser.
    assert error["code"] == ("nesting_too_deep" if depth < 1024 else "invalid_json")
    logged = row(gateway, pg_cluster, gateway.database, reply.headers["x-request-id"])
    assert logged["status"] == logged["response_status"] == 400
    assert logged["response_body"]["error"]["code"] == error["code"]
    health = writer_health(gateway)
    assert health["status"] == "healthy", health
    assert health["writer"]["quarantined"] == health["writer"]["lost"] == 0
    assert_log_goes_on(gateway, pg_cluster, gateway.database)


def test_a_body_at_the_depth_limit_is_forwarded_and_logged_whole(gateway, pg_cluster):
    body = orjson.loads(chat_with_nested_field(DEFAULT_DEPTH_LIMIT - 1))
    reply = gateway.call("POST", "/v1/chat/completions", body)
    assert reply.status == 200, reply.raw
    assert row(gateway, pg_cluster, gateway.database, reply.headers["x-request-id"])["body"] == body


def test_an_answer_too_deep_to_store_is_relayed_and_logged_reduced(
    start_gateway, pg_cluster, database
):
    gw = start_gateway(pg_cluster.url(database))
    reply = gw.call("POST", "/v1/chat/completions", {**CHAT_BODY, "model": "nested"})
    # The client gets the upstream's answer as sent; only the log cannot hold it whole.
    assert reply.status == 200
    assert nested_arrays(300) in reply.raw
    logged = row(gw, pg_cluster, database, reply.headers["x-request-id"])
    assert logged["status"] == logged["response_status"] == 200
    assert logged["tokens_used"] > 0 and logged["key_alias"] == "master"
    assert "cannot be serialized" in logged["response_body"]["_unloggable"]
    dead = [orjson.loads(line) for line in dead_letters(gw)]
    assert [d["reduced"]["request_id"] for d in dead] == [reply.headers["x-request-id"]]
    health = writer_health(gw)
    assert health["status"] == "degraded"
    assert health["writer"]["quarantined"] == 1 and health["writer"]["lost"] == 0
    assert_log_goes_on(gw, pg_cluster, database)


def dead_letters(gw) -> list[bytes]:
    return [
        line
        for path in sorted((gw.workdir / "spool").glob("rejected-*.jsonl"))
        for line in path.read_bytes().splitlines()
    ]


def test_an_endless_stream_is_relayed_and_its_log_stays_bounded(gateway, pg_cluster):
    """A provider stuck in a loop streams without end: the client gets it for as long as
    it reads, the log keeps a bounded part (and the usage), and the worker's memory does
    not grow with it."""
    limit = 32 << 20  # proxy.MAX_LOGGED_STREAM_BYTES
    body = orjson.dumps({**CHAT_BODY, "model": "endless", "stream": True})
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=30) as sock:
        sock.sendall(chat_head(b"", body) + body)
        received = sock.recv(65536)
        request_id = received.split(b"x-request-id: ")[1].split(b"\r\n")[0].decode()
        size = len(received)
        while size < limit + (8 << 20):
            size += len(sock.recv(1 << 20))
    logged = row(gateway, pg_cluster, gateway.database, request_id)
    assert logged["status"] == 499
    answer = logged["response_body"]
    assert "first 33554432 bytes" in answer["_truncated"]
    assert len(answer["choices"][0]["message"]["content"]) < limit
    assert answer["choices"][0]["message"]["content"].startswith("loop0 loop1")
    assert_log_goes_on(gateway, pg_cluster, gateway.database)


def test_an_upstream_answer_over_the_limit_is_a_logged_502(start_gateway, pg_cluster, database):
    gw = start_gateway(pg_cluster.url(database), max_response_body_bytes=16 * 1024)
    # The fake upstream echoes the prompt: a 30 KB answer.
    body = {**CHAT_BODY, "messages": [{"role": "user", "content": "word " * 6000}]}
    reply = gw.call("POST", "/v1/chat/completions", body)
    assert reply.status == 502
    assert reply.json()["error"]["code"] == "upstream_answer_too_large"
    logged = row(gw, pg_cluster, database, reply.headers["x-request-id"])
    assert logged["status"] == logged["response_status"] == 502
    assert logged["response_body"]["error"]["code"] == "upstream_answer_too_large"
    assert_log_goes_on(gw, pg_cluster, database)


@pytest.mark.parametrize("stream", [False, True])
def test_an_upstream_redirect_is_not_followed(gateway, pg_cluster, stream):
    """A redirecting upstream would get the prompt and the provider's key headers sent
    wherever it points (another host, an internal address): it is a 502, logged."""
    body = {**CHAT_BODY, "model": "redirecting", "stream": stream}
    reply = gateway.call("POST", "/v1/chat/completions", body)
    assert reply.status == 502
    assert reply.json()["error"]["code"] == "upstream_http_307"
    logged = row(gateway, pg_cluster, gateway.database, reply.headers["x-request-id"])
    assert logged["status"] == 502
    assert_log_goes_on(gateway, pg_cluster, gateway.database)


# ---- poison in the spool and at shutdown ------------------------------------------------


def test_poison_lines_in_the_spool_are_quarantined_never_fatal(
    start_gateway, pg_cluster, database, tmp_path
):
    spool = tmp_path / "spool"
    spool.mkdir()
    deep = orjson.dumps(exchange_record("req_deep", response_body={"x": 1}))
    deep = deep.replace(b'{"x":1}', nested_arrays(300))  # parses, cannot be re-serialized
    lines = [
        encode(exchange_record("req_good_1")),
        b'{"request_id": "req_torn", "rou',  # a crash mid-append
        b"[1, 2, 3]",  # JSON, but no exchange
        deep,
        encode(exchange_record("req_good_2")),
    ]
    (spool / f"pending-{DEAD_PID}-000000000001.jsonl").write_bytes(b"\n".join(lines) + b"\n")

    gw = start_gateway(pg_cluster.url(database), workdir=tmp_path)
    wait_until(lambda: all_stored_once(pg_cluster, database, ["req_good_1", "req_good_2"]))
    deep_row = row(gw, pg_cluster, database, "req_deep")
    assert "cannot be serialized" in deep_row["response_body"]["_unloggable"]
    wait_until(lambda: not list(spool.glob("pending-*")) and not list(spool.glob("active-*")))
    reasons = [orjson.loads(line)["reason"] for line in dead_letters(gw)]
    assert sum("unreadable spool line" in r for r in reasons) == 2
    health = writer_health(gw)
    assert health["status"] == "degraded"
    # The deep one is in the table (reduced); the torn and the foreign line are lost.
    assert (health["writer"]["quarantined"], health["writer"]["lost"]) == (3, 2)
    assert_log_goes_on(gw, pg_cluster, database)


def test_sigterm_with_poison_queued_and_no_database_keeps_every_exchange(
    start_gateway, restore_cluster, database, tmp_path
):
    pg_cluster = restore_cluster
    # A long flush timer keeps everything queued until the stop.
    writer = {"flush_interval_ms": 5000, "batch_size": 1000}
    first = start_gateway(pg_cluster.url(database), workdir=tmp_path, writer=writer)
    pg_cluster.stop()

    def one(i: int) -> str:
        body = {**CHAT_BODY, "model": "nested" if i % 10 == 0 else "gpt-test"}
        reply = first.call("POST", "/v1/chat/completions", body)
        assert reply.status == 200
        return reply.headers["x-request-id"]

    with ThreadPoolExecutor(8) as pool:
        ids = list(pool.map(one, range(60)))
    first.stop()
    assert '"event":"shutdown"' in first.stderr()
    assert "Traceback" not in first.stderr()

    pg_cluster.start()
    second = start_gateway(pg_cluster.url(database), workdir=tmp_path)
    wait_until(lambda: all_stored_once(pg_cluster, database, ids))
    reduced = query(
        pg_cluster,
        database,
        "SELECT count(*) FROM responses WHERE response_body ? '_unloggable'",
    )
    assert reduced == [(6,)]
    assert_log_goes_on(second, pg_cluster, database)


# ---- idle and slow connections ----------------------------------------------------------


def raise_open_file_limit(wanted: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


def test_an_idle_socket_flood_leaves_health_answering(start_gateway, pg_cluster, database):
    # The gateway inherits this limit; production's unit sets LimitNOFILE itself.
    limit = raise_open_file_limit(8192)
    flood_size = min(3000, limit - 500)
    gw = start_gateway(pg_cluster.url(database), extra_env={"GATEWAY_HTTP_HEADER_TIMEOUT_S": "3"})
    flood = []
    try:
        for i in range(flood_size):
            sock = socket.create_connection(("127.0.0.1", gw.port), timeout=5)
            if i % 2:  # half send a head they never finish, half send nothing at all
                sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nX-Slow: ")
            flood.append(sock)
        probes = []
        for _ in range(10):
            started = time.monotonic()
            reply = gw.call("GET", "/api/health", key=None)
            probes.append((reply.status, time.monotonic() - started))
            time.sleep(0.1)
        assert all(status == 200 for status, _ in probes), probes
        assert max(seconds for _, seconds in probes) < 1.0, probes

        # After the header timeout the server closes every one of them, with a 408.
        time.sleep(3.5)
        answers = []
        for sock in flood:
            sock.settimeout(2)
            answers.append(sock.recv(200))
        assert all(a == b"" or a.startswith(b"HTTP/1.1 408 ") for a in answers)
        assert sum(a.startswith(b"HTTP/1.1 408 ") for a in answers) == flood_size
    finally:
        for sock in flood:
            sock.close()
    assert_log_goes_on(gw, pg_cluster, database)


def test_beyond_the_connection_limit_the_answer_is_a_json_503(start_gateway, pg_cluster, database):
    gw = start_gateway(pg_cluster.url(database), extra_env={"GATEWAY_HTTP_MAX_CONNECTIONS": "16"})
    idle = [socket.create_connection(("127.0.0.1", gw.port), timeout=5) for _ in range(16)]
    try:
        time.sleep(0.2)  # all accepted
        reply = gw.call("GET", "/api/health", key=None)
        assert reply.status == 503
        assert reply.headers["content-type"] == "application/json"
        assert reply.json()["error"]["code"] == "too_many_connections"
    finally:
        for sock in idle:
            sock.close()
    time.sleep(0.2)  # the server noticed
    assert_log_goes_on(gw, pg_cluster, database)


def test_a_slow_body_is_timed_out(start_gateway, pg_cluster, database):
    gw = start_gateway(pg_cluster.url(database), extra_env={"GATEWAY_HTTP_BODY_TIMEOUT_S": "1"})
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\n"
            b"Authorization: Bearer " + MASTER_KEY.encode() + b"\r\n"
            b'Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"model"'
        )
        started = time.monotonic()
        answer = sock.recv(4096)
        assert time.monotonic() - started < 3
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b'"code":"timeout"' in answer
    assert_log_goes_on(gw, pg_cluster, database)


def test_a_body_still_arriving_does_not_hold_up_a_stop(start_gateway, pg_cluster, database):
    """A restart must not wait for the body timeout of a slow (or slowloris) client: the
    request is answered 503 at once and the process stops."""
    gw = start_gateway(pg_cluster.url(database))  # body timeout: 30 s
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\n"
            b"Authorization: Bearer " + MASTER_KEY.encode() + b"\r\n"
            b'Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"model"'
        )
        time.sleep(0.3)
        started = time.monotonic()
        gw.proc.send_signal(signal.SIGTERM)
        answer = sock.recv(4096)
        gw.proc.wait(40)
        assert time.monotonic() - started < 5
    assert answer.startswith(b"HTTP/1.1 503 ")
    assert b'"code":"gateway_shutdown"' in answer
    assert '"event":"shutdown"' in gw.stderr()


def test_a_body_that_arrives_just_after_a_stop_began_is_served_and_logged(
    start_gateway, pg_cluster, database
):
    """Head and body often come in separate writes: a stop (a HUP's old workers under
    load) that falls between them must not refuse the request."""
    gw = start_gateway(pg_cluster.url(database))
    body = orjson.dumps(CHAT_BODY)
    with socket.create_connection(("127.0.0.1", gw.port), timeout=10) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\n"
            b"Authorization: Bearer " + MASTER_KEY.encode() + b"\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
        )
        time.sleep(0.3)
        gw.proc.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        sock.sendall(body)
        answer = b""
        while chunk := sock.recv(65536):  # the connection closes after the answer
            answer += chunk
    gw.proc.wait(40)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
    request_id = answer.split(b"x-request-id: ")[1].split(b"\r\n")[0].decode()
    status, _ = logged_response(pg_cluster, database, request_id)
    assert status == 200


# ---- header limits ------------------------------------------------------------------------


def raw_request(port: int, head: bytes, body: bytes = b"") -> bytes:
    """Send a request as given; return what the server answered before closing."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        # The server may answer and close before reading it all.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(head + body)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:
            pass
        return b"".join(chunks)


def chat_head(extra_headers: bytes, body: bytes) -> bytes:
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\n"
        b"Authorization: Bearer " + MASTER_KEY.encode() + b"\r\n"
        b"Content-Type: application/json\r\n"
        + extra_headers
        + b"Content-Length: %d\r\n\r\n" % len(body)
    )  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "code"),
    [
        (b"X-Big: " + b"a" * 20_000 + b"\r\n", "request_header_fields_too_large"),
        (b"".join(b"X-H%d: v\r\n" % i for i in range(150)), "too_many_headers"),
        (b"".join(b"X-P%d: %s\r\n" % (i, b"b" * 10_000) for i in range(8)),
         "request_header_fields_too_large"),
    ],
    ids=["one-20KB-header", "150-headers", "80KB-of-headers"],
)  # fmt: skip
def test_oversized_or_numerous_headers_get_a_431(gateway, pg_cluster, extra, code):
    body = orjson.dumps(CHAT_BODY)
    answer = raw_request(gateway.port, chat_head(extra, body), body)
    head, _, payload = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 ")
    assert orjson.loads(payload)["error"]["code"] == code
    assert_log_goes_on(gateway, pg_cluster, gateway.database)


def test_a_64_mib_header_is_refused_early(gateway, pg_cluster):
    started = time.monotonic()
    head = b"GET /api/health HTTP/1.1\r\nHost: gw\r\nX-Huge: " + b"a" * (64 << 20)
    answer = raw_request(gateway.port, head)
    assert answer.startswith(b"HTTP/1.1 431 ")
    assert time.monotonic() - started < 5
    assert_log_goes_on(gateway, pg_cluster, gateway.database)


def test_a_long_header_is_logged_truncated(gateway, pg_cluster):
    value = "v" * 10_000
    reply = gateway.call("POST", "/v1/chat/completions", CHAT_BODY, headers={"X-Long": value})
    assert reply.status == 200
    logged = row(gateway, pg_cluster, gateway.database, reply.headers["x-request-id"])
    assert logged["headers"]["x-long"].startswith("v" * 4096 + "...[truncated 5904 chars]")


# ---- credentials ----------------------------------------------------------------------------

SECRET_HEADERS = {
    "X-Goog-Api-Key": "sk-goog-secret-1",
    "X-Auth-Token": "sk-auth-secret-2",
    "OpenAI-Api-Key": "sk-openai-secret-3",
    "Ocp-Apim-Subscription-Key": "sk-apim-secret-4",
    "X-Amz-Security-Token": "sk-amz-secret-5",
    "X-Client-Secret": "sk-client-secret-6",
    "X-Hub-Signature-256": "sha256=sk-signature-7",
    "Proxy-Authorization": "Basic sk-proxy-secret-8",
}
SECRET_QUERY = {"api-key": "sk-query-secret-9", "access_token": "sk-query-secret-10",
                "api%2Dkey": "sk-query-secret-11", "sig": "sk-query-secret-12"}  # fmt: skip


def test_credentials_in_headers_and_query_never_reach_the_log(gateway, pg_cluster):
    query_string = "&".join(f"{k}={v}" for k, v in SECRET_QUERY.items()) + "&debug=1"
    reply = gateway.call(
        "POST",
        f"/v1/chat/completions?{query_string}",
        CHAT_BODY,
        headers={**SECRET_HEADERS, "Host": "evil.example", "X-Trace": "t1"},
    )
    assert reply.status == 200
    logged = row(gateway, pg_cluster, gateway.database, reply.headers["x-request-id"])
    # The route and query, not the client-chosen Host (which stays in the headers).
    assert logged["url"].startswith("/v1/chat/completions?api-key=[REDACTED]&")
    assert logged["url"].endswith("&debug=1")
    assert logged["headers"]["host"] == "evil.example"
    assert logged["headers"]["x-trace"] == "t1"
    for name in SECRET_HEADERS:
        assert logged["headers"][name.lower()] == "[REDACTED]"
    stored = orjson.dumps(logged).decode()
    listed = gateway.call("GET", "/api/requests?limit=50").raw.decode()
    for secret in [*SECRET_HEADERS.values(), *SECRET_QUERY.values(), MASTER_KEY]:
        secret_part = secret.split(" ")[-1].removeprefix("sha256=")
        assert secret_part not in stored
        assert secret_part not in listed


def test_credentials_recognised_by_shape_or_inside_values_never_reach_the_log(gateway, pg_cluster):
    """Names are not the only tell: a Bearer value under a custom header, a key-shaped
    value, a password in a URL, a token in a URL inside a header, a ";"-separated query
    pair, a key in the body's api_key field."""
    secrets = {
        "bearer": "zz-secret-bearer-1",
        "keyshape": "sk-proj-zzsecretkeyshape2",
        "referer_pw": "zz-secret-userinfo-3",
        "referer_tok": "zz-secret-reftoken-4",
        "original_url": "zz-secret-origurl-5",
        "passphrase": "zz-secret-passphrase-6",
        "semicolon": "zz-secret-semicolon-7",
        "redirect_pw": "zz-secret-redirect-8",
        "bare": "sk-zzsecretbarequery9",
        "body": "zz-secret-body-10",
    }
    query = (
        f"debug=1;api-key={secrets['semicolon']}"
        f"&redirect=https%3A%2F%2Fu%3A{secrets['redirect_pw']}%40h%2F&{secrets['bare']}"
    )
    headers = {
        "X-Custom": f"Bearer {secrets['bearer']}",
        "X-Upstream": secrets["keyshape"],
        "Referer": f"https://u:{secrets['referer_pw']}@app.example/?token={secrets['referer_tok']}",
        "X-Original-URL": f"/v1/chat/completions?api_key={secrets['original_url']}",
        "X-Passphrase": secrets["passphrase"],
        "X-Trace": "t2",
    }
    body = {**CHAT_BODY, "api_key": secrets["body"], "max_tokens": 7}
    reply = gateway.call("POST", f"/v1/chat/completions?{query}", body, headers=headers)
    assert reply.status == 200
    logged = row(gateway, pg_cluster, gateway.database, reply.headers["x-request-id"])
    stored = orjson.dumps(logged).decode()
    listed = gateway.call("GET", "/api/requests?limit=50").raw.decode()
    for name, secret in secrets.items():
        assert secret not in stored, name
        assert secret not in listed, name
    # What is no credential stays as it was.
    assert logged["url"].startswith("/v1/chat/completions?debug=1;api-key=[REDACTED]&")
    assert logged["headers"]["x-trace"] == "t2"
    assert logged["headers"]["referer"].startswith("https://u:[REDACTED]@app.example/")
    assert logged["body"]["api_key"] == "[REDACTED]"
    assert logged["body"]["max_tokens"] == 7
    assert logged["body"]["messages"] == CHAT_BODY["messages"]


# ---- keys ------------------------------------------------------------------------------------


def test_padded_variants_of_a_key_share_one_cache_entry():
    key = "sk-valid-key"
    cache = KeyCache({hash_key(key): "team"})
    variants = [f"Bearer {key}", f"bearer {key}", f"BEARER   {key}  ", f"  Bearer {key}\t"]
    variants += [f"Bearer {key}{' ' * n}" for n in range(1, 200)]
    assert {cache.alias(v) for v in variants} == {"team"}
    assert len(cache) == 1 and cache.cached_bytes == len(key)
    assert cache.alias(f"Bearer {key}x") is None


def test_the_key_cache_is_bounded_in_bytes():
    keys = [f"sk-{i:04d}-" + "k" * 1000 for i in range(100)]
    cache = KeyCache({hash_key(k): f"a{i}" for i, k in enumerate(keys)}, max_bytes=10_000)
    assert [cache.alias(f"Bearer {k}") for k in keys] == [f"a{i}" for i in range(100)]
    assert cache.cached_bytes <= 10_000 and len(cache) < 10


def test_a_padded_key_is_accepted_and_logged_by_alias(gateway, pg_cluster):
    reply = gateway.call(
        "POST",
        "/v1/chat/completions",
        CHAT_BODY,
        key=None,
        headers={"Authorization": f"Bearer {MASTER_KEY}" + " " * 5000},
    )
    assert reply.status == 200
    logged = row(gateway, pg_cluster, gateway.database, reply.headers["x-request-id"])
    assert logged["key_alias"] == "master"


# ---- clients that leave -------------------------------------------------------------------


def test_a_client_that_leaves_before_a_plain_answer_is_logged_499(
    start_gateway, pg_cluster, database
):
    gw = start_gateway(pg_cluster.url(database))
    body = orjson.dumps({**CHAT_BODY, "model": "slow-ok"})  # the upstream answers after 3 s
    with socket.create_connection(("127.0.0.1", gw.port), timeout=5) as sock:
        sock.sendall(chat_head(b"", body) + body)
        time.sleep(0.5)
    rows = wait_until(
        lambda: query(
            pg_cluster,
            database,
            "SELECT r.status_code, p.status_code, p.response_body, p.tokens_used"
            " FROM requests r JOIN responses p ON p.request_id_fk = r.id"
            " WHERE r.model = 'slow-ok'",
        ),
        timeout=15,
    )
    ((status, response_status, response_body, tokens),) = rows
    assert status == response_status == 499
    # The upstream's answer is kept (it was paid for), with why nobody received it.
    assert response_body["choices"][0]["message"]["content"]
    assert response_body["error"]["code"] == "client_disconnected"
    assert tokens > 0
    assert_log_goes_on(gw, pg_cluster, database)


def test_a_stream_reader_that_stops_reading_is_dropped_and_logged(
    start_gateway, pg_cluster, database
):
    gw = start_gateway(
        pg_cluster.url(database),
        extra_env={"GATEWAY_HTTP_SEND_TIMEOUT_S": "1"},
        max_request_body_bytes=1 << 20,
    )
    # The fake upstream echoes the prompt: about 17 MB of events, more than the sockets
    # hold for a client that reads nothing.
    prompt = {"role": "user", "content": "a " * 300_000}
    body = orjson.dumps({**CHAT_BODY, "stream": True, "messages": [prompt]})
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", gw.port))
        sock.sendall(chat_head(b"", body) + body)
        head = sock.recv(1024)  # and nothing more: the reader stalls
        request_id = head.split(b"x-request-id: ")[1].split(b"\r\n")[0].decode()
        started = time.monotonic()
        status, logged = logged_response(pg_cluster, database, request_id, timeout=20)
        # Logged while the client still holds its socket: the gateway let go of it.
        assert time.monotonic() - started < 10
    assert status == 499
    assert logged["error"]["code"] == "client_disconnected"
    assert logged["choices"][0]["message"]["content"].startswith("Fake reply: a a")
    assert_log_goes_on(gw, pg_cluster, database)


def test_max_request_json_depth_cannot_exceed_what_the_log_holds():
    from llm_gateway.config import ConfigError, build_config
    from llm_gateway.settings import EnvSettings

    raw = {
        "model_list": [
            {"model_name": "m", "litellm_params": {"model": "openai/m", "api_key": "k"}}
        ],
        "general_settings": {"master_key": "mk", "max_request_json_depth": MAX_LOGGABLE_DEPTH + 1},
    }
    with pytest.raises(ConfigError, match="max_request_json_depth"):
        build_config(raw, EnvSettings())
