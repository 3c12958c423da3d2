"""POST /v1/chat/completions and the other forwarded endpoints (endpoints.py): the hot path.

Deliberately a plain Starlette endpoint: FastAPI's dependency/validation machinery and
pydantic models cost more per request than the whole logging path. The body is parsed
with orjson and the few fields we route on are checked by hand.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse

from llm_gateway import metrics
from llm_gateway.config import Deployment
from llm_gateway.endpoints import CHAT, ENDPOINTS, Endpoint
from llm_gateway.errors import error_body, error_response
from llm_gateway.gateway import Gateway
from llm_gateway.redaction import logged_url, redacted_body, redacted_headers
from llm_gateway.upstream import AnswerTooLarge, Attempt, call_with_retries

log = logging.getLogger(__name__)


class BodyTooLarge(Exception):
    pass


# Request ids: a random per-process prefix plus a counter, "req_" + 32 hex digits like a
# UUID. Unique without a syscall per request (uuid4 reads the kernel's random source every
# time, ~30 us here); re-seeded in forked children so workers never share a prefix.
_id_prefix = ""
_id_counter = itertools.count()


def _reseed_request_ids() -> None:
    global _id_prefix, _id_counter
    _id_prefix = "req_" + os.urandom(11).hex()
    _id_counter = itertools.count()


_reseed_request_ids()
os.register_at_fork(after_in_child=_reseed_request_ids)


def new_request_id() -> str:
    return f"{_id_prefix}{next(_id_counter):010x}"


@dataclass
class Exchange:
    """What the request path knows about one call; becomes one requests + responses row."""

    request: Request
    alias: str | None
    started_at: float = field(default_factory=time.time)
    t0: float = field(default_factory=time.perf_counter)
    request_id: str = field(default_factory=new_request_id)
    endpoint: Endpoint = CHAT
    body: Any = None
    model: str | None = None
    deployment: Deployment | None = None
    attempts: int = 0  # upstream calls made (retries and fallbacks included)

    def record(self, status: int, response_body: Any, usage: Any, latency_s: float) -> dict:
        """The row pair for the writer (plain dict: it may be spooled as JSON)."""
        prompt, completion, total, cost = usage_columns(usage, self.deployment)
        body = self.body if isinstance(self.body, dict) else None
        user = body.get("user") if body else None
        return {
            "request_id": self.request_id,
            "route": self.endpoint.path,
            "method": "POST",
            "url": logged_url(self.request.scope["path"], self.request.scope["query_string"]),
            "headers": redacted_headers(self.request.scope["headers"]),
            "body": redacted_body(self.body),
            "model": self.model[:255] if self.model else None,  # varchar(255)
            "status_code": status,
            "key_alias": self.alias,
            "user": user[:255] if isinstance(user, str) else None,
            "started_at": self.started_at,
            "response_body": response_body,
            "latency_ms": latency_s * 1000,
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "tokens_used": total,
            "cost": cost,
            "deployment": self.deployment.label if self.deployment is not None else None,
            "attempts": self.attempts or None,
        }

    def headers(self, overhead_s: float, latency_s: float) -> dict[str, str]:
        return {
            "X-Request-ID": self.request_id,
            "X-DB-Overhead": f"{overhead_s * 1000:.2f}ms",
            "X-Total-Latency": f"{latency_s * 1000:.2f}ms",
        }


def usage_columns(
    usage: Any, deployment: Deployment | None
) -> tuple[int | None, int | None, int | None, float | None]:
    """(prompt, completion, total tokens, cost) as the columns accept them. An upstream's
    counts are not trusted to fit: a value that would not (a sum past INTEGER, a cost
    past numeric(12, 6)) is NULL, so the row keeps its payload instead of being refused
    and quarantined."""
    prompt = completion = total = cost = None
    if isinstance(usage, dict):
        # Chat, completions and embeddings count prompt/completion tokens; the
        # Responses API input/output tokens.
        prompt = _token_count(usage.get("prompt_tokens", usage.get("input_tokens")))
        completion = _token_count(usage.get("completion_tokens", usage.get("output_tokens")))
        total = _token_count(usage.get("total_tokens"))
        if total is None and prompt is not None and completion is not None:
            total = _token_count(prompt + completion)
    if deployment is not None and (prompt or completion):
        cost = round(
            (prompt or 0) * deployment.input_cost_per_token
            + (completion or 0) * deployment.output_cost_per_token,
            6,
        )
        cost = cost if cost < _MAX_COST else None
    return prompt, completion, total, cost


_MAX_COST = 10**6  # numeric(12, 6)


def _token_count(value: Any) -> int | None:
    """An upstream's token count as an int the INTEGER columns accept (11.0 -> 11);
    anything else (strings, NaN, out of range) is not a count and logs as NULL."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        value = int(value)
    return value if 0 <= value <= _INT4_MAX else None


