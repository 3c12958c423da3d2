"""The fake upstream speaks enough OpenAI for the gateway's tests, lab and benchmark."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import contextmanager

import pytest
from aiohttp.test_utils import TestClient, TestServer
from ports import free_port, wait_for_port

from llm_gateway.fake_upstream import Settings, create_app, parse_args

FAST = {"latency_ms": 0, "jitter_ms": 0, "chunk_delay_ms": 0}
PROMPT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": [{"type": "text", "text": "count these five words"}]},
]


def run(scenario: Callable[[TestClient], Awaitable[None]], **overrides: object) -> None:
    """Serve the app on an ephemeral loopback port for one scenario."""

    async def main() -> None:
        server = TestServer(create_app(Settings(**{**FAST, **overrides})), host="127.0.0.1")
        async with TestClient(server) as client:
            await scenario(client)

    asyncio.run(main())


async def chat(client: TestClient, headers: dict[str, str] | None = None, **body: object):
    payload = {"model": "fake-model", "messages": PROMPT, **body}
    return await client.post("/v1/chat/completions", json=payload, headers=headers)


def read_sse(text: str) -> list[str]:
    return [line.removeprefix("data: ") for line in text.splitlines() if line.startswith("data: ")]


def test_completion_has_deterministic_usage() -> None:
    async def scenario(client: TestClient) -> None:
        resp = await chat(client)
        assert resp.status == 200
        body = await resp.json()
        assert body["object"] == "chat.completion"
        assert body["model"] == "fake-model"
        assert body["choices"][0]["message"] == {
            "role": "assistant",
            "content": "Fake reply: count these five words",
            "refusal": None,  # as OpenAI sends it
        }
        assert body["choices"][0]["finish_reason"] == "stop"
        # prompt: 2 + 4 words; completion: the 6 words of the reply.
        assert body["usage"] == {"prompt_tokens": 6, "completion_tokens": 6, "total_tokens": 12}

    run(scenario)


def test_max_tokens_truncates_with_finish_reason_length() -> None:
    async def scenario(client: TestClient) -> None:
        body = await (await chat(client, max_tokens=2)).json()
        assert body["choices"][0]["message"]["content"] == "Fake reply:"
        assert body["choices"][0]["finish_reason"] == "length"
        assert body["usage"]["completion_tokens"] == 2

    run(scenario)


@pytest.mark.parametrize("include_usage", [True, False])
def test_stream_sends_deltas_usage_and_done(include_usage: bool) -> None:
    async def scenario(client: TestClient) -> None:
        resp = await chat(client, stream=True, stream_options={"include_usage": include_usage})
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        events = read_sse(await resp.text())
        assert events[-1] == "[DONE]"
        chunks = [json.loads(e) for e in events[:-1]]
        assert all(c["object"] == "chat.completion.chunk" for c in chunks)
        assert len({c["id"] for c in chunks}) == 1
        text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
        assert text == "Fake reply: count these five words"
        content_deltas = [
            c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")
        ]
        assert len(content_deltas) > 1
        finish = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
        assert finish[-1] == "stop"
        usage = [c["usage"] for c in chunks if "usage" in c]
        if include_usage:
            assert usage == [{"prompt_tokens": 6, "completion_tokens": 6, "total_tokens": 12}]
            assert chunks[-1]["choices"] == []
        else:
            assert usage == []

    run(scenario)


def test_models_and_health() -> None:
    async def scenario(client: TestClient) -> None:
        models = await (await client.get("/v1/models")).json()
        assert [m["id"] for m in models["data"]] == ["a", "b"]
        assert (await (await client.get("/health")).json()) == {"status": "ok"}

    run(scenario, models=("a", "b"))


@pytest.mark.parametrize(
    ("model", "headers", "status"),
    [
        ("fake-error-503", None, 503),
        ("fake-error-401", None, 401),
        ("fake-model", {"X-Fake-Status": "429"}, 429),
        ("fake-model", {"X-Fake-Status": "500"}, 500),
    ],
)
def test_injected_errors_use_openai_error_shape(
    model: str, headers: dict[str, str] | None, status: int
) -> None:
    async def scenario(client: TestClient) -> None:
        resp = await chat(client, headers=headers, model=model)
        assert resp.status == status
        error = (await resp.json())["error"]
        assert set(error) == {"message", "type", "param", "code"}
        if status == 429:
            assert resp.headers["Retry-After"] == "1"

    run(scenario)


def test_error_rate_injects_server_and_rate_limit_errors() -> None:
    async def scenario(client: TestClient) -> None:
        statuses = {(await chat(client)).status for _ in range(30)}
        assert statuses <= {500, 429, 503}
        assert len(statuses) > 1

    run(scenario, error_rate=1.0, seed=7)


@pytest.mark.parametrize(
    "body",
    [
        b"{not json",
        b"[]",
        b'{"messages": []}',
        b'{"model": "m"}',
        b'{"model": "m", "messages": []}',
    ],
)
def test_malformed_requests_get_400(body: bytes) -> None:
    async def scenario(client: TestClient) -> None:
        resp = await client.post("/v1/chat/completions", data=body)
        assert resp.status == 400
        assert (await resp.json())["error"]["type"] == "invalid_request_error"

    run(scenario)


def test_latency_and_forced_delay() -> None:
    async def scenario(client: TestClient) -> None:
        started = time.perf_counter()
        assert (await chat(client)).status == 200
        assert time.perf_counter() - started >= 0.05
        started = time.perf_counter()
        assert (await chat(client, headers={"X-Fake-Delay-Ms": "0"})).status == 200
        assert time.perf_counter() - started < 0.05

    run(scenario, latency_ms=50)


def test_forced_delay_outlasts_a_client_timeout() -> None:
    async def scenario(client: TestClient) -> None:
        with pytest.raises(asyncio.TimeoutError):
            async with asyncio.timeout(0.1):
                await chat(client, headers={"X-Fake-Delay-Ms": "2000"})

    run(scenario)


def test_api_key_is_enforced_when_set() -> None:
    async def scenario(client: TestClient) -> None:
        assert (await chat(client)).status == 401
        wrong = await chat(client, headers={"Authorization": "Bearer nope"})
        assert wrong.status == 401
        assert (await wrong.json())["error"]["code"] == "invalid_api_key"
        assert (await client.get("/v1/models")).status == 401
        assert (await chat(client, headers={"Authorization": "Bearer sk-up"})).status == 200
        assert (await client.get("/health")).status == 200

    run(scenario, api_key="sk-up")


def test_environment_configures_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_UPSTREAM_PORT", "9123")
    monkeypatch.setenv("FAKE_UPSTREAM_LATENCY_MS", "0")
    monkeypatch.setenv("FAKE_UPSTREAM_API_KEY", "sk-env")
    settings = parse_args([])
    assert (settings.port, settings.latency_ms, settings.api_key) == (9123, 0.0, "sk-env")
    assert parse_args(["--port", "9200"]).port == 9200


def test_error_rate_out_of_range_is_rejected() -> None:
    with pytest.raises(SystemExit):
        parse_args(["--error-rate", "1.5"])


@contextmanager
def upstream_process(*args: str, env: dict[str, str] | None = None):
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "llm_gateway.fake_upstream", "--port", str(port), *args],
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, timeout=10, proc=proc)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_official_openai_client_plain_and_streaming() -> None:
    openai = pytest.importorskip("openai")
    with upstream_process(
        "--latency-ms", "0", "--jitter-ms", "0", env={"FAKE_UPSTREAM_API_KEY": "sk-cli"}
    ) as base_url:
        client = openai.OpenAI(base_url=base_url, api_key="sk-cli", max_retries=0)
        reply = client.chat.completions.create(model="fake-model", messages=PROMPT)
        assert reply.choices[0].message.content == "Fake reply: count these five words"
        assert reply.usage.total_tokens == 12
        stream = client.chat.completions.create(
            model="fake-model",
            messages=PROMPT,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == "Fake reply: count these five words"
        assert chunks[-1].usage.completion_tokens == 6
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=base_url, api_key="wrong", max_retries=0).models.list()
