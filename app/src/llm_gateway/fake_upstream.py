"""Fake OpenAI-compatible upstream for the lab, the tests and the benchmark.

It stands for a provider we cannot reach from here and is never on the production
path. Answers are deterministic: the reply echoes the last user message, token counts
are whitespace-separated words (prompt: all message texts; completion: the reply).

Endpoints
    POST /v1/chat/completions   chat.completion, or SSE chunks when "stream": true
                                (a usage chunk when stream_options.include_usage)
    POST /v1/completions        legacy text_completion, plain or streamed
    POST /v1/embeddings         deterministic 8-dimension vectors per input
    POST /v1/responses          Responses API object, or its typed event stream
                                (fake_endpoints.py)
    POST /openai/deployments/<d>/{chat/completions,completions,embeddings},
    POST /openai/responses      the same, as Azure OpenAI serves them (?api-version=
                                required, key in an api-key header)
    GET  /v1/models             the models from --models
    GET  /health                {"status": "ok"}, never needs a key

Options (each also read from the environment, so a systemd unit can set it)
    --host          FAKE_UPSTREAM_HOST          127.0.0.1
    --port          FAKE_UPSTREAM_PORT          9000
    --latency-ms    FAKE_UPSTREAM_LATENCY_MS    300   fixed delay before answering
    --jitter-ms     FAKE_UPSTREAM_JITTER_MS     100   plus uniform random 0..jitter
    --error-rate    FAKE_UPSTREAM_ERROR_RATE    0     share of requests answered with
                                                      a random 500, 429 or 503
    --chunk-delay-ms FAKE_UPSTREAM_CHUNK_DELAY_MS 20  pause between streamed deltas
    --models        FAKE_UPSTREAM_MODELS        fake-model   comma-separated
    --api-key       FAKE_UPSTREAM_API_KEY       unset: any key (or none) is accepted;
                                                set: other bearer keys get a 401
    --seed          FAKE_UPSTREAM_SEED          unset: seeds jitter and error draws

Per-request controls, for tests
    model "fake-error-<status>"   answer with that status (e.g. fake-error-503)
    model "fake-nested-<depth>"   add a field "nested" that many arrays deep to a plain
                                  answer (a misbehaving provider; at most 1000)
    model "fake-refusal"          the model refuses (message.refusal, streamed as deltas)
    model "fake-context-exceeded" 400 with OpenAI's context_length_exceeded error
    model "fake-endless"          streamed: deltas without end, as fast as they are read
                                  (a provider stuck in a loop)
    model "fake-redirect"         307 to the same endpoint with ?redirected=1, which
                                  answers as usual (a proxy or host that redirects)
    model "fake-stream-error"     a stream fails after its first deltas as OpenAI's do: an
                                  error event (chat, completions: data: {"error": ...};
                                  Responses API: an "error" event), then the end, no [DONE]
    model "fake-stream-cut"       a stream ends after its first deltas, its HTTP body
                                  properly ended but the answer not: no finish_reason, no
                                  [DONE], no response.completed (a provider or proxy that
                                  gave up mid-answer)
    model "fake-long-<chars>"     (Responses API) a reply that many characters long, so
                                  a streamed answer's response.completed event is one
                                  very long line, as a long answer's is
    model "fake-stream-abort"     a stream whose connection is torn down after its first
                                  deltas (no end of the chunked body): a provider or proxy
                                  that died mid-answer
    model "fake-newline-<cr|crlf>" streams with that line ending (SSE allows LF, CRLF and a
                                  lone CR); CRLF events are written in two writes cut
                                  between CR and LF, as a reader may receive them
    encoding_format "base64"      embeddings as OpenAI sends them then (the openai SDK's
                                  default): little-endian float32, base64-encoded
    model "fake-rate-limited-ms"  429 whose only wait is OpenAI's retry-after-ms: 1200
    model "fake-content-policy"   400 with OpenAI's content_policy_violation error
    "tools" in the request        the answer calls the first tool with {"text": <last
                                  user message>} (tool_calls; streamed in fragments)
    model "fake-encoded-<coding>" answer (plain or streamed) in that content coding
                                  (gzip, deflate, br, zstd) whatever the client accepts,
                                  as a CDN or proxy in front of a provider may
    Accept-Encoding               otherwise answers are compressed as a provider does
                                  when the client accepts it (zstd, br, gzip, deflate)
    header X-Fake-Status: <code>  the same, for any model
    header X-Fake-Delay-Ms: <ms>  replaces latency and jitter (e.g. to force a timeout)

Errors use OpenAI's shape: {"error": {"message", "type", "param", "code"}}.
Any model name is accepted, like an OpenAI-compatible server that serves one model.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hmac
import os
import random
import sys
import time
import uuid
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import brotli
import orjson
from aiohttp import web

if sys.version_info >= (3, 14):
    from compression.zstd import ZstdCompressor
else:
    from backports.zstd import ZstdCompressor

ERROR_MODEL_PREFIX = "fake-error-"
NESTED_MODEL_PREFIX = "fake-nested-"
ENCODED_MODEL_PREFIX = "fake-encoded-"
# Parameters OpenAI rejects with a 400 unless they are numbers.
NUMBER_PARAMETERS = ("temperature", "top_p", "presence_penalty", "frequency_penalty")
REFUSAL_MODEL = "fake-refusal"
CONTEXT_EXCEEDED_MODEL = "fake-context-exceeded"
ENDLESS_MODEL = "fake-endless"
REDIRECT_MODEL = "fake-redirect"
CONTEXT_EXCEEDED = "context_length_exceeded"  # OpenAI's error code
STREAM_ERROR_MODEL = "fake-stream-error"
STREAM_CUT_MODEL = "fake-stream-cut"
STREAM_ABORT_MODEL = "fake-stream-abort"
LONG_MODEL_PREFIX = "fake-long-"
NEWLINE_MODEL_PREFIX = "fake-newline-"
NEWLINES = {"cr": b"\r", "crlf": b"\r\n"}
MAX_LONG_CHARS = 16 * 2**20
# Text deltas a failing stream sends before its error event.
DELTAS_BEFORE_ERROR = 1
# What OpenAI sends mid-stream when the model fails after the 200 went out.
STREAM_ERROR = {
    "message": "The server had an error while processing your request. Sorry about that!",
    "type": "server_error",
    "param": None,
    "code": None,
}
RATE_LIMITED_MS_MODEL = "fake-rate-limited-ms"
CONTENT_POLICY_MODEL = "fake-content-policy"
REFUSAL = "I'm sorry, but I can't help with that request."
# Streamed tool-call arguments arrive in fragments of this many characters.
ARGUMENT_FRAGMENT = 8
# Preference when a client accepts several codings, as large providers' CDNs choose.
CODINGS = ("zstd", "br", "gzip", "deflate")
# orjson writes at most 254 levels; the nested field is built as JSON text instead.
MAX_NESTED_DEPTH = 1000
INJECTED_STATUSES = (500, 429, 503)
# Enough deltas to exercise a client's chunk handling, few enough to stay fast.
WORDS_PER_DELTA = 3
MAX_DELAY_MS = 600_000

_ERROR_KINDS = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
    500: ("server_error", None),
    502: ("server_error", None),
    503: ("server_error", "service_unavailable"),
}


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 9000
    latency_ms: float = 300.0
    jitter_ms: float = 100.0
    error_rate: float = 0.0
    chunk_delay_ms: float = 20.0
    models: tuple[str, ...] = ("fake-model",)
    api_key: str | None = None
    seed: int | None = None
    rng: random.Random = field(default_factory=random.Random, compare=False)

    def __post_init__(self) -> None:
        if not 0.0 <= self.error_rate <= 1.0:
            raise ValueError("error rate must be between 0 and 1")
        if self.latency_ms < 0 or self.jitter_ms < 0 or self.chunk_delay_ms < 0:
            raise ValueError("delays must not be negative")
        if self.seed is not None:
            self.rng.seed(self.seed)


SETTINGS_KEY = web.AppKey("settings", Settings)


def json_response(
    body: object, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    # orjson is several times faster than json here, which matters for the direct baseline.
    return web.Response(
        body=orjson.dumps(body), status=status, headers=headers, content_type="application/json"
    )


def error_response(
    status: int,
    message: str,
    headers: dict[str, str] | None = None,
    param: str | None = None,
    code: str | None = None,
) -> web.Response:
    kind, default_code = _ERROR_KINDS.get(
        status, ("server_error" if status >= 500 else "invalid_request_error", None)
    )
    code = code or default_code
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return json_response(body, status=status, headers=headers)


def injected_error(status: int) -> web.Response:
    # A real provider's 429 says when to come back; clients and gateways look for it.
    # OpenAI and Azure send it in milliseconds too (the openai SDK reads that first).
    headers = {"Retry-After": "1", "retry-after-ms": "600"} if status == 429 else None
    return error_response(status, f"fake upstream: injected error {status}", headers)


class Encoder:
    """Incremental content coding. Every ``encode`` is flushed, so each streamed event
    reaches the client whole, as a compressing proxy's event stream does."""

    def __init__(self, coding: str):
        self.coding = coding
        if coding in ("gzip", "deflate"):
            # gzip: wbits 16+15; HTTP "deflate" is the zlib format (RFC 9110), wbits 15.
            self._zlib = zlib.compressobj(wbits=31 if coding == "gzip" else 15)
        elif coding == "br":
            self._brotli = brotli.Compressor()
        else:
            self._zstd = ZstdCompressor()

    def encode(self, data: bytes) -> bytes:
        if self.coding in ("gzip", "deflate"):
            return self._zlib.compress(data) + self._zlib.flush(zlib.Z_SYNC_FLUSH)
        if self.coding == "br":
            return self._brotli.process(data) + self._brotli.flush()
        return self._zstd.compress(data, mode=ZstdCompressor.FLUSH_BLOCK)

    def finish(self) -> bytes:
        if self.coding in ("gzip", "deflate"):
            return self._zlib.flush()
        if self.coding == "br":
            return self._brotli.finish()
        return self._zstd.flush()


