"""Small HTTP and polling helpers shared by the tests."""

from __future__ import annotations

import http.client
import time
from collections.abc import Callable
from typing import Any

import orjson

CHAT_BODY = {"model": "gpt-test", "messages": [{"role": "user", "content": "hello there"}]}


class Reply:
    def __init__(self, status: int, headers: dict[str, str], raw: bytes):
        self.status = status
        self.headers = headers
        self.raw = raw

    def json(self) -> Any:
        return orjson.loads(self.raw)


def http_call(
    port: int,
    method: str,
    path: str,
    body=None,
    key: str | None = None,
    raw: bytes | None = None,
    headers: dict | None = None,
) -> Reply:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    send_headers = {"Content-Type": "application/json", **(headers or {})}
    if key is not None:
        send_headers["Authorization"] = f"Bearer {key}"
    payload = raw if raw is not None else (orjson.dumps(body) if body is not None else None)
    try:
        conn.request(method, path, body=payload, headers=send_headers)
        response = conn.getresponse()
        return Reply(
            response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
        )
    finally:
        conn.close()


def wait_until(check: Callable[[], Any], timeout: float = 15.0, interval: float = 0.05) -> Any:
    """Poll until ``check()`` is truthy (the writer commits in the background)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s (last: {result!r})")
        time.sleep(interval)


def exchange_record(request_id: str, **changes) -> dict:
    """An exchange as the request path hands it to the writer (and the spool keeps it)."""
    return {
        "request_id": request_id,
        "route": "/v1/chat/completions",
        "method": "POST",
        "url": "/v1/chat/completions",
        "headers": {},
        "body": CHAT_BODY,
        "model": "gpt-test",
        "status_code": 200,
        "key_alias": "master",
        "user": None,
        "started_at": 1_700_000_000.0,
        "response_body": {"ok": True},
        "latency_ms": 1.234,
        "prompt_tokens": 1,
        "completion_tokens": 2,
        "tokens_used": 3,
        "cost": 0.000005,
        **changes,
    }
