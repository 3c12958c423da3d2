"""A streamed chat answer, accumulated into what the same answer would have been unstreamed.

The log must hold the whole answer, not only its text: per choice the content, tool calls
(id, type, function name and the argument fragments joined in order, per tool-call
index), the legacy ``function_call``, ``refusal``, reasoning text where the provider
streams it (``reasoning_content``: DeepSeek, vLLM; ``reasoning``: OpenRouter, newer
vLLM), ``finish_reason``; and the usage. Malformed parts of
a chunk are relayed as they came (the proxy does not change what the client gets) but
add nothing here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# A model's reasoning, streamed beside the answer; the name depends on the provider.
_REASONING_FIELDS = ("reasoning_content", "reasoning")
# Text fields of a delta that are streamed as fragments and joined.
_TEXT_FIELDS = ("content", "refusal", *_REASONING_FIELDS)


def _is_index(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _upstream_error(event: dict) -> dict | None:
    """The error a provider reports inside a stream it already answered with 200: OpenAI
    sends ``data: {"error": {...}}`` (chat, completions), the Responses API an ``error``
    event with the fields at the top level, or ``response.failed`` with ``error``."""
    if isinstance(event.get("error"), dict):
        return event["error"]
    kind = event.get("type")
    if kind == "error":
        return {k: event.get(k) for k in ("message", "type", "param", "code")}
    if kind == "response.failed" and isinstance(event.get("response"), dict):
        error = event["response"].get("error")
        return error if isinstance(error, dict) else {"message": "response failed"}
    return None


@dataclass
class _ToolCall:
    id: str | None = None
    type: str | None = None
    name: str | None = None
    arguments: list[str] = field(default_factory=list)

    def feed(self, delta: dict) -> None:
        if isinstance(delta.get("id"), str):
            self.id = delta["id"]
        if isinstance(delta.get("type"), str):
            self.type = delta["type"]
        function = delta.get("function")
        if isinstance(function, dict):
            if isinstance(function.get("name"), str):
                self.name = function["name"]
            if isinstance(function.get("arguments"), str):
                self.arguments.append(function["arguments"])

    def message_part(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type or "function",
            "function": {"name": self.name, "arguments": "".join(self.arguments)},
        }


@dataclass
class _Choice:
    role: str = "assistant"
    texts: dict[str, list[str]] = field(default_factory=dict)
    tool_calls: dict[int, _ToolCall] = field(default_factory=dict)
    function_call: _ToolCall | None = None
    finish_reason: str | None = None

    def feed(self, delta: dict, finish_reason: Any) -> None:
        if isinstance(delta.get("role"), str):
            self.role = delta["role"]
        for name in _TEXT_FIELDS:
            if isinstance(delta.get(name), str):
                self.texts.setdefault(name, []).append(delta[name])
        tool_calls = delta.get("tool_calls")
        for call in tool_calls if isinstance(tool_calls, list) else ():
            if isinstance(call, dict) and _is_index(call.get("index")):
                self.tool_calls.setdefault(call["index"], _ToolCall()).feed(call)
        if isinstance(delta.get("function_call"), dict):
            self.function_call = self.function_call or _ToolCall()
            self.function_call.feed({"function": delta["function_call"]})
        if isinstance(finish_reason, str):
            self.finish_reason = finish_reason

    def _has_other_answer(self) -> bool:
        return bool(self.tool_calls or self.function_call or self.texts.get("refusal"))

    def message(self) -> dict[str, Any]:
        joined = {name: "".join(parts) for name, parts in self.texts.items()}
        message: dict[str, Any] = {
            "role": self.role,
            # As unstreamed: null content when the answer is only tool calls or a refusal.
            "content": joined.get("content", None if self._has_other_answer() else ""),
            "refusal": joined.get("refusal"),
        }
        for name in _REASONING_FIELDS:
            if name in joined:
                message[name] = joined[name]
        if self.tool_calls:
            message["tool_calls"] = [
                self.tool_calls[i].message_part() for i in sorted(self.tool_calls)
            ]
        if self.function_call is not None:
            message["function_call"] = self.function_call.message_part()["function"]
        return message


# What identifies a chat or completion answer, as its unstreamed form has it.
_NAMES = ("id", "created", "model")  # always in the log, null when not sent
_META_FIELDS = (*_NAMES, "system_fingerprint", "service_tier")


class _ChoicesStreamLog:
    """Streams of chunks with ``choices`` (chat and legacy completions); they end with
    [DONE], which the relay sees itself."""

    finished = False

    def __init__(self) -> None:
        self.meta: dict[str, Any] = {}
        self.usage: dict | None = None
        self.error: dict | None = None
        self.chunks = 0

    def feed(self, chunk: dict) -> None:
        self.chunks += 1
        if "error" in chunk:
            self.error = _upstream_error(chunk) or self.error
        if not self.meta.get("id"):
            # From the first chunk that names the answer: Azure opens with a
            # content-filter chunk whose id and model are empty.
            self.meta = {k: chunk.get(k) for k in _META_FIELDS if k in chunk or k in _NAMES}
        if isinstance(chunk.get("usage"), dict):
            self.usage = chunk["usage"]
        choices = chunk.get("choices")
        for choice in choices if isinstance(choices, list) else ():
            if isinstance(choice, dict) and _is_index(choice.get("index", 0)):
                self._feed_choice(choice.get("index", 0), choice)

    def _feed_choice(self, index: int, choice: dict) -> None:
        raise NotImplementedError

    @property
    def answered(self) -> bool:
        """Every choice has its finish_reason: the answer is whole even if the stream
        ends without [DONE] (some OpenAI-compatible servers leave it out)."""
        raise NotImplementedError

    def _body(self, kind: str, choices: list[dict]) -> dict[str, Any]:
        return {**self.meta, "object": kind, "stream": True, "chunks": self.chunks,
                "choices": choices, "usage": self.usage}  # fmt: skip


class StreamLog(_ChoicesStreamLog):
    """Chat completion streams."""

    def __init__(self) -> None:
        super().__init__()
        self.choices: dict[int, _Choice] = {}

    @property
    def answered(self) -> bool:
        return bool(self.choices) and all(c.finish_reason for c in self.choices.values())

    def _feed_choice(self, index: int, choice: dict) -> None:
        delta = choice.get("delta")
        self.choices.setdefault(index, _Choice()).feed(
            delta if isinstance(delta, dict) else {}, choice.get("finish_reason")
        )

    def body(self) -> dict[str, Any]:
        choices = self.choices or {0: _Choice()}
        return self._body(
            "chat.completion",
            [
                {
                    "index": i,
                    "message": choices[i].message(),
                    "finish_reason": choices[i].finish_reason,
                }
                for i in sorted(choices)
            ],
        )


class TextCompletionStreamLog(_ChoicesStreamLog):
    """Legacy ``/v1/completions`` streams: ``choices[].text`` fragments per index."""

    def __init__(self) -> None:
        super().__init__()
        self.texts: dict[int, list[str]] = {}
        self.finish: dict[int, str] = {}

    @property
    def answered(self) -> bool:
        return bool(self.finish) and set(self.texts) <= set(self.finish)

    def _feed_choice(self, index: int, choice: dict) -> None:
        if isinstance(choice.get("text"), str):
            self.texts.setdefault(index, []).append(choice["text"])
        if isinstance(choice.get("finish_reason"), str):
            self.finish[index] = choice["finish_reason"]

    def body(self) -> dict[str, Any]:
        indexes = sorted(set(self.texts) | set(self.finish)) or [0]
        return self._body(
            "text_completion",
            [
                {
                    "index": i,
                    "text": "".join(self.texts.get(i, [])),
                    "finish_reason": self.finish.get(i),
                }
                for i in indexes
            ],
        )


# Responses API events that end a stream and carry the whole response object.
_RESPONSE_TERMINAL_EVENTS = ("response.completed", "response.incomplete", "response.failed")


class ResponsesStreamLog:
    """Responses API (``/v1/responses``) streams: typed events, the last of which carries
    the whole response object; that object is what an unstreamed call returns, so it is
    what the log keeps. Until it arrives, the text deltas are kept instead."""

    def __init__(self) -> None:
        self.final: dict[str, Any] | None = None
        self.text: list[str] = []
        self.error: dict | None = None
        self.chunks = 0

    @property
    def finished(self) -> bool:
        return self.final is not None

    answered = finished  # the terminal event carries the whole response

    @property
    def usage(self) -> dict | None:
        usage = self.final.get("usage") if self.final else None
        return usage if isinstance(usage, dict) else None

    def feed(self, event: dict) -> None:
        self.chunks += 1
        kind = event.get("type")
        if kind == "response.output_text.delta" and isinstance(event.get("delta"), str):
            self.text.append(event["delta"])
        elif kind in _RESPONSE_TERMINAL_EVENTS and isinstance(event.get("response"), dict):
            self.final = event["response"]
        if kind in ("error", "response.failed"):
            self.error = _upstream_error(event)

    def body(self) -> dict[str, Any]:
        if self.final is not None:
            return {**self.final, "stream": True, "chunks": self.chunks}
        text = "".join(self.text)
        return {"object": "response", "status": "incomplete", "output_text": text,
                "stream": True, "chunks": self.chunks}  # fmt: skip