def negotiate_coding(request: web.Request, model: str) -> str | None:
    """The coding to answer in: forced by the model name, else the first of CODINGS the
    client's Accept-Encoding admits (q > 0), else none."""
    forced = model.removeprefix(ENCODED_MODEL_PREFIX)
    if model.startswith(ENCODED_MODEL_PREFIX) and forced in CODINGS:
        return forced
    accepted = set()
    for item in request.headers.get("Accept-Encoding", "").split(","):
        name, _, params = item.strip().partition(";")
        if params.replace(" ", "") not in ("q=0", "q=0.0", "q=0.00", "q=0.000"):
            accepted.add(name.strip().lower())
    return next((coding for coding in CODINGS if coding in accepted), None)


def message_text(message: object) -> str:
    """Text of one chat message; content is a string or a list of typed parts."""
    if not isinstance(message, dict):
        return ""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            p.get("text", "")
            for p in content
            if isinstance(p, dict) and isinstance(p.get("text"), str)
        )
    return ""


def count_tokens(text: str) -> int:
    return len(text.split())


def build_reply(messages: list, max_tokens: int | None) -> tuple[list[str], str]:
    """Reply words and finish_reason; echoing the prompt makes answers checkable in tests."""
    last_user = next(
        (m for m in reversed(messages) if isinstance(m, dict) and m.get("role") == "user"), None
    )
    words = (
        ["Fake", "reply:", *message_text(last_user).split()] if last_user else ["Fake", "reply."]
    )
    if max_tokens is not None and max_tokens < len(words):
        return words[: max(max_tokens, 0)], "length"
    return words, "stop"


