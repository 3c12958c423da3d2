"""Operational endpoints: models, health, db-stats, stored exchanges, metrics, errors."""

import time
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from llm_gateway.metrics import writer_summary
from llm_gateway.writer import STALL_AFTER_S

from conftest import TEAM_KEY, all_stored_once
from helpers import CHAT_BODY, wait_until


def test_models_lists_configured_model_names(gateway):
    reply = gateway.call("GET", "/v1/models")
    assert reply.status == 200
    ids = [m["id"] for m in reply.json()["data"]]
    assert ids == sorted(set(ids))
    assert {"gpt-test", "balanced", "slow"} <= set(ids)


@pytest.mark.parametrize("path", ["/v1/models", "/api/requests", "/api/responses", "/api/db-stats"])
@pytest.mark.parametrize("key", [None, "sk-wrong"])
def test_protected_endpoints_need_a_key(gateway, path, key):
    reply = gateway.call("GET", path, key=key)
    assert reply.status == 401
    assert reply.json()["error"]["code"] == "invalid_api_key"


@pytest.mark.parametrize("path", ["/api/health", "/metrics"])
def test_health_and_metrics_are_open_by_default(gateway, path):
    assert gateway.call("GET", path, key=None).status == 200


def test_health_reports_database_pool_and_writer(gateway):
    reply = gateway.call("GET", "/api/health", key=None)
    body = reply.json()
    assert body["status"] == "healthy"
    assert body["database"]["ok"] is True
    assert body["pool"]["size"] == 5
    assert {"queue_depth", "spool_backlog", "db_ok"} <= set(body["writer"])
    assert body["version"] == version("llm-gateway")


def test_requests_and_responses_newest_first(gateway):
    ids = [
        gateway.call("POST", "/v1/chat/completions", CHAT_BODY).headers["x-request-id"]
        for _ in range(3)
    ]

    def newest(path):
        data = gateway.call("GET", f"{path}?limit=3", key=TEAM_KEY).json()["data"]
        return data if len(data) == 3 and data[0].get("request_id", ids[-1]) == ids[-1] else None

    requests = wait_until(lambda: newest("/api/requests"))
    assert [r["request_id"] for r in requests] == ids[::-1]
    assert requests[0]["headers"]["authorization"] == "[REDACTED]"
    responses = wait_until(lambda: newest("/api/responses"))
    assert [r["request_id_fk"] for r in responses] == [r["id"] for r in requests]
    assert responses[0]["tokens_used"] == 6


def test_limit_defaults_to_10(gateway):
    for _ in range(11):
        gateway.call("POST", "/v1/chat/completions", CHAT_BODY)
    wait_until(lambda: gateway.call("GET", "/api/db-stats").json()["rows"]["responses"] >= 11)
    assert gateway.call("GET", "/api/requests").json()["count"] == 10
    assert gateway.call("GET", "/api/responses?limit=1000").json()["count"] >= 11


@pytest.mark.parametrize("path", ["/api/requests", "/api/responses"])
@pytest.mark.parametrize("limit", ["0", "1001", "-5", "abc", "1.5", ""])
def test_out_of_range_limit_is_422(gateway, path, limit):
    reply = gateway.call("GET", f"{path}?limit={limit}")
    assert reply.status == 422
    error = reply.json()["error"]
    assert error["param"] == "limit"
    assert "limit" in error["message"]


def test_db_stats_reports_rows_pool_and_writer(gateway):
    gateway.call("POST", "/v1/chat/completions", CHAT_BODY)
    stats = wait_until(
        lambda: (s := gateway.call("GET", "/api/db-stats").json())["writer"]["batches"] and s
    )
    assert stats["rows"]["requests"] == stats["rows"]["responses"] >= 1
    assert stats["pool"]["size"] == 5
    writer = stats["writer"]
    assert set(writer) == {
        "exchanges_written",
        "batches",
        "failures",
        "spooled",
        "replayed",
        "queue_full",
        "quarantined",
        "lost",
        "restarts",
        "queue_depth",
        "spool_backlog",
        "db_ok",
        "running",
        "stalled",
        "batch_commit_ms_p50",
        "batch_commit_ms_p99",
    }
    assert writer["exchanges_written"] >= stats["rows"]["responses"]
    assert (writer["running"], writer["db_ok"], writer["stalled"]) == (True, True, False)
    assert 0 < writer["batch_commit_ms_p50"] <= writer["batch_commit_ms_p99"]


