"""POST /v1/chat/completions: forwarding, auth, validation, upstream errors, streaming."""

import http.client

import orjson
import pytest

from conftest import MASTER_KEY, TEAM_KEY, query
from helpers import CHAT_BODY, wait_until


def logged(gateway, pg_cluster, request_id: str):
    """The (request, response) row pair for ``request_id`` once the writer committed it."""
    sql = (
        'SELECT r.model, r.status_code, r.key_alias, r."user", r.headers, r.body,'
        " p.status_code, p.prompt_tokens, p.completion_tokens, p.tokens_used, p.cost,"
        " p.response_body, p.latency_ms, r.route, r.method"
        " FROM requests r JOIN responses p ON p.request_id_fk = r.id WHERE r.request_id = %s"
    )
    rows = wait_until(lambda: query(pg_cluster, gateway.database, sql, (request_id,)))
    assert len(rows) == 1
    keys = (
        "model",
        "status",
        "key_alias",
        "user",
        "headers",
        "body",
        "response_status",
        "prompt_tokens",
        "completion_tokens",
        "tokens_used",
        "cost",
        "response_body",
        "latency_ms",
        "route",
        "method",
    )
    return dict(zip(keys, rows[0], strict=True))


def assert_openai_error(reply, status: int):
    assert reply.status == status
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"]
    return error


def assert_gateway_headers(reply):
    assert reply.headers["x-request-id"].startswith("req_")
    assert reply.headers["x-db-overhead"].endswith("ms")
    float(reply.headers["x-db-overhead"].removesuffix("ms"))
    assert reply.headers["x-total-latency"].endswith("ms")


def test_plain_completion_is_answered_and_logged(gateway, pg_cluster):
    body = {**CHAT_BODY, "user": "alice"}
    reply = gateway.call(
        "POST",
        "/v1/chat/completions",
        body,
        key=TEAM_KEY,
        headers={"Cookie": "session=secret", "X-Trace": "t1"},
    )
    assert reply.status == 200
    assert_gateway_headers(reply)
    answer = reply.json()
    assert answer["choices"][0]["message"]["content"] == "Fake reply: hello there"

    row = logged(gateway, pg_cluster, reply.headers["x-request-id"])
    assert row["model"] == "gpt-test"
    assert row["status"] == row["response_status"] == 200
    assert (row["route"], row["method"]) == ("/v1/chat/completions", "POST")
    assert row["key_alias"] == "team-a"
    assert row["user"] == "alice"
    assert row["body"] == body
    assert row["response_body"] == answer
    assert (row["prompt_tokens"], row["completion_tokens"], row["tokens_used"]) == (2, 4, 6)
    # 2 prompt tokens * 1e-6 + 4 completion tokens * 2e-6
    assert float(row["cost"]) == pytest.approx(0.00001)
    assert row["latency_ms"] > 0
    # Credentials never reach the database.
    assert row["headers"]["authorization"] == "[REDACTED]"
    assert row["headers"]["cookie"] == "[REDACTED]"
    assert row["headers"]["x-trace"] == "t1"
    assert TEAM_KEY not in orjson.dumps(row["headers"]).decode()


def test_master_key_is_logged_by_alias(gateway, pg_cluster):
    reply = gateway.call("POST", "/v1/chat/completions", CHAT_BODY, key=MASTER_KEY)
    assert logged(gateway, pg_cluster, reply.headers["x-request-id"])["key_alias"] == "master"


@pytest.mark.parametrize("key", [None, "sk-wrong"])
def test_missing_or_wrong_key_is_401_and_not_logged(gateway, pg_cluster, key):
    reply = gateway.call("POST", "/v1/chat/completions", CHAT_BODY, key=key)
    error = assert_openai_error(reply, 401)
    assert error["type"] == "authentication_error"
    assert_gateway_headers(reply)
    # The writer is FIFO: once a later exchange is in the database, an earlier one would be.
    later = gateway.call("POST", "/v1/chat/completions", CHAT_BODY)
    logged(gateway, pg_cluster, later.headers["x-request-id"])
    sql = "SELECT count(*) FROM requests WHERE request_id = %s"
    assert query(pg_cluster, gateway.database, sql, (reply.headers["x-request-id"],)) == [(0,)]