def check_auth(request: web.Request, settings: Settings) -> web.Response | None:
    azure = request.path.startswith("/openai/")
    if azure and not request.query.get("api-version"):
        return error_response(404, "Resource not found")  # what Azure answers without it
    if settings.api_key is None:
        return None
    if azure:  # Azure OpenAI takes the key in an api-key header
        supplied, expected = request.headers.get("api-key", ""), settings.api_key
    else:
        supplied, expected = request.headers.get("Authorization", ""), f"Bearer {settings.api_key}"
    if hmac.compare_digest(supplied.encode(), expected.encode()):
        return None
    return error_response(401, "Incorrect API key provided.")


def requested_status(request: web.Request, model: str) -> int | None:
    header = request.headers.get("X-Fake-Status")
    if header is None and model.startswith(ERROR_MODEL_PREFIX):
        header = model.removeprefix(ERROR_MODEL_PREFIX)
    if header is None:
        return None
    try:
        status = int(header)
    except ValueError:
        return 400
    return status if 400 <= status <= 599 else 400


def delay_seconds(request: web.Request, settings: Settings) -> float:
    forced = request.headers.get("X-Fake-Delay-Ms")
    if forced is not None:
        try:
            return min(max(float(forced), 0.0), MAX_DELAY_MS) / 1000
        except ValueError:
            pass
    jitter = settings.rng.uniform(0, settings.jitter_ms) if settings.jitter_ms else 0.0
    return (settings.latency_ms + jitter) / 1000


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


