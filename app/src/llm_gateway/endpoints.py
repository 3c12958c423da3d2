"""The OpenAI endpoints the gateway forwards: where each goes upstream, what a request
must hold to be routed, and how a streamed answer is logged.

Every endpoint is routed by ``model`` to a deployment and logged the same way (one
requests row with its route, one responses row, tokens and cost).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from llm_gateway.stream_log import ResponsesStreamLog, StreamLog, TextCompletionStreamLog


def _messages(body: dict) -> tuple[str, str | None]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "'messages' is required and must be a non-empty array", "messages"
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            return f"messages[{index}] must be an object with a 'role'", f"messages[{index}]"
    return "", None


def _text_or_array(field: str) -> Callable[[dict], tuple[str, str | None]]:
    def check(body: dict) -> tuple[str, str | None]:
        value = body.get(field)
        if isinstance(value, str) or (isinstance(value, list) and value):
            return "", None
        return f"'{field}' is required and must be a string or a non-empty array", field

    return check


@dataclass(frozen=True)
class Endpoint:
    path: str  # what clients call
    upstream_path: str  # appended to the deployment's api_base
    check_body: Callable[[dict], tuple[str, str | None]]
    streams: bool
    # Chat and legacy completions accept stream_options.include_usage; the gateway sets
    # it so streamed rows have token counts. The Responses API always sends usage.
    stream_usage_option: bool
    new_stream_log: Callable[[], Any]

    def validate(self, body: Any) -> tuple[str, str | None]:
        """(message, param) for the first problem, or ("", None) when routable."""
        if not isinstance(body, dict):
            return "request body must be a JSON object", None
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return "'model' is required and must be a string", "model"
        if "stream" in body and not isinstance(body["stream"], bool):
            return "'stream' must be a boolean", "stream"
        return self.check_body(body)


CHAT = Endpoint("/v1/chat/completions", "/chat/completions", _messages, True, True, StreamLog)
ENDPOINTS = {
    endpoint.path: endpoint
    for endpoint in (
        CHAT,
        Endpoint("/v1/completions", "/completions", _text_or_array("prompt"), True, True,
                 TextCompletionStreamLog),
        Endpoint("/v1/embeddings", "/embeddings", _text_or_array("input"), False, False,
                 StreamLog),
        Endpoint("/v1/responses", "/responses", _text_or_array("input"), True, False,
                 ResponsesStreamLog),
    )
}  # fmt: skip
