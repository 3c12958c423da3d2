"""router_settings as LiteLLM users write them: retries, cooldowns, fallbacks, timeouts.

Every exchange is logged once, with the deployment that answered and the attempts it took.
"""

import http.client
import time

import orjson
import pytest

from llm_gateway.config import RouterSettings
from llm_gateway.upstream import FIRST_BACKOFF_S, Attempt, wait_before_retry

from conftest import MASTER_KEY, query
from helpers import CHAT_BODY, wait_until


def logged(pg_cluster, database, request_id):
    sql = (
        "SELECT r.status_code, p.deployment, p.attempts FROM requests r"
        " JOIN responses p ON p.request_id_fk = r.id WHERE r.request_id = %s"
    )
    rows = wait_until(lambda: query(pg_cluster, database, sql, (request_id,)))
    assert len(rows) == 1
    return rows[0]


def chat(gw, model: str, **extra):
    reply = gw.call("POST", "/v1/chat/completions", {**CHAT_BODY, "model": model, **extra})
    return reply, reply.headers["x-request-id"]


def test_a_failing_deployment_is_retried_elsewhere_then_cooled_down(
    start_gateway, pg_cluster, database, upstreams
):
    router = {"num_retries": 1, "allowed_fails": 0, "cooldown_time": 60}
    gw = start_gateway(pg_cluster.url(database), router_settings=router)
    answers = [chat(gw, "flaky") for _ in range(4)]
    assert [reply.status for reply, _ in answers] == [200] * 4
    rows = [logged(pg_cluster, database, request_id) for _, request_id in answers]
    answering = f"openai/fake-model@127.0.0.1:{upstreams.fast.port}"
    assert {deployment for _, deployment, _ in rows} == {answering}
    # The first call met the failing deployment first (round robin starts there); after
    # one failure it left the rotation, so every later call needed one attempt.
    assert [attempts for _, _, attempts in rows] == [2, 1, 1, 1]


def test_the_deployments_left_share_the_load_of_one_cooling_down(
    start_gateway, pg_cluster, database
):
    router = {"num_retries": 1, "allowed_fails": 0, "cooldown_time": 60}
    gw = start_gateway(pg_cluster.url(database), router_settings=router)
    answers = [chat(gw, "trio") for _ in range(7)]
    rows = [logged(pg_cluster, database, request_id) for _, request_id in answers]
    assert rows[0][2] == 2  # met the failing one first, which then left the rotation
    later = [deployment.split("@")[0] for _, deployment, _ in rows[1:]]
    assert sorted(later) == ["openai/fake-a"] * 3 + ["openai/fake-b"] * 3


def test_disable_cooldowns_keeps_a_failing_deployment_in_the_rotation(
    start_gateway, pg_cluster, database
):
    router = {"num_retries": 1, "allowed_fails": 0, "disable_cooldowns": "true"}
    gw = start_gateway(pg_cluster.url(database), router_settings=router)
    answers = [chat(gw, "flaky") for _ in range(4)]
    rows = [logged(pg_cluster, database, request_id) for _, request_id in answers]
    # Round robin alternates which deployment goes first; the failing one is never
    # taken out, so every other call meets it first.
    assert [attempts for _, _, attempts in rows] == [2, 1, 2, 1]
    assert [reply.status for reply, _ in answers] == [200] * 4


def test_a_deployment_that_breaks_its_streams_off_is_cooled_down(
    start_gateway, pg_cluster, database
):
    router = {"num_retries": 0, "allowed_fails": 1, "cooldown_time": 60}
    gw = start_gateway(pg_cluster.url(database), router_settings=router)
    answers = [chat(gw, "cut-flaky", stream=True) for _ in range(6)]
    rows = [logged(pg_cluster, database, request_id) for _, request_id in answers]
    # Round robin starts on the breaking deployment; its streams are not retried (bytes
    # had gone out). Its 200s do not count as successes, so two broken streams in a row
    # (allowed_fails 1) took it out of the rotation.
    assert [status for status, _, _ in rows] == [502, 200, 502, 200, 200, 200]
    assert len({deployment for _, deployment, _ in rows[3:]}) == 1


