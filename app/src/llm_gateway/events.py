"""Operator-facing event lines on stderr, one per event: ``<event> {json}``.

The journal keeps them and the deployment's evidence cuts figures from them, so they are
written directly (not through ``logging``, whose format an operator may change).
"""

import os
import sys

import orjson


def emit_event(event: str, **fields) -> None:
    line = event + " " + orjson.dumps({"event": event, "pid": os.getpid(), **fields}).decode()
    print(line, file=sys.stderr, flush=True)
