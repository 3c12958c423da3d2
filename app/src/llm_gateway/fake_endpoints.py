"""The fake upstream's other OpenAI endpoints: legacy completions, embeddings and the
Responses API, shaped as OpenAI answers them (plain and streamed), with the same
admission, delays, injected errors and compression as chat (fake_upstream.py)."""

from __future__ import annotations

import base64
import hashlib
import struct
import time
import uuid

from aiohttp import web

from llm_gateway.fake_upstream import (
    DELTAS_BEFORE_ERROR,
    LONG_MODEL_PREFIX,
    MAX_LONG_CHARS,
    STREAM_CUT_MODEL,
    STREAM_ERROR,
    STREAM_ERROR_MODEL,
    EventStream,
    admit,
    count_tokens,
    encoded_json,
    error_response,
    message_text,
    wants_stream_usage,
)

EMBEDDING_DIMENSIONS = 8
WORDS_PER_DELTA = 3
LONG_DELTA = 65536


def _texts(value: object) -> list[str]:
    """Inputs/prompts as texts: a string, a list of strings, or (Responses API) a list
    of messages."""
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [item if isinstance(item, str) else message_text(item) for item in value]
    return []


def _reply_pieces(text: str) -> list[str]:
    words = f"Fake reply: {text}".split()
    return [
        (" " if start else "") + " ".join(words[start : start + WORDS_PER_DELTA])
        for start in range(0, len(words), WORDS_PER_DELTA)
    ]


def _long_reply_pieces(length_text: str) -> list[str]:
    """A reply of the asked length (fake-long-<chars>), in deltas of LONG_DELTA chars."""
    length = min(int(length_text), MAX_LONG_CHARS) if length_text.isdigit() else 0
    text = ("Fake reply, long. " * (length // 18 + 1))[:length]
    return [text[start : start + LONG_DELTA] for start in range(0, length, LONG_DELTA)]


def _base64_floats(vector: list[float]) -> str:
    """OpenAI's base64 embedding: the vector as little-endian float32, base64-encoded."""
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode()


def _usage(prompt: int, completion: int, responses_api: bool = False) -> dict:
    if responses_api:
        return {"input_tokens": prompt, "output_tokens": completion,
                "total_tokens": prompt + completion}  # fmt: skip
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}  # fmt: skip


async def embeddings(request: web.Request) -> web.StreamResponse:
    payload, refused = await admit(request, "input")
    if refused is not None:
        return refused
    texts = _texts(payload["input"])
    if not texts:
        return error_response(400, "'input' must be a string or an array", param="input")
    # The openai SDK asks for base64 unless told otherwise, and decodes it itself.
    base64_wanted = payload.get("encoding_format") == "base64"
    data = []
    for index, text in enumerate(texts):
        digest = hashlib.sha256(text.encode()).digest()
        vector = [round(byte / 255 - 0.5, 6) for byte in digest[:EMBEDDING_DIMENSIONS]]
        embedding = _base64_floats(vector) if base64_wanted else vector
        data.append({"object": "embedding", "index": index, "embedding": embedding})
    tokens = sum(count_tokens(text) for text in texts)
    body = {"object": "list", "data": data, "model": payload["model"],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}  # fmt: skip
    return encoded_json(request, body, payload["model"])


async def completions(request: web.Request) -> web.StreamResponse:
    payload, refused = await admit(request, "prompt")
    if refused is not None:
        return refused
    model = payload["model"]
    prompts = _texts(payload["prompt"])
    pieces = _reply_pieces(prompts[0] if prompts else "")
    usage = _usage(sum(count_tokens(p) for p in prompts), count_tokens("".join(pieces)))
    base = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion",
            "created": int(time.time()), "model": model}  # fmt: skip
    if payload.get("stream") is True:
        stream = EventStream(request, model)
        for sent, piece in enumerate(pieces):
            if model == STREAM_ERROR_MODEL and sent == DELTAS_BEFORE_ERROR:
                return await stream.fail()
            if model == STREAM_CUT_MODEL and sent == DELTAS_BEFORE_ERROR:
                return await stream.close()
            choice = {"text": piece, "index": 0, "logprobs": None, "finish_reason": None}
            await stream.send({**base, "choices": [choice]})
        last = {"text": "", "index": 0, "logprobs": None, "finish_reason": "stop"}
        await stream.send({**base, "choices": [last]})
        if wants_stream_usage(payload):
            await stream.send({**base, "choices": [], "usage": usage})
        await stream.send(b"[DONE]")
        return await stream.close()
    choice = {"text": "".join(pieces), "index": 0, "logprobs": None, "finish_reason": "stop"}
    return encoded_json(request, {**base, "choices": [choice], "usage": usage}, model)