def test_without_retries_the_failure_is_the_answer(start_gateway, pg_cluster, database):
    gw = start_gateway(pg_cluster.url(database), router_settings={"num_retries": 0})
    reply, request_id = chat(gw, "flaky")
    assert reply.status == 502
    assert logged(pg_cluster, database, request_id)[2] == 1


def test_two_retries_by_default_as_litellm(start_gateway, pg_cluster, database):
    # LiteLLM's Router: num_retries, else litellm_settings.num_retries, else the openai
    # SDK's DEFAULT_MAX_RETRIES (2). A file that never mentions retries gets them there.
    gw = start_gateway(pg_cluster.url(database), router_settings={})
    reply, request_id = chat(gw, "upstream-500")
    assert reply.status == 502
    assert logged(pg_cluster, database, request_id)[2] == 3


def test_fallbacks_answer_when_every_deployment_fails(start_gateway, pg_cluster, database):
    router = {"num_retries": 1, "fallbacks": [{"upstream-500": ["gpt-test"]}]}
    gw = start_gateway(pg_cluster.url(database), router_settings=router)
    for stream in (False, True):
        reply, request_id = chat(gw, "upstream-500", stream=stream)
        assert reply.status == 200
        status, deployment, attempts = logged(pg_cluster, database, request_id)
        assert (status, attempts) == (200, 3)  # two on the model, one on its fallback
        assert deployment.startswith("openai/fake-model@")


def test_a_client_error_is_not_retried(start_gateway, pg_cluster, database):
    gw = start_gateway(pg_cluster.url(database), router_settings={"num_retries": 3})
    reply, request_id = chat(gw, "upstream-400")
    assert reply.status == 400
    assert logged(pg_cluster, database, request_id)[2] == 1


def test_retry_after_is_honoured_before_trying_the_same_deployment_again(
    start_gateway, pg_cluster, database
):
    gw = start_gateway(pg_cluster.url(database), router_settings={"num_retries": 1})
    started = time.monotonic()
    # The fake sends retry-after-ms: 600 and Retry-After: 1, as OpenAI and Azure do.
    reply, request_id = chat(gw, "upstream-429")
    assert time.monotonic() - started >= 0.6
    assert reply.status == 429
    # Both relayed: the openai SDK waits what retry-after-ms says before its own retry.
    assert (reply.headers["retry-after"], reply.headers["retry-after-ms"]) == ("1", "600")
    assert logged(pg_cluster, database, request_id)[2] == 2


@pytest.mark.parametrize(
    ("retry_after", "retry_after_ms", "wait"),
    [
        ("2", "1500", 1.5),  # milliseconds first, as the openai SDK reads them
        ("2", None, 2.0),
        ("2", "soon", 2.0),
        ("Wed, 21 Oct 2015 07:28:00 GMT", None, FIRST_BACKOFF_S),  # a date passed
        (None, "nan", FIRST_BACKOFF_S),
    ],
)
def test_the_wait_an_upstream_asks_for(retry_after, retry_after_ms, wait):
    asked = {"Retry-After": retry_after, "retry-after-ms": retry_after_ms}
    attempt = Attempt(429, retry_after={name: value for name, value in asked.items() if value})
    assert wait_before_retry(attempt, 0, RouterSettings()) == wait


def test_retry_after_ms_is_honoured_and_relayed(start_gateway, pg_cluster, database):
    # OpenAI's own header, in milliseconds; the openai SDK reads it before Retry-After.
    gw = start_gateway(pg_cluster.url(database), router_settings={"num_retries": 1})
    started = time.monotonic()
    reply, request_id = chat(gw, "upstream-429-ms")  # the fake sends retry-after-ms: 1200
    assert time.monotonic() - started >= 1.2
    assert reply.status == 429 and reply.headers["retry-after-ms"] == "1200"
    assert logged(pg_cluster, database, request_id)[2] == 2


