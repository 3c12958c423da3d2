"""What the log can hold, decided in one place.

orjson (the writer's serializer) refuses values nested deeper than 254 containers, while
it parses up to 1,024. A record puts the request body one level below its own object, so
a body may nest at most 253 levels; the request path refuses deeper bodies at the door
(a logged 400) and the writer falls back to :func:`reduced_record` for anything else it
cannot serialize, so no single record can stop the log.
"""

from __future__ import annotations

import math
import time
from typing import Any

import orjson

# orjson.dumps raises "Recursion limit reached" beyond this many nested containers.
ORJSON_MAX_DEPTH = 254
# The record object is one level; the body (or response body) may use the rest.
MAX_LOGGABLE_DEPTH = ORJSON_MAX_DEPTH - 1

# Columns the reduced form keeps (cleaned to what their SQL types accept), and the
# value each takes when the original is unusable. Everything else is replaced.
_TEXT_FIELDS = {
    "request_id": None,
    "route": "",
    "method": "",
    "url": "",
    "model": None,
    "key_alias": None,
    "user": None,
    "deployment": None,
}
_INT_FIELDS = {
    "status_code": 0,
    "prompt_tokens": None,
    "completion_tokens": None,
    "tokens_used": None,
    "attempts": None,
}
_NUMBER_FIELDS = {"latency_ms": 0.0, "cost": None}
_MAX_REDUCED_TEXT = 255
# numeric(10, 2) and numeric(12, 6): larger values would be refused again.
_MAX_NUMBER = 1e6
_INT4_MAX = 2**31 - 1
# Seconds since the epoch that to_timestamp() accepts with room to spare (year ~5138).
_MAX_EPOCH_S = 1e11


class DepthCheck:
    """Whether a value nests more than ``limit`` containers deep (the top-level object or
    array counts as one; 1 <= limit < ORJSON_MAX_DEPTH).

    orjson stops at ORJSON_MAX_DEPTH levels; placed inside ORJSON_MAX_DEPTH - limit
    arrays, a value makes it stop exactly past ``limit``. So the check is one
    serialization at C speed: 3.6 ms for a 1 MiB body of 340,000 arrays, where walking it
    in Python took 324 ms (same loaded machine), and a request must not buy that much
    event-loop time. The padding is built once; the event loop is one thread and the
    check never awaits, so one instance is never used twice at the same time.
    """

    def __init__(self, limit: int):
        self._slot: list[Any] = []
        self._padded: list[Any] = self._slot
        for _ in range(ORJSON_MAX_DEPTH - limit - 1):
            self._padded = [self._padded]

    def exceeded(self, value: Any) -> bool:
        self._slot.append(value)
        try:
            orjson.dumps(self._padded)
        except orjson.JSONEncodeError:
            return True
        finally:
            self._slot.clear()
        return False


def _text(value: Any, default: str | None) -> str | None:
    if not isinstance(value, str):
        return default
    return value.replace("\x00", "\ufffd")[:_MAX_REDUCED_TEXT]


def _int(value: Any, default: int | None) -> int | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _INT4_MAX
    return value if ok else default


def _number(value: Any, default: float | None) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return default
    return value if math.isfinite(value) and 0 <= value < _MAX_NUMBER else default


def reduced_record(record: Any, reason: str) -> dict[str, Any]:
    """A form of ``record`` that can always be serialized and inserted: the scalar columns
    (cleaned), with headers, URL and bodies replaced by a marker naming the reason. The
    exchange keeps its row (status, tokens, cost, who called) even when its payload
    cannot be stored; the original goes to the dead-letter file."""
    source = record if isinstance(record, dict) else {}
    reduced: dict[str, Any] = {}
    for name, default in _TEXT_FIELDS.items():
        reduced[name] = _text(source.get(name), default)
    for name, default in _INT_FIELDS.items():
        reduced[name] = _int(source.get(name), default)
    for name, default in _NUMBER_FIELDS.items():
        reduced[name] = _number(source.get(name), default)
    started = source.get("started_at")
    finite = isinstance(started, int | float) and 0 < started < _MAX_EPOCH_S
    reduced["started_at"] = started if finite else time.time()
    reduced["method"] = reduced["method"][:16]
    marker = {"_unloggable": reason[:_MAX_REDUCED_TEXT]}
    reduced.update(headers=marker, body=marker, response_body=marker)
    return reduced
