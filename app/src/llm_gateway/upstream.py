"""Calling the upstream: one attempt, and the retries and fallbacks around it.

A call tries the deployments the router plans (router_settings: ``num_retries`` further
attempts over the model's deployments, then each fallback model_name). Only failures
that another attempt may cure are retried: no answer at all (connection, timeout), 408,
409, 429 and 5xx. A 400 that says the context window was exceeded switches to the
model's ``context_window_fallbacks``, one that cites the content policy to its
``content_policy_fallbacks``. Moving on to an untried deployment happens at once;
trying one again waits first (exponential, at least ``retry_after``, and at least what
the upstream asked, up to MAX_WAIT_S: OpenAI's ``retry-after-ms``, else ``Retry-After`` in
seconds or as an HTTP date, read in that order as the openai SDK reads them). A stream is
retried only until the upstream answered 200: once bytes go to the client, the answer is
that deployment's.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson

from llm_gateway.config import Deployment, RouterSettings

if TYPE_CHECKING:
    from llm_gateway.gateway import Gateway

RETRYABLE_STATUSES = frozenset({408, 409, 429, 500, 502, 503, 504})
MAX_WAIT_S = 10.0
FIRST_BACKOFF_S = 0.1
# How an upstream says when to come back, most precise first (OpenAI sends both).
RETRY_AFTER_HEADERS = ("retry-after-ms", "Retry-After")


@dataclass
class Attempt:
    status: int  # the upstream's, or 0 when it did not answer (see error)
    raw: bytes = b""
    # The upstream's RETRY_AFTER_HEADERS, as sent: honoured here, relayed with a 429.
    retry_after: dict[str, str] = field(default_factory=dict)
    stream: aiohttp.ClientResponse | None = None  # open response of a 200 stream
    error: BaseException | None = None

    @property
    def asked_wait_s(self) -> float:
        """How long the upstream asked us to wait, in seconds (0: it did not say)."""
        if (millis := _number(self.retry_after.get("retry-after-ms"))) is not None:
            return millis / 1000
        value = self.retry_after.get("Retry-After")
        if (seconds := _number(value)) is not None:
            return seconds
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return 0.0

    @property
    def retryable(self) -> bool:
        return self.error is not None or self.status in RETRYABLE_STATUSES

    @property
    def retry_kind(self) -> str | None:
        """The retry_policy entry this failure falls under (None: num_retries rules)."""
        if isinstance(self.error, TimeoutError) or self.status == 408:
            return "TimeoutErrorRetries"
        if self.status == 429:
            return "RateLimitErrorRetries"
        if self.status >= 500:
            return "InternalServerErrorRetries"
        return None

    @property
    def special_fallbacks(self) -> str | None:
        """The fallback table a 400 of this kind switches to, as LiteLLM maps them: the
        context window exceeded, or the provider's content policy (OpenAI's
        content_policy_violation, Azure's content_filter)."""
        if self.status != 400:
            return None
        try:
            error = orjson.loads(self.raw).get("error") or {}
        except (orjson.JSONDecodeError, AttributeError):
            return None
        if not isinstance(error, dict):
            return None
        message = str(error.get("message", "")).lower()
        code = error.get("code")
        if code == "context_length_exceeded" or "context length" in message:
            return "context_window_fallbacks"
        if code in ("content_policy_violation", "content_filter"):
            return "content_policy_fallbacks"
        return None


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
    asked = {name: upstream.headers.get(name) for name in RETRY_AFTER_HEADERS}
    return Attempt(upstream.status, raw, {k: v for k, v in asked.items() if v})


def _number(value: str | None) -> float | None:
    """A non-negative finite number of a header, else None."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number >= 0 else None


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
    return min(MAX_WAIT_S, max(backoff, settings.retry_after, attempt.asked_wait_s))


async def call_with_retries(
    gateway: Gateway,
    model: str,
    path: str,
    payload: dict[str, Any],
    stream: bool,
    client_left: Callable[[], bool] = lambda: False,
) -> tuple[Attempt, Deployment, int]:
    """(last attempt, the deployment that made it, attempts made). No further attempt
    is made once ``client_left()``: each costs the upstream and nobody waits for it."""
    router = gateway.router
    plan = router.plan(model)
    tried: set[int] = set()
    special_used = False  # one switch to a special table per call, as in LiteLLM
    made_on: dict[str, int] = {}  # failed attempts per model_name
    attempt: Attempt | None = None
    last = plan[0]  # the deployment of the last attempt
    made = 0
    while plan:
        if attempt is not None and client_left():
            break
        deployment = plan.pop(0)
        if id(deployment) in tried and attempt is not None:
            await asyncio.sleep(wait_before_retry(attempt, made - 1, router.settings))
            if client_left():
                break
        tried.add(id(deployment))
        last = deployment
        made += 1
        attempt = await call(gateway, deployment, path, payload, stream)
        if attempt.status == 200:
            if not stream:  # a stream succeeds once it ended well (proxy._relay)
                router.succeeded(deployment)
            return attempt, deployment, made
        special = attempt.special_fallbacks
        if special and not special_used:
            special_used = True
            plan = router.plan(model, special)
            continue
        if not attempt.retryable:
            return attempt, deployment, made
        router.failed(deployment)
        on_model = made_on.get(deployment.model_name, 0) + 1
        made_on[deployment.model_name] = on_model
        allowed = router.settings.retry_policy.retries_for(
            attempt.retry_kind, router.settings.num_retries
        )
        if on_model > allowed:  # this kind got its retries: on to the fallbacks
            plan = [d for d in plan if d.model_name != deployment.model_name]
    return attempt, last, made
