"""Calling the upstream: one attempt, and the retries and fallbacks around it.

A call tries the deployments the router plans (router_settings: ``num_retries`` further
attempts over the model's deployments, then each fallback model_name). Only failures
that another attempt may cure are retried: no answer at all (connection, timeout), 408,
409, 429 and 5xx. A 400 that says the context window was exceeded switches to the
model's ``context_window_fallbacks``. Moving on to an untried deployment happens at once;
trying one again waits first (exponential, at least ``retry_after``, and at least what
the upstream's retry-after-ms or Retry-After asked, up to MAX_WAIT_S). A stream is
retried only until the upstream answered 200: once bytes go to the client, the answer
is that deployment's.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson

from llm_gateway.config import Deployment, RouterSettings

if TYPE_CHECKING:
    from llm_gateway.gateway import Gateway

RETRYABLE_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
MAX_WAIT_S = 10.0
FIRST_BACKOFF_S = 0.1


@dataclass
class Attempt:
    status: int  # the upstream's, or 0 when it did not answer (see error)
    raw: bytes = b""
    retry_after: str | None = None
    retry_after_ms: str | None = None  # Azure's and OpenAI's finer Retry-After
    stream: aiohttp.ClientResponse | None = None  # open response of a 200 stream
    error: BaseException | None = None

    @property
    def retryable(self) -> bool:
        return self.error is not None or self.status in RETRYABLE_STATUSES

    @property
    def context_window_exceeded(self) -> bool:
        if self.status != 400:
            return False
        try:
            error = orjson.loads(self.raw).get("error") or {}
        except (orjson.JSONDecodeError, AttributeError):
            return False
        message = str(error.get("message", "")).lower() if isinstance(error, dict) else ""
        code = error.get("code") if isinstance(error, dict) else None
        return code == "context_length_exceeded" or "context length" in message


def upstream_headers(deployment: Deployment) -> dict[str, str]:
    return {
        **deployment.auth_headers(),
        "Content-Type": "application/json",
        # Uncompressed answers cost neither side CPU for (de)compression, and a gateway
        # next to its clients gains nothing from relaying compressed bytes. An upstream
        # or proxy that compresses anyway is decoded by the client session (gzip,
        # deflate, br, zstd), so what is relayed and logged is always the JSON.
        "Accept-Encoding": "identity",
    }


async def call(
    gateway: Gateway, deployment: Deployment, path: str, payload: dict[str, Any], stream: bool
) -> Attempt:
    """One attempt. A 200 stream comes back open; everything else is read and closed."""
    try:
        upstream = await gateway.session.post(
            deployment.url(path),
            data=orjson.dumps({**payload, "model": deployment.upstream_model}),
            headers=upstream_headers(deployment),
            timeout=gateway.timeout_for(deployment, stream),
            # An API does not redirect a POST; following one would send the prompt and the
            # key headers (Azure's api-key survives aiohttp's cross-host stripping)
            # wherever the answer points. It is an upstream error (502) instead.
            allow_redirects=False,
        )
    except (TimeoutError, aiohttp.ClientError) as exc:
        return Attempt(0, error=exc)
    if stream and upstream.status == 200:
        return Attempt(200, stream=upstream)
    try:
        raw = await _read(upstream, gateway.config.service.max_response_body_bytes)
    except (TimeoutError, aiohttp.ClientError, AnswerTooLarge) as exc:
        return Attempt(0, error=exc)
    finally:
        upstream.release()
    headers = upstream.headers
    return Attempt(upstream.status, raw, headers.get("Retry-After"), headers.get("retry-after-ms"))


class AnswerTooLarge(Exception):
    """The upstream's answer is longer than max_response_body_bytes."""


async def _read(upstream: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole answer, refusing more than ``limit`` bytes (aiohttp's read() has no
    bound: an upstream sending without end would grow the worker until it is killed)."""
    if upstream.content_length is not None and upstream.content_length > limit:
        raise AnswerTooLarge(f"upstream answer exceeds {limit} bytes")
    chunks, size = [], 0
    async for chunk in upstream.content.iter_chunked(1 << 20):
        size += len(chunk)
        if size > limit:
            raise AnswerTooLarge(f"upstream answer exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def wait_before_retry(attempt: Attempt, retries_so_far: int, settings: RouterSettings) -> float:
    backoff = FIRST_BACKOFF_S * 2**retries_so_far
    return min(MAX_WAIT_S, max(backoff, settings.retry_after, asked_wait(attempt)))


def asked_wait(attempt: Attempt) -> float:
    """Seconds the upstream asked to wait: retry-after-ms first (the openai SDK's order),
    then Retry-After in seconds; an HTTP date or nonsense asks nothing."""
    for value, unit in ((attempt.retry_after_ms, 0.001), (attempt.retry_after, 1.0)):
        try:
            seconds = float(value) * unit if value else None
        except ValueError:
            seconds = None
        if seconds is not None and math.isfinite(seconds) and seconds >= 0:
            return seconds
    return 0.0


async def call_with_retries(
    gateway: Gateway, model: str, path: str, payload: dict[str, Any], stream: bool
) -> tuple[Attempt, Deployment, int]:
    """(last attempt, the deployment that made it, attempts made)."""
    router = gateway.router
    plan = router.plan(model)
    tried: set[int] = set()
    context_fallback_used = False
    attempt: Attempt | None = None
    made = 0
    while plan:
        deployment = plan.pop(0)
        if id(deployment) in tried and attempt is not None:
            await asyncio.sleep(wait_before_retry(attempt, made - 1, router.settings))
        tried.add(id(deployment))
        made += 1
        attempt = await call(gateway, deployment, path, payload, stream)
        if attempt.status == 200:
            router.succeeded(deployment)
            return attempt, deployment, made
        if attempt.context_window_exceeded and not context_fallback_used:
            context_fallback_used = True
            plan = router.plan(model, context_window=True)
            continue
        if not attempt.retryable:
            return attempt, deployment, made
        router.failed(deployment)
    return attempt, deployment, made