def test_a_deployments_stream_timeout_bounds_its_streams(start_gateway, pg_cluster, database):
    # litellm_params.stream_timeout: 0.5 on an upstream that answers after 3 s (timeout 30)
    gw = start_gateway(pg_cluster.url(database))
    reply, request_id = chat(gw, "slow-stream", stream=True)
    assert reply.status == 504
    assert logged(pg_cluster, database, request_id)[:1] == (504,)
    reply, request_id = chat(gw, "slow-stream")  # not a stream: the 30 s timeout
    assert reply.status == 200


@pytest.mark.parametrize(
    ("router", "model", "attempts"),
    [
        # A rate limit gets no retry (and no wait), a 500 the default num_retries (2).
        ({"retry_policy": {"RateLimitErrorRetries": 0}}, "upstream-429", 1),
        ({"retry_policy": {"RateLimitErrorRetries": 0}}, "upstream-500", 3),
        # More retries for one kind than num_retries gives.
        ({"num_retries": 0, "retry_policy": {"InternalServerErrorRetries": 3}}, "upstream-500", 4),
        ({"num_retries": 0, "retry_policy": {"InternalServerErrorRetries": 3}}, "slow", 1),
    ],
)
def test_retry_policy_sets_retries_by_kind_of_failure(
    start_gateway, pg_cluster, database, router, model, attempts
):
    gw = start_gateway(pg_cluster.url(database), router_settings=router)
    reply, request_id = chat(gw, model)
    assert reply.status in (429, 502, 504)
    assert logged(pg_cluster, database, request_id)[2] == attempts


def test_context_window_fallbacks(start_gateway, pg_cluster, database):
    router = {"context_window_fallbacks": [{"ctx-small": ["gpt-test"]}],
              "fallbacks": [{"ctx-small": ["upstream-500"]}]}  # fmt: skip
    gw = start_gateway(pg_cluster.url(database), router_settings=router)
    reply, request_id = chat(gw, "ctx-small")
    assert reply.status == 200
    _, deployment, attempts = logged(pg_cluster, database, request_id)
    assert attempts == 2 and deployment.startswith("openai/fake-model@")


def test_retries_and_fallbacks_under_litellm_settings_apply(start_gateway, pg_cluster, database):
    # LiteLLM's docs put them there; its Router reads them when router_settings does not.
    litellm = {"num_retries": 1, "fallbacks": [{"upstream-500": ["gpt-test"]}]}
    gw = start_gateway(pg_cluster.url(database), litellm_settings=litellm)
    reply, request_id = chat(gw, "upstream-500")
    assert reply.status == 200
    status, deployment, attempts = logged(pg_cluster, database, request_id)
    assert (status, attempts) == (200, 3)  # two on the model, one on its fallback
    assert deployment.startswith("openai/fake-model@")


def test_router_settings_win_over_litellm_settings(start_gateway, pg_cluster, database):
    gw = start_gateway(
        pg_cluster.url(database),
        router_settings={"num_retries": 0},
        litellm_settings={"num_retries": 3},
    )
    reply, request_id = chat(gw, "upstream-500")
    assert reply.status == 502
    assert logged(pg_cluster, database, request_id)[2] == 1


@pytest.mark.parametrize(
    "router",
    [
        {"num_retries": 0, "default_fallbacks": ["gpt-test"]},
        {"num_retries": 0, "fallbacks": [{"*": ["gpt-test"]}, {"flaky": ["upstream-500"]}]},
    ],
)
def test_generic_fallbacks_answer_for_models_without_their_own(
    start_gateway, pg_cluster, database, router
):
    gw = start_gateway(pg_cluster.url(database), router_settings=router)
    reply, request_id = chat(gw, "upstream-500")
    assert reply.status == 200
    status, deployment, attempts = logged(pg_cluster, database, request_id)
    assert (status, attempts) == (200, 2) and deployment.startswith("openai/fake-model@")