async def admit(request: web.Request, required: str) -> tuple[dict, web.Response | None]:
    """What every endpoint does first, as a provider does: the key, the JSON body, the
    model and the ``required`` field, parameter types, then the configured delay and any
    injected error. Returns (payload, None) or (payload, the error answer)."""
    settings = request.app[SETTINGS_KEY]
    if (denied := check_auth(request, settings)) is not None:
        return {}, denied
    try:
        payload = orjson.loads(await request.read())
    except ValueError:  # orjson.JSONDecodeError is a ValueError
        return {}, error_response(400, "We could not parse the JSON body of your request.")
    if not isinstance(payload, dict):
        return {}, error_response(400, "The request body must be a JSON object.")
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        return payload, error_response(400, "you must provide a model parameter")
    if required not in payload:
        return payload, error_response(400, f"Missing required parameter: '{required}'.")
    for name in NUMBER_PARAMETERS:
        value = payload.get(name)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
            message = f"Invalid type for '{name}': expected a decimal, but got a string instead."
            return payload, error_response(400, message, param=name)
    delay = delay_seconds(request, settings)
    # Zero latency skips the sleep entirely: even sleep(0) costs a loop iteration.
    if delay > 0:
        await asyncio.sleep(delay)
    if model == REDIRECT_MODEL and "redirected" not in request.query:
        return payload, web.Response(
            status=307, headers={"Location": f"{request.path}?redirected=1"}
        )
    if model == CONTEXT_EXCEEDED_MODEL:
        message = "This model's maximum context length is 16 tokens. Please reduce the length."
        return payload, error_response(400, message, param="messages", code=CONTEXT_EXCEEDED)
    if model == CONTENT_POLICY_MODEL:
        message = "Your request was rejected as a result of our safety system."
        return payload, error_response(400, message, code="content_policy_violation")
    if model == RATE_LIMITED_MS_MODEL:
        # OpenAI says how long to wait in milliseconds too; clients read it first.
        headers = {"retry-after-ms": "1200"}
        return payload, error_response(429, "fake upstream: rate limited", headers)
    status = requested_status(request, model)
    if status is None and settings.error_rate and settings.rng.random() < settings.error_rate:
        status = settings.rng.choice(INJECTED_STATUSES)
    if status is not None:
        return payload, injected_error(status)
    return payload, None