_INT4_MAX = 2**31 - 1


async def _read_body(request: Request, limit: int) -> bytes:
    """Read the body from the ASGI channel, refusing more than ``limit`` bytes (also when
    chunked, where no Content-Length announces the size)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge
    receive = request.receive
    chunks = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _log(gateway: Gateway, ex: Exchange, status: int, body: Any, usage: Any) -> dict:
    """Log the exchange and return the response headers.

    Default mode only enqueues (microseconds); ``log_mode: sync`` waits for the commit.
    X-DB-Overhead is exactly the time spent here.
    """
    latency = time.perf_counter() - ex.t0
    log_start = time.perf_counter()
    record = ex.record(status, body, usage, latency)
    if gateway.config.service.log_mode == "sync":
        await gateway.writer.commit_now(record)
    else:
        gateway.writer.submit(record)
    overhead = time.perf_counter() - log_start
    _observe(ex, status, overhead, latency, record)
    return ex.headers(overhead, latency + overhead)


def _observe(ex: Exchange, status: int, overhead: float, latency: float, record: dict) -> None:
    model = ex.model if ex.deployment is not None else "-"  # bounded label set
    per_model = metrics.for_model(model)
    metrics.requests_counter(model, status).inc()
    per_model.latency.observe(latency)
    metrics.DB_OVERHEAD.observe(overhead)
    if record["tokens_used"]:
        per_model.prompt_tokens.inc(record["prompt_tokens"] or 0)
        per_model.completion_tokens.inc(record["completion_tokens"] or 0)
    if record["cost"]:
        per_model.cost.inc(record["cost"])


def _json_response(status: int, body: Any, headers: dict) -> Response:
    return Response(orjson.dumps(body), status, headers=headers, media_type="application/json")


async def forward_call(request: Request) -> Response:
    """Any endpoint of ENDPOINTS (chosen by the request's path)."""
    gateway: Gateway = request.app.state.gateway
    alias = gateway.keys.alias(request.headers.get("authorization"))
    ex = Exchange(request, alias, endpoint=ENDPOINTS[request.scope["path"]])
    try:
        return await _forward_call(gateway, ex)
    except asyncio.CancelledError:
        # The server cut the call (shutting down, or the client left): no answer leaves,
        # but the upstream may have been called (and charge), so the exchange keeps its row.
        if alias is not None:  # unauthenticated calls are never logged
            latency = time.perf_counter() - ex.t0
            gateway.writer.submit(ex.record(*_why_cut(request), None, latency))
        raise
    except Exception:
        # Whatever went wrong, the caller gets a request id and the exchange is logged.
        log.exception("unhandled error in %s (request %s)", ex.endpoint.path, ex.request_id)
        return await _reject(gateway, ex, 500, "internal error in the gateway", "internal_error")


async def _forward_call(gateway: Gateway, ex: Exchange) -> Response:
    request, alias = ex.request, ex.alias
    if alias is None:
        # Unauthenticated calls are not logged: a stranger must not be able to fill the DB.
        return error_response(
            401,
            "missing or invalid API key",
            "invalid_api_key",
            headers=ex.headers(0.0, time.perf_counter() - ex.t0),
        )
    try:
        raw = await _read_body(request, gateway.config.service.max_request_body_bytes)
    except ClientDisconnect:
        return Response(status_code=499)  # nobody is left to read it; nothing to log
    except BodyTooLarge:
        return await _reject(
            gateway,
            ex,
            413,
            f"request body exceeds {gateway.config.service.max_request_body_bytes} bytes",
            "request_too_large",
        )
    try:
        ex.body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return await _reject(gateway, ex, 400, "request body is not valid JSON", "invalid_json")
    if gateway.depth_check.exceeded(ex.body):
        # orjson reads deeper JSON than it writes: such a body could be neither forwarded
        # nor logged whole. The 400 row keeps a marker instead of the body.
        depth = gateway.config.service.max_request_json_depth
        ex.body = {"_unloggable": f"nested deeper than {depth} levels"}
        message = f"request body nests deeper than {depth} levels"
        return await _reject(gateway, ex, 400, message, "nesting_too_deep")
    problem, param = ex.endpoint.validate(ex.body)
    if problem:
        return await _reject(gateway, ex, 400, problem, "invalid_request", param)
    ex.model = ex.body["model"]
    if not gateway.router.has(ex.model):
        message = f"model {ex.model[:100]!r} is not configured"  # do not echo huge input
        return await _reject(gateway, ex, 404, message, "model_not_found", "model")
    if ex.body.get("stream") and ex.endpoint.streams:
        return await _stream(gateway, ex)
    return await _forward(gateway, ex)


async def _reject(gateway, ex, status, message, code, param=None) -> Response:
    body = error_body(status, message, code, param)
    return _json_response(status, body, await _log(gateway, ex, status, body, None))


def _map_upstream_error(status: int, raw: bytes) -> tuple[int, dict]:
    """Upstream 4xx keeps its status (and its OpenAI error body if it sent one); anything
    else is the gateway's upstream failing: 502."""
    try:
        parsed = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        parsed = None
    if 400 <= status < 500:
        if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
            return status, parsed
        text = raw.decode("utf-8", "replace")[:500] or f"HTTP {status}"
        message = f"upstream rejected the request: {text}"
        return status, error_body(status, message, "upstream_error")
    return 502, error_body(502, f"upstream returned HTTP {status}", f"upstream_http_{status}")


async def _upstream_error_response(
    gateway: Gateway, ex: Exchange, status: int, body: dict, retry_after: dict[str, str]
) -> Response:
    headers = await _log(gateway, ex, status, body, None)
    if status == 429:
        headers.update(retry_after)  # clients (the openai SDK too) honour them
    return _json_response(status, body, headers)


def _transport_error(exc: BaseException) -> tuple[int, dict]:
    if isinstance(exc, asyncio.TimeoutError):
        return 504, error_body(504, "upstream timed out", "upstream_timeout")
    if isinstance(exc, AnswerTooLarge):
        return 502, error_body(502, str(exc), "upstream_answer_too_large")
    return 502, error_body(
        502, f"upstream unreachable: {exc.__class__.__name__}", "upstream_unreachable"
    )


def _stream_transport_error(exc: BaseException) -> tuple[int, dict]:
    """The upstream answered 200, then its connection failed: it was reachable, so the
    error says the stream broke off (or stalled), not that nobody answered."""
    if isinstance(exc, asyncio.TimeoutError):
        return 504, error_body(504, "upstream stream stalled (timed out)", "upstream_timeout")
    message = f"upstream stream broke off: {exc.__class__.__name__}"
    return 502, error_body(502, message, "upstream_stream_broken")


async def _attempt(gateway: Gateway, ex: Exchange, payload: dict, stream: bool) -> Attempt:
    attempt, ex.deployment, ex.attempts = await call_with_retries(
        gateway,
        ex.model,
        ex.endpoint.upstream_path,
        payload,
        stream,
        client_left=lambda: _client_left(ex.request),
    )
    return attempt


async def _answer_failure(gateway: Gateway, ex: Exchange, attempt: Attempt) -> Response:
    if attempt.error is not None:
        status, body = _transport_error(attempt.error)
    else:
        status, body = _map_upstream_error(attempt.status, attempt.raw)
    if _client_left(ex.request):
        # Nobody receives this failure (the retries stopped when the client left): the
        # log says 499, with what the upstream answered.
        logged = {**_CLIENT_LEFT, "upstream_error": body["error"]}
        return _json_response(499, logged, await _log(gateway, ex, 499, logged, None))
    if attempt.error is not None:
        return _json_response(status, body, await _log(gateway, ex, status, body, None))
    return await _upstream_error_response(gateway, ex, status, body, attempt.retry_after)


async def _forward(gateway: Gateway, ex: Exchange) -> Response:
    attempt = await _attempt(gateway, ex, ex.body, stream=False)
    if attempt.status != 200:
        return await _answer_failure(gateway, ex, attempt)
    raw, status = attempt.raw, 200
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        status, body = 502, error_body(502, "upstream sent invalid JSON", "upstream_bad_json")
        raw = orjson.dumps(body)
    usage = body.get("usage") if isinstance(body, dict) else None
    if isinstance(body, dict) and _client_left(ex.request):
        # Nobody received the answer; log it (the upstream charged for it) as a 499.
        status, body = 499, {**body, "error": _CLIENT_LEFT["error"]}
    headers = await _log(gateway, ex, status, body, usage)
    # Relay the upstream's bytes as-is: no re-serialisation on the hot path.
    return Response(raw, status, headers=headers, media_type="application/json")


async def _stream(gateway: Gateway, ex: Exchange) -> Response:
    payload = ex.body
    client_wants_usage = True
    if ex.endpoint.stream_usage_option:
        stream_options = payload.get("stream_options")
        stream_options = dict(stream_options) if isinstance(stream_options, dict) else {}
        client_wants_usage = bool(stream_options.get("include_usage"))
        # Always ask for usage so the logged row has token counts and cost.
        payload = {**payload, "stream_options": {**stream_options, "include_usage": True}}
    attempt = await _attempt(gateway, ex, payload, stream=True)
    if attempt.stream is None:
        return await _answer_failure(gateway, ex, attempt)
    # Headers go out before the body exists, so they carry the time to first byte; the
    # exchange is logged when the stream ends (its cost shows in the db_overhead metric).
    headers = ex.headers(0.0, time.perf_counter() - ex.t0)
    return StreamingResponse(
        _relay(gateway, ex, attempt.stream, client_wants_usage),
        media_type="text/event-stream",
        headers={**headers, "Cache-Control": "no-cache"},
    )


# One server-sent event (its lines up to the blank one) and a stream's logged chunks. One
# line may hold a whole answer: the Responses API's response.completed (and
# output_text.done) event carries all the output text, the instructions and the tools on
# one line, so aiohttp's own limit (twice its 256 KiB read buffer) would cut a long
# answer's stream at its end. An upstream that never sends the line's end or the blank
# line, or never ends, must still not grow a worker's memory until the kernel kills it
# (and every exchange it held).
MAX_STREAM_EVENT_BYTES = 16 << 20
MAX_LOGGED_STREAM_BYTES = 32 << 20


class UpstreamStreamError(Exception):
    """The upstream's stream cannot be relayed (answered as upstream_bad_stream)."""


async def _sse_lines(content: aiohttp.StreamReader) -> AsyncIterator[bytes]:
    """The stream's lines, each with its line ending. SSE allows LF, CRLF and a lone CR
    (the openai SDK reads all three); aiohttp's readline knows only LF. A CRLF cut
    between two reads is one line ending: the LF starting the next read is dropped."""
    unfinished: list[bytes] = []  # a line whose end has not arrived yet
    size = 0
    skip_lf = False
    async for data in content.iter_any():
        if skip_lf and data[:1] == b"\n":
            data = data[1:]
        if not data:
            continue
        lines = data.splitlines(keepends=True)  # bytes: only LF, CRLF and CR end lines
        last = lines[-1]
        skip_lf = last[-1:] == b"\r"
        if unfinished:
            unfinished.append(lines[0])
            if len(lines) == 1 and not last.endswith((b"\n", b"\r")):
                size += len(last)
                if size > MAX_STREAM_EVENT_BYTES:
                    raise UpstreamStreamError(f"an SSE line over {MAX_STREAM_EVENT_BYTES} bytes")
                continue
            lines[0] = b"".join(unfinished)
            unfinished, size = [], 0
        if not last.endswith((b"\n", b"\r")):
            unfinished.append(lines.pop())
            size = len(unfinished[0])
        for line in lines:
            yield line
    if unfinished:
        yield b"".join(unfinished)


_CLIENT_LEFT = error_body(499, "client closed the connection", "client_disconnected")
_SHUT_DOWN = error_body(
    503, "the gateway shut down before the answer was complete", "gateway_shutdown"
)


def _client_left(request: Request) -> bool:
    """Whether the server already knows the client disconnected, without waiting.

    Steps the ASGI ``receive`` coroutine once by hand: it returns at once if the client
    is gone, otherwise it suspends on its "next message" wait, and closing it withdraws
    that wait. About 2 us, against ~11 us for a watcher task per request (the stream
    relay needs one anyway, as it must notice a client leaving while it relays).
    """
    pending = request.receive()
    try:
        pending.send(None)
    except StopIteration as finished:
        return finished.value.get("type") == "http.disconnect"
    pending.close()
    return False


def _why_cut(request: Request) -> tuple[int, dict]:
    """(status, error body) of a call cancelled before its answer was complete."""
    return (499, _CLIENT_LEFT) if _client_left(request) else (503, _SHUT_DOWN)


def _read_event(
    event: list[bytes], stream_log: Any, client_wants_usage: bool, logged: int
) -> tuple[bool, bool, int]:
    """Feed one SSE event's data to the stream log: (relay it?, was it [DONE]?, bytes
    logged so far). Past MAX_LOGGED_STREAM_BYTES only the chunks' tails are logged."""
    relay, done = True, False
    for part in event:
        if part.startswith(b"data:"):
            data = part[5:].strip()
            if data == b"[DONE]":
                done = True
                continue
            try:
                chunk = orjson.loads(data)
            except orjson.JSONDecodeError:
                continue
            if isinstance(chunk, dict):
                logged += len(data)
                stream_log.feed(chunk if logged <= MAX_LOGGED_STREAM_BYTES else _tail_of(chunk))
                if not client_wants_usage and _usage_only(chunk):
                    relay = False
    return relay, done, logged


def _usage_only(chunk: dict) -> bool:
    """The chunk include_usage adds at the end: usage and empty choices. The gateway
    always asks for it; clients that did not are not sent it (they may index
    choices[0]). Any other chunk without choices (an error, Azure's content-filter
    chunk) is relayed as it came."""
    usage = chunk.get("usage")
    return isinstance(usage, dict) and not chunk.get("choices") and "error" not in chunk


async def _wait_for_disconnect(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _tail_of(chunk: dict) -> dict:
    """What the stream log still takes of a chunk past its budget: the usage, and the
    Responses API's terminal event (the whole response, at most one line long)."""
    return {key: chunk[key] for key in ("usage", "type", "response") if key in chunk}


async def _relay(
    gateway: Gateway, ex: Exchange, upstream: aiohttp.ClientResponse, client_wants_usage: bool
) -> AsyncIterator[bytes]:
    stream_log = ex.endpoint.new_stream_log()
    status = 200
    error: dict | None = None
    event: list[bytes] = []
    event_size = 0
    # An upstream may stream without end: what the log accumulates is bounded, the relay
    # to the client is not (it decides when it has had enough).
    logged = 0
    # The upstream's answer is complete once its [DONE] has been passed on or its stream
    # ended: a client that closes right after reading [DONE] (the openai SDK does) has
    # its whole answer, so only leaving before that is a 499.
    complete = done = False
    # ASGI 2.4 servers drop writes to a closed connection silently; only the receive
    # channel says the client left, so watch it to stop relaying and log a 499. The
    # watcher runs only when the relay waits for the upstream, and an upstream's stream
    # may be buffered whole (one that answered after the client gave up, say): so the
    # end of the answer goes out only after asking, without waiting, whether the client
    # is still there; if not, nobody received it and the log says 499.
    client_gone = asyncio.create_task(_wait_for_disconnect(ex.request))
    try:
        async for line in _sse_lines(upstream.content):
            if client_gone.done():
                break
            if line.strip():
                event.append(line)
                event_size += len(line)
                if event_size > MAX_STREAM_EVENT_BYTES:
                    raise UpstreamStreamError(
                        f"an event longer than {MAX_STREAM_EVENT_BYTES} bytes"
                    )
                continue
            if not event:
                continue
            relay, done_here, logged = _read_event(event, stream_log, client_wants_usage, logged)
            done = done or done_here
            ending = not complete and (done or stream_log.finished)
            if ending and _client_left(ex.request):
                break  # nobody is left to receive the end: a 499
            if relay:
                # Ended by its own blank line: a LF added to a CR-ended line would
                # make a CRLF, one line ending, and merge this event with the next.
                yield b"".join(event) + line
            complete = complete or ending
            event, event_size = [], 0
        else:
            # The upstream's stream ended (with or without [DONE]); its end reached the
            # client only if the client is still there.
            if complete or not _client_left(ex.request):
                if event:  # the last event, without the blank line that should end it
                    relay, done_here, logged = _read_event(
                        event, stream_log, client_wants_usage, logged
                    )
                    done = done or done_here
                    if relay:
                        yield b"".join(event) + b"\n\n"
                complete = True
                if not (done or stream_log.answered or stream_log.error):
                    # The body ended cleanly mid-answer. The SDK would take the cut answer
                    # for a whole one; an error event makes it raise, and the row says 502.
                    message = "upstream stream ended before the answer did"
                    status, error = 502, error_body(502, message, "upstream_stream_incomplete")
                    yield b"data: " + orjson.dumps(error) + b"\n\n"
    except (TimeoutError, aiohttp.ClientError) as exc:
        status, error = _stream_transport_error(exc)
        yield b"data: " + orjson.dumps(error) + b"\n\n"
    except asyncio.CancelledError:
        # Starlette cancels the relay when the client leaves (499 below); the server when
        # it shuts down (serving.GatewayWorker). Log what was relayed, and why it ended.
        if not complete and not _client_left(ex.request):
            status, error = 503, _SHUT_DOWN
        raise
    except Exception as exc:
        # E.g. a line over MAX_STREAM_EVENT_BYTES: the stream ends with an error event, and
        # the log says 502, not a 200 with a cut answer.
        log.exception("upstream stream failed (request %s)", ex.request_id)
        message = f"upstream stream could not be relayed: {exc.__class__.__name__}"
        status, error = 502, error_body(502, message, "upstream_bad_stream")
        yield b"data: " + orjson.dumps(error) + b"\n\n"
    finally:
        client_gone.cancel()
        upstream.release()
        body = stream_log.body()
        if logged > MAX_LOGGED_STREAM_BYTES:
            body["_truncated"] = (
                f"chunks past the first {MAX_LOGGED_STREAM_BYTES} bytes add only usage"
            )
        # A stream's deployment succeeded or failed only now (call_with_retries does not
        # count its 200): one that breaks its streams off counts towards its cooldown,
        # as with a 500, although the stream itself is not retried (bytes went out).
        if error is not None:
            body["error"] = error["error"]
            if error is not _SHUT_DOWN:
                gateway.router.failed(ex.deployment)
        elif stream_log.error is not None:
            # The upstream answered 200, then reported its model failed: the client's SDK
            # raises it, so the row says so too (502, as an upstream 5xx would be).
            status = 502
            body["error"] = stream_log.error
            gateway.router.failed(ex.deployment)
        elif complete:
            gateway.router.succeeded(ex.deployment)
        else:
            # The client went away mid-stream (499, nginx's convention); log what was sent.
            status = 499
            body["error"] = _CLIENT_LEFT["error"]
        await _log(gateway, ex, status, body, stream_log.usage)