def test_content_policy_fallbacks(start_gateway, pg_cluster, database):
    router = {"content_policy_fallbacks": [{"policy": ["gpt-test"]}]}
    gw = start_gateway(pg_cluster.url(database), router_settings=router)
    reply, request_id = chat(gw, "policy")  # the fake refuses with content_policy_violation
    assert reply.status == 200
    status, deployment, attempts = logged(pg_cluster, database, request_id)
    assert (status, attempts) == (200, 2) and deployment.startswith("openai/fake-model@")


@pytest.mark.parametrize(
    ("router", "problem"),
    [
        ({"num_retries": -1}, "router_settings.num_retries"),
        ({"fallbacks": [{"gpt-test": ["no-such-model"]}]}, "no model_name 'no-such-model'"),
        ({"cooldown_time": "soon"}, "router_settings.cooldown_time"),
        ({"default_fallbacks": ["gpt-5"]}, "router_settings.default_fallbacks: no model_name"),
        ({"retry_policy": {"RateLimitErrorRetires": 1}}, "retry_policy.RateLimitErrorRetires"),
    ],
)
def test_bad_router_settings_stop_startup(start_gateway, pg_cluster, database, router, problem):
    with pytest.raises(RuntimeError, match=problem):
        start_gateway(pg_cluster.url(database), router_settings=router)


def test_a_client_gone_before_its_stream_began_is_logged_499(start_gateway, pg_cluster, database):
    # While the gateway waits (retries, a slow first byte) the client gives up; the stream
    # that comes later arrives whole at once and is relayed into a closed connection.
    gw = start_gateway(pg_cluster.url(database))
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=0.5)
    body = {**CHAT_BODY, "model": "slow-ok", "stream": True}  # first byte after 3 s
    headers = {"Authorization": f"Bearer {MASTER_KEY}", "Content-Type": "application/json"}
    conn.request("POST", "/v1/chat/completions", orjson.dumps(body), headers)
    with pytest.raises(TimeoutError):
        conn.getresponse()
    conn.close()
    sql = (
        "SELECT r.status_code, p.response_body FROM requests r"
        " JOIN responses p ON p.request_id_fk = r.id WHERE r.model = 'slow-ok'"
    )
    ((status, response_body),) = wait_until(lambda: query(pg_cluster, database, sql), 15)
    assert status == 499
    assert response_body["error"]["code"] == "client_disconnected"


def test_no_retries_for_a_client_that_left(start_gateway, pg_cluster, database):
    # Each attempt costs the upstream; nobody waits for its answer. The 'slow' model times
    # out after 0.5 s; with 3 retries it would take four attempts and ~2.7 s.
    gw = start_gateway(pg_cluster.url(database), router_settings={"num_retries": 3})
    conn = http.client.HTTPConnection("127.0.0.1", gw.port, timeout=0.3)
    body = orjson.dumps({**CHAT_BODY, "model": "slow"})
    headers = {"Authorization": f"Bearer {MASTER_KEY}", "Content-Type": "application/json"}
    conn.request("POST", "/v1/chat/completions", body, headers)
    with pytest.raises(TimeoutError):
        conn.getresponse()
    conn.close()
    sql = (
        "SELECT r.status_code, p.attempts, p.response_body FROM requests r"
        " JOIN responses p ON p.request_id_fk = r.id WHERE r.model = 'slow'"
    )
    ((status, attempts, response_body),) = wait_until(lambda: query(pg_cluster, database, sql))
    assert (status, attempts) == (499, 1)
    assert response_body["error"]["code"] == "client_disconnected"
    assert response_body["upstream_error"]["code"] == "upstream_timeout"