@pytest.mark.parametrize(
    ("payload", "status", "param"),
    [
        (b"{not json", 400, None),
        (b"[1, 2]", 400, None),
        (orjson.dumps({"messages": [{"role": "user", "content": "x"}]}), 400, "model"),
        (orjson.dumps({"model": "gpt-test"}), 400, "messages"),
        (orjson.dumps({"model": "gpt-test", "messages": []}), 400, "messages"),
        (orjson.dumps({"model": "gpt-test", "messages": ["x"]}), 400, "messages[0]"),
        (orjson.dumps({**CHAT_BODY, "stream": "yes"}), 400, "stream"),
        (orjson.dumps({**CHAT_BODY, "model": "no-such-model"}), 404, "model"),
    ],
)
def test_invalid_requests_get_a_clear_4xx_and_are_logged(
    gateway, pg_cluster, payload, status, param
):
    reply = gateway.call("POST", "/v1/chat/completions", raw=payload)
    error = assert_openai_error(reply, status)
    assert error["param"] == param
    assert_gateway_headers(reply)
    row = logged(gateway, pg_cluster, reply.headers["x-request-id"])
    assert row["status"] == status
    assert row["response_body"] == reply.json()


def test_oversized_body_is_413_and_service_stays_healthy(gateway, pg_cluster):
    big = {**CHAT_BODY, "messages": [{"role": "user", "content": "x" * 70_000}]}
    reply = gateway.call("POST", "/v1/chat/completions", big)
    assert_openai_error(reply, 413)
    row = logged(gateway, pg_cluster, reply.headers["x-request-id"])
    assert row["body"] is None
    assert gateway.call("GET", "/api/health").status == 200
    assert gateway.call("POST", "/v1/chat/completions", CHAT_BODY).status == 200


def test_oversized_chunked_body_is_413(gateway):
    conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
    conn.putrequest("POST", "/v1/chat/completions")
    conn.putheader("Authorization", f"Bearer {MASTER_KEY}")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    try:
        for _ in range(20):
            conn.send(b"1000\r\n" + b"x" * 0x1000 + b"\r\n")
        conn.send(b"0\r\n\r\n")
    except OSError:
        pass  # the server may answer and close before reading everything
    reply = conn.getresponse()
    assert reply.status == 413
    assert orjson.loads(reply.read())["error"]["code"] == "request_too_large"
    conn.close()