def _response_object(model: str, response_id: str, text: str | None, usage: dict | None):
    """A Responses API object; ``text`` None while in progress (no output yet)."""
    output = []
    if text is not None:
        output.append(_message_item(response_id, text, "completed"))
    return {
        "id": response_id,
        "object": "response",
        "created_at": int(time.time()),
        "status": "completed" if text is not None else "in_progress",
        "model": model,
        "output": output,
        "usage": usage,
        "error": None,
        "incomplete_details": None,
    }


def _message_item(response_id: str, text: str, status: str) -> dict:
    content = [{"type": "output_text", "text": text, "annotations": []}] if text else []
    return {"type": "message", "id": f"msg_{response_id[5:]}", "status": status,
            "role": "assistant", "content": content}  # fmt: skip


async def responses(request: web.Request) -> web.StreamResponse:
    payload, refused = await admit(request, "input")
    if refused is not None:
        return refused
    model = payload["model"]
    texts = _texts(payload["input"])
    pieces = _reply_pieces(texts[-1] if texts else "")
    if model.startswith(LONG_MODEL_PREFIX):
        pieces = _long_reply_pieces(model.removeprefix(LONG_MODEL_PREFIX))
    text = "".join(pieces)
    usage = _usage(sum(count_tokens(t) for t in texts), count_tokens(text), responses_api=True)
    response_id = f"resp_{uuid.uuid4().hex}"
    final = _response_object(model, response_id, text, usage)
    if payload.get("stream") is not True:
        return encoded_json(request, final, model)
    stream = EventStream(request, model)
    sequence = iter(range(1_000_000))

    async def send(kind: str, **fields) -> None:
        await stream.send({"type": kind, "sequence_number": next(sequence), **fields}, kind)

    await send("response.created", response=_response_object(model, response_id, None, None))
    item = _message_item(response_id, "", "in_progress")
    await send("response.output_item.added", output_index=0, item=item)
    part = {"type": "output_text", "text": "", "annotations": []}
    await send("response.content_part.added", item_id=item["id"], output_index=0,
               content_index=0, part=part)  # fmt: skip
    for sent, piece in enumerate(pieces):
        if model == STREAM_ERROR_MODEL and sent == DELTAS_BEFORE_ERROR:
            # The Responses API's error event: its fields at the top level.
            fields = {k: v for k, v in STREAM_ERROR.items() if k != "type"}
            await send("error", **{**fields, "code": STREAM_ERROR["type"]})
            return await stream.close()
        if model == STREAM_CUT_MODEL and sent == DELTAS_BEFORE_ERROR:
            return await stream.close()
        await send("response.output_text.delta", item_id=item["id"], output_index=0,
                   content_index=0, delta=piece)  # fmt: skip
    await send("response.output_text.done", item_id=item["id"], output_index=0,
               content_index=0, text=text)  # fmt: skip
    await send("response.content_part.done", item_id=item["id"], output_index=0,
               content_index=0, part={**part, "text": text})  # fmt: skip
    await send("response.output_item.done", output_index=0, item=final["output"][0])
    await send("response.completed", response=final)
    return await stream.close()