async def chat_completions(request: web.Request) -> web.StreamResponse:
    payload, refused = await admit(request, "messages")
    if refused is not None:
        return refused
    model, messages = payload["model"], payload["messages"]
    if not isinstance(messages, list) or not messages:
        return error_response(400, "'messages' must be a non-empty array")

    answer = build_answer(payload, model, messages)
    prompt_tokens = sum(count_tokens(message_text(m)) for m in messages)
    usage = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": answer.completion_tokens,
        "total_tokens": prompt_tokens + answer.completion_tokens,
    }
    if payload.get("stream") is True and model == ENDLESS_MODEL:
        return await endless_stream(request, model)
    if payload.get("stream") is True:
        return await stream_completion(
            request, model, answer, usage if wants_stream_usage(payload) else None
        )
    body = {
        "id": completion_id(),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": answer.message,
                "logprobs": None,
                "finish_reason": answer.finish_reason,
            }
        ],
        "usage": usage,
    }
    raw = orjson.dumps(body)
    if model.startswith(NESTED_MODEL_PREFIX):
        raw = nested_answer(raw, model.removeprefix(NESTED_MODEL_PREFIX))
    return encoded_json(request, raw, model)


def wants_stream_usage(payload: dict) -> bool:
    options = payload.get("stream_options")
    return isinstance(options, dict) and options.get("include_usage") is True


def nested_answer(raw: bytes, depth_text: str) -> bytes:
    depth = min(int(depth_text), MAX_NESTED_DEPTH) if depth_text.isdigit() else 1
    return raw[:-1] + b',"nested":' + b"[" * depth + b"]" * depth + b"}"


@dataclass
class Answer:
    """One assistant message, whole (plain answers) and as stream deltas."""

    message: dict
    deltas: list[dict]  # the first carries the role
    finish_reason: str
    completion_tokens: int


def build_answer(payload: dict, model: str, messages: list) -> Answer:
    tools = payload.get("tools")
    if model == REFUSAL_MODEL:
        step = ARGUMENT_FRAGMENT
        pieces = [REFUSAL[i : i + step] for i in range(0, len(REFUSAL), step)]
        first = {"role": "assistant", "content": None, "refusal": ""}
        return Answer(
            {"role": "assistant", "content": None, "refusal": REFUSAL},
            [first, *({"refusal": piece} for piece in pieces)],
            "stop",
            count_tokens(REFUSAL),
        )
    if isinstance(tools, list) and tools and payload.get("tool_choice") != "none":
        return tool_call_answer(tools[0], messages)
    max_tokens = payload.get("max_completion_tokens", payload.get("max_tokens"))
    words, finish_reason = build_reply(
        messages, max_tokens if isinstance(max_tokens, int) else None
    )
    deltas: list[dict] = [{"role": "assistant", "content": ""}]
    for start in range(0, len(words), WORDS_PER_DELTA):
        piece = " ".join(words[start : start + WORDS_PER_DELTA])
        deltas.append({"content": piece if start == 0 else " " + piece})
    message = {"role": "assistant", "content": " ".join(words), "refusal": None}
    return Answer(message, deltas, finish_reason, len(words))