def test_db_stats_writer_figures_are_the_metrics_page_s(gateway):
    """Whoever reads /metrics (the evidence collection) gets the numbers db-stats shows."""
    gateway.call("POST", "/v1/chat/completions", CHAT_BODY)

    def same() -> bool:
        writer = gateway.call("GET", "/api/db-stats").json()["writer"]
        page = gateway.call("GET", "/metrics", key=None).raw.decode()
        return writer["batches"] > 0 and writer == writer_summary(
            text_string_to_metric_families(page)
        )

    wait_until(same)


def test_metrics_exposition(gateway):
    gateway.call("POST", "/v1/chat/completions", CHAT_BODY)
    text = gateway.call("GET", "/metrics", key=None).raw.decode()
    assert 'llm_gateway_requests_total{model="gpt-test",status_code="200"}' in text
    for name in (
        "llm_gateway_request_latency_seconds_bucket",
        "llm_gateway_db_overhead_seconds_bucket",
        "llm_gateway_tokens_total",
        "llm_gateway_cost_total",
        "llm_gateway_writer_queue_depth",
        "llm_gateway_spool_backlog",
    ):
        assert name in text


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/nope", 404),
        ("GET", "/v1/chat/completions", 405),
        ("DELETE", "/api/health", 405),
        ("POST", "/v1/chat/completions/", 404),
        ("GET", "/api/health/", 404),
        ("GET", "/api/requests/", 404),
    ],
)
def test_unknown_routes_and_methods_get_openai_errors(gateway, method, path, status):
    reply = gateway.call(method, path, headers={"Host": "evil.example"})
    assert reply.status == status
    assert set(reply.json()["error"]) == {"message", "type", "param", "code"}
    assert "location" not in reply.headers


def test_startup_logs_one_db_connected_line(gateway):
    lines = [line for line in gateway.stderr().splitlines() if "db_connected" in line]
    assert len(lines) == 1
    facts = orjson.loads(lines[0].split(" ", 1)[1])
    assert facts["event"] == "db_connected"
    assert facts["server_version"]
    # The module's gateway connects with sslmode=verify-full against the test CA.
    assert facts["ssl"] is True
    assert facts["ssl_version"].startswith("TLSv1.")
    assert (facts["pool_size"], facts["max_overflow"]) == (5, 5)
    assert facts["db_user"] == "postgres"
    assert facts["application_name"] == "llm-gateway"
    assert "password" not in lines[0].lower()


def test_health_and_metrics_can_require_a_key(start_gateway, pg_cluster, database):
    gw = start_gateway(
        pg_cluster.url(database), health_requires_auth=True, metrics_requires_auth=True
    )
    for path in ("/api/health", "/metrics"):
        assert gw.call("GET", path, key=None).status == 401
        assert gw.call("GET", path).status == 200


def test_health_answers_head_for_load_balancers(gateway):
    reply = gateway.call("HEAD", "/api/health", key=None)
    assert (reply.status, reply.raw) == (200, b"")


def test_health_stays_ready_when_work_arrives_after_a_quiet_spell(
    start_gateway, pg_cluster, database
):
    """Readiness must not flap on light traffic: a writer that sat idle longer than its
    stall threshold is not "not draining" the moment exchanges arrive again."""
    # A long flush interval keeps the second exchange queued while health is asked.
    gw = start_gateway(pg_cluster.url(database), writer={"flush_interval_ms": 1500})
    time.sleep(STALL_AFTER_S + 0.5)  # no traffic: nothing waits, nothing to commit
    with ThreadPoolExecutor(2) as pool:
        replies = list(pool.map(lambda _: gw.call("POST", "/v1/chat/completions", CHAT_BODY),
                                range(2)))  # fmt: skip
    assert [reply.status for reply in replies] == [200, 200]
    health = gw.call("GET", "/api/health", key=None)
    assert health.status == 200, health.json()
    assert health.json()["writer"]["stalled"] is False
    ids = [reply.headers["x-request-id"] for reply in replies]
    wait_until(lambda: all_stored_once(pg_cluster, database, ids))