@pytest.mark.parametrize(
    ("model", "status", "code"),
    [
        ("upstream-400", 400, None),
        ("upstream-429", 429, "rate_limit_exceeded"),
        ("upstream-500", 502, "upstream_http_500"),
        ("refused", 502, "upstream_unreachable"),
        ("slow", 504, "upstream_timeout"),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
def test_upstream_failures_are_mapped_and_logged(gateway, pg_cluster, model, status, code, stream):
    reply = gateway.call(
        "POST", "/v1/chat/completions", {**CHAT_BODY, "model": model, "stream": stream}
    )
    error = assert_openai_error(reply, status)
    assert error["code"] == code
    assert_gateway_headers(reply)
    if status == 429:
        assert (reply.headers["retry-after"], reply.headers["retry-after-ms"]) == ("1", "600")
    row = logged(gateway, pg_cluster, reply.headers["x-request-id"])
    assert row["status"] == row["response_status"] == status
    assert row["response_body"] == reply.json()


def test_entries_sharing_a_model_name_are_load_balanced(gateway):
    upstream_models = {
        gateway.call("POST", "/v1/chat/completions", {**CHAT_BODY, "model": "balanced"}).json()[
            "model"
        ]
        for _ in range(4)
    }
    assert upstream_models == {"fake-a", "fake-b"}


def read_events(reply_raw: bytes) -> list:
    events = []
    for line in reply_raw.split(b"\n"):
        if line.startswith(b"data: "):
            data = line[6:]
            events.append(data.decode() if data == b"[DONE]" else orjson.loads(data))
    return events


def test_stream_is_relayed_and_logged_with_text_and_usage(gateway, pg_cluster):
    reply = gateway.call("POST", "/v1/chat/completions", {**CHAT_BODY, "stream": True})
    assert reply.status == 200
    assert reply.headers["content-type"].startswith("text/event-stream")
    assert_gateway_headers(reply)
    events = read_events(reply.raw)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == "Fake reply: hello there"
    # The client did not ask for usage: the gateway asked for it, and keeps it to itself.
    assert all(c["choices"] for c in chunks)

    row = logged(gateway, pg_cluster, reply.headers["x-request-id"])
    assert row["status"] == 200
    assert row["response_body"]["choices"][0]["message"]["content"] == text
    assert row["response_body"]["choices"][0]["finish_reason"] == "stop"
    assert (row["prompt_tokens"], row["completion_tokens"], row["tokens_used"]) == (2, 4, 6)
    assert float(row["cost"]) == pytest.approx(0.00001)


def test_stream_usage_is_relayed_when_the_client_asks(gateway):
    body = {**CHAT_BODY, "stream": True, "stream_options": {"include_usage": True}}
    events = read_events(gateway.call("POST", "/v1/chat/completions", body).raw)
    usage_chunks = [e for e in events[:-1] if e.get("usage")]
    assert usage_chunks[-1]["usage"]["total_tokens"] == 6


def test_runtime_role_with_select_insert_only_can_log(start_gateway, pg_cluster, database):
    """The service runs as a role that may only SELECT/INSERT (the production grants)."""
    pg_cluster.execute(
        "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'gw_runtime')"
        " THEN CREATE ROLE gw_runtime LOGIN; END IF; END $$"
    )
    pg_cluster.execute(
        "GRANT SELECT, INSERT ON requests, responses TO gw_runtime;"
        " GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO gw_runtime",
        database,
    )
    gateway = start_gateway(pg_cluster.url(database, user="gw_runtime"))
    gateway.database = database
    reply = gateway.call("POST", "/v1/chat/completions", CHAT_BODY)
    assert logged(gateway, pg_cluster, reply.headers["x-request-id"])["status"] == 200
    assert '"db_user":"gw_runtime"' in gateway.stderr()


def test_hostile_content_is_logged_and_does_not_block_others(gateway, pg_cluster):
    """U+0000 (refused by PostgreSQL text/JSONB) and over-long fields in one request."""
    hostile = {
        "model": "gpt-test",
        "messages": [{"role": "user", "content": "nul\u0000byte"}],
        "user": "u" * 300,
    }
    reply = gateway.call("POST", "/v1/chat/completions", hostile)
    assert reply.status == 200
    normal = gateway.call("POST", "/v1/chat/completions", CHAT_BODY)
    assert logged(gateway, pg_cluster, normal.headers["x-request-id"])["status"] == 200
    row = logged(gateway, pg_cluster, reply.headers["x-request-id"])
    assert row["body"]["messages"][0]["content"] == "nul\ufffdbyte"
    assert row["user"] == "u" * 255
    assert gateway.call("GET", "/api/health").status == 200


def test_client_leaving_mid_stream_is_logged_as_499(gateway, pg_cluster):
    conn = http.client.HTTPConnection("127.0.0.1", gateway.port, timeout=10)
    conn.request(
        "POST",
        "/v1/chat/completions",
        body=orjson.dumps({**CHAT_BODY, "model": "dripping", "stream": True}),
        headers={"Authorization": f"Bearer {MASTER_KEY}", "Content-Type": "application/json"},
    )
    reply = conn.getresponse()
    request_id = reply.getheader("x-request-id")
    assert reply.read(6) == b"data: "  # the first event arrived
    reply.close()  # leave while the upstream is still streaming
    conn.close()
    row = logged(gateway, pg_cluster, request_id)
    assert row["status"] == 499
    assert row["response_body"]["error"]["code"] == "client_disconnected"
    assert gateway.call("GET", "/api/health").status == 200