def tool_call_answer(tool: object, messages: list) -> Answer:
    function = tool.get("function") if isinstance(tool, dict) else None
    name = function.get("name") if isinstance(function, dict) else None
    name = name if isinstance(name, str) else "tool"
    last = message_text(messages[-1]) if messages else ""
    arguments = orjson.dumps({"text": last}).decode()
    call_id = f"call_{uuid.uuid4().hex[:24]}"
    call = {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
    first_call = {"index": 0, "id": call_id, "type": "function",
                  "function": {"name": name, "arguments": ""}}  # fmt: skip
    deltas: list[dict] = [{"role": "assistant", "content": None, "tool_calls": [first_call]}]
    for start in range(0, len(arguments), ARGUMENT_FRAGMENT):
        fragment = arguments[start : start + ARGUMENT_FRAGMENT]
        deltas.append({"tool_calls": [{"index": 0, "function": {"arguments": fragment}}]})
    message = {"role": "assistant", "content": None, "refusal": None, "tool_calls": [call]}
    return Answer(message, deltas, "tool_calls", count_tokens(arguments))


def encoded_json(request: web.Request, body: object, model: str) -> web.Response:
    """A JSON answer, compressed as negotiated (or forced by the model name)."""
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    coding = negotiate_coding(request, model)
    if coding is None:
        return web.Response(body=raw, content_type="application/json")
    encoder = Encoder(coding)
    return web.Response(
        body=encoder.encode(raw) + encoder.finish(),
        content_type="application/json",
        headers={"Content-Encoding": coding, "Vary": "Accept-Encoding"},
    )


class EventStream:
    """A server-sent event stream, compressed as negotiated, paced by --chunk-delay-ms."""

    def __init__(self, request: web.Request, model: str):
        self.request = request
        self.settings = request.app[SETTINGS_KEY]
        coding = negotiate_coding(request, model)
        self.encoder = Encoder(coding) if coding else None
        headers = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        if coding:
            headers.update({"Content-Encoding": coding, "Vary": "Accept-Encoding"})
        self.response = web.StreamResponse(headers=headers)
        self.sent = 0
        self.newline = NEWLINES.get(model.removeprefix(NEWLINE_MODEL_PREFIX), b"\n")

    async def send(self, data: dict | bytes, event: str | None = None) -> None:
        if self.sent == 0:
            await self.response.prepare(self.request)
        elif self.settings.chunk_delay_ms:
            await asyncio.sleep(self.settings.chunk_delay_ms / 1000)
        self.sent += 1
        text = data if isinstance(data, bytes) else orjson.dumps(data)
        nl = self.newline
        line = (b"event: " + event.encode() + nl if event else b"") + b"data: " + text
        if nl == b"\r\n":
            await self._write(line + b"\r")
            await self._write(b"\n\r\n")
        else:
            await self._write(line + nl + nl)

    async def _write(self, data: bytes) -> None:
        await self.response.write(self.encoder.encode(data) if self.encoder else data)

    async def fail(self) -> web.StreamResponse:
        """End the stream as OpenAI does when the model fails mid-answer."""
        await self.send({"error": STREAM_ERROR})
        return await self.close()

    def abort(self) -> web.StreamResponse:
        """Tear the connection down mid-body, as a dying process or proxy does."""
        if self.request.transport is not None:
            self.request.transport.abort()
        return self.response

    async def close(self) -> web.StreamResponse:
        if self.encoder is not None:
            await self.response.write(self.encoder.finish())
        await self.response.write_eof()
        return self.response


async def stream_completion(
    request: web.Request, model: str, answer: Answer, usage: dict | None
) -> web.StreamResponse:
    stream = EventStream(request, model)
    base = {
        "id": completion_id(),
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        "model": model,
    }

    async def send(choices: list, **extra: object) -> None:
        await stream.send({**base, "choices": choices, **extra})

    # OpenAI opens with the role, then the deltas, then an empty delta carrying
    # finish_reason, then (when asked for) a usage-only chunk.
    for sent, delta in enumerate(answer.deltas):
        if sent == 1 + DELTAS_BEFORE_ERROR:  # the role came first
            if model == STREAM_ERROR_MODEL:
                return await stream.fail()
            if model == STREAM_CUT_MODEL:
                return await stream.close()
            if model == STREAM_ABORT_MODEL:
                return stream.abort()
        await send([{"index": 0, "delta": delta, "finish_reason": None}])
    await send([{"index": 0, "delta": {}, "finish_reason": answer.finish_reason}])
    if usage is not None:
        await send([], usage=usage)
    await stream.send(b"[DONE]")
    return await stream.close()


async def endless_stream(request: web.Request, model: str) -> web.StreamResponse:
    """Deltas until the reader goes away (no pacing: the reader sets the speed)."""
    stream = EventStream(request, model)
    base = {"id": completion_id(), "object": "chat.completion.chunk", "model": model}
    words = " ".join(f"loop{i}" for i in range(50))
    await stream.response.prepare(request)
    with contextlib.suppress(ConnectionError):
        while True:
            delta = {"index": 0, "delta": {"content": words}, "finish_reason": None}
            await stream._write(b"data: " + orjson.dumps({**base, "choices": [delta]}) + b"\n\n")
    return stream.response


async def list_models(request: web.Request) -> web.Response:
    settings = request.app[SETTINGS_KEY]
    if (denied := check_auth(request, settings)) is not None:
        return denied
    data = [
        {"id": name, "object": "model", "created": 0, "owned_by": "fake-upstream"}
        for name in settings.models
    ]
    return json_response({"object": "list", "data": data})


async def health(_request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


def create_app(settings: Settings | None = None) -> web.Application:
    # Real providers accept large prompts; aiohttp's 1 MiB default would reject them.
    app = web.Application(client_max_size=32 * 1024 * 1024)
    app[SETTINGS_KEY] = settings or Settings()
    app.router.add_post("/v1/chat/completions", chat_completions)
    # Imported here: those handlers build on this module's helpers.
    from llm_gateway.fake_endpoints import completions, embeddings, responses

    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_post("/v1/responses", responses)
    # Azure OpenAI's paths: the deployment in the path, ?api-version=, an api-key header.
    deployment = "/openai/deployments/{deployment}"
    app.router.add_post(deployment + "/chat/completions", chat_completions)
    app.router.add_post(deployment + "/completions", completions)
    app.router.add_post(deployment + "/embeddings", embeddings)
    app.router.add_post("/openai/responses", responses)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/health", health)
    return app


def parse_args(argv: Sequence[str] | None = None) -> Settings:
    def env(name: str, default: str | None = None) -> str | None:
        return os.environ.get(f"FAKE_UPSTREAM_{name}", default)

    # argparse converts string defaults with `type`, so environment values are checked too.
    parser = argparse.ArgumentParser(
        prog="llm-fake-upstream", description="Fake OpenAI-compatible upstream."
    )
    parser.add_argument("--host", default=env("HOST", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=env("PORT", "9000"))
    parser.add_argument("--latency-ms", type=float, default=env("LATENCY_MS", "300"))
    parser.add_argument("--jitter-ms", type=float, default=env("JITTER_MS", "100"))
    parser.add_argument("--error-rate", type=float, default=env("ERROR_RATE", "0"))
    parser.add_argument("--chunk-delay-ms", type=float, default=env("CHUNK_DELAY_MS", "20"))
    parser.add_argument("--models", default=env("MODELS", "fake-model"))
    parser.add_argument("--api-key", default=env("API_KEY") or None)
    parser.add_argument("--seed", type=int, default=env("SEED") or None)
    args = parser.parse_args(argv)
    try:
        return Settings(
            host=args.host,
            port=args.port,
            latency_ms=args.latency_ms,
            jitter_ms=args.jitter_ms,
            error_rate=args.error_rate,
            chunk_delay_ms=args.chunk_delay_ms,
            models=tuple(m.strip() for m in args.models.split(",") if m.strip()),
            api_key=args.api_key,
            seed=args.seed,
        )
    except ValueError as exc:
        parser.error(str(exc))


def main(argv: Sequence[str] | None = None) -> None:
    settings = parse_args(argv)
    try:
        # uvloop trims per-request overhead, keeping the benchmark's direct baseline honest.
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:
        loop = None
    web.run_app(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        access_log=None,
        print=lambda msg: print(msg, flush=True),
        loop=loop,
    )


if __name__ == "__main__":
    # Run the module under its package name, not as this __main__ copy: fake_endpoints
    # imports it by name, and both must share one SETTINGS_KEY.
    from llm_gateway.fake_upstream import main as package_main

    package_main()
