"""HTTP serving limits: what a client may hold open, for how long, and how big a head.

uvicorn (httptools) has no limit on the size or number of request headers, and no
timeout for a request that is never finished: an idle socket or a head sent one byte at
a time stays open for good, and a huge header costs quadratic parsing time. This module
adds those limits to uvicorn's own httptools protocol, at its documented extension point
(``Config(http=<protocol class>)``), and a gunicorn worker class that serves with it:

- ``header_timeout_s``: the request head (line and headers) must arrive within this,
  counted from the connection's start or the first byte of the next request (408);
- ``body_timeout_s``: the body must arrive within this after the head (408, closed);
- ``max_head_bytes`` / ``max_header_bytes`` / ``max_header_count``: head size, one
  header line's size, number of headers (431 with an OpenAI-style JSON body);
- ``max_connections``: per worker; beyond it uvicorn answers 503 (``limit_concurrency``).
  Keep it below the unit's ``LimitNOFILE``: each client connection may also hold an
  upstream connection.
- ``keepalive_s``: how long an idle kept-alive connection stays open.
- ``send_timeout_s``: how long a client may leave the answer unread once the socket's
  buffers are full (a stream reader that stalls): then the connection is dropped, which
  ends the relay (and its upstream call) and logs the exchange as a 499.
- ``shutdown_drain_s``: of gunicorn's ``--graceful-timeout``, the seconds kept for the
  application's own shutdown (the writer drains its queue, or spools it). Connections
  still open when the rest has passed (a long stream, a client that stopped reading) are
  cut, their exchanges logged, instead of gunicorn killing the worker mid-shutdown.
"""

from __future__ import annotations

import asyncio
from functools import lru_cache
from typing import Any

import orjson
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn_worker import UvicornWorker

from llm_gateway.errors import error_body

# At a stop, how long a request whose body is still arriving may take to finish it.
SHUTDOWN_BODY_GRACE_S = 1.0


class ServingSettings(BaseSettings):
    """Environment ``GATEWAY_HTTP_<NAME>``; bounds reject nonsense at startup."""

    model_config = SettingsConfigDict(env_prefix="GATEWAY_HTTP_", extra="ignore")

    header_timeout_s: float = Field(default=10.0, gt=0, le=600)
    body_timeout_s: float = Field(default=30.0, gt=0, le=3600)
    keepalive_s: int = Field(default=5, ge=1, le=3600)
    send_timeout_s: float = Field(default=60.0, gt=0, le=3600)
    max_head_bytes: int = Field(default=65536, ge=1024, le=1 << 20)
    max_header_bytes: int = Field(default=16384, ge=256, le=1 << 20)
    max_header_count: int = Field(default=100, ge=8, le=1000)
    max_connections: int = Field(default=4096, ge=16, le=1 << 20)
    shutdown_drain_s: float = Field(default=10.0, ge=2, le=600)

    @property
    def writer_stop_timeout_s(self) -> float:
        """How long the lifespan shutdown waits for the writer before spooling the rest:
        inside the reserve, with room for that spooling."""
        return self.shutdown_drain_s * 0.8


@lru_cache(maxsize=1)
def serving_settings() -> ServingSettings:
    return ServingSettings()


_TOO_LARGE = "request_header_fields_too_large"  # the error code of a 431


class _HeadRejected(Exception):
    """Raised from a parser callback to stop parsing; the protocol then answers."""


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with timeouts and head limits."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = serving_settings()
        self._timer: asyncio.TimerHandle | None = None
        self._send_timer: asyncio.TimerHandle | None = None  # armed while writing is paused
        self._reading_head = True  # no head complete yet for the current request
        self._in_head = False  # a request has begun and its head is incomplete
        self._head_bytes = 0  # received while the head is incomplete
        self._head_size = 0  # parsed: request target and headers
        self._header_count = 0
        self._rejection: tuple[int, str, str] | None = None

    # ---- timers ---------------------------------------------------------------------
    def _arm(self, seconds: float, callback) -> None:
        self._disarm()
        self._timer = self.loop.call_later(seconds, callback)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _head_timed_out(self) -> None:
        self._timer = None
        limit = self.limits.header_timeout_s
        self._answer_and_close(408, f"request head not received within {limit:g} s", "timeout")

    def _body_timed_out(self) -> None:
        self._timer = None
        if self.cycle is not None and not self.cycle.response_started:
            limit = self.limits.body_timeout_s
            message = f"request body not received within {limit:g} s"
            self._answer_and_close(408, message, "timeout")
        elif not self.transport.is_closing():
            self.transport.close()

    # ---- connection and parser callbacks --------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # A connection that never sends a byte is timed out like a slow head.
        self._arm(self.limits.header_timeout_s, self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._disarm_send()
        super().connection_lost(exc)

    def shutdown(self) -> None:
        """The server is stopping. A request whose body is still on its way would hold the
        stop until the body timeout (a slow client, or a slowloris, delaying every restart
        by that long). It gets SHUTDOWN_BODY_GRACE_S for the rest of its body: clients
        often write the head and the body separately, and a stop (a HUP's old workers
        under load) must not refuse a request that was just one write short."""
        cycle = self.cycle
        if cycle is not None and cycle.more_body and not cycle.response_started:
            self.loop.call_later(SHUTDOWN_BODY_GRACE_S, self._shutdown_after_grace, cycle)
            return
        super().shutdown()

    def _shutdown_after_grace(self, cycle: Any) -> None:
        """Still no whole body: answered 503, as nothing of it reached the upstream.
        Otherwise the request is served and its connection closes after the answer."""
        if self.cycle is cycle and cycle.more_body and not cycle.response_started:
            message = "the gateway is restarting; send the request again"
            self._answer_and_close(503, message, "gateway_shutdown")
            return
        super().shutdown()

    # ---- a client that stops reading -----------------------------------------------
    def pause_writing(self) -> None:
        """The transport's buffer is full: the client reads slower than we answer. Without
        a limit a client that never reads again holds its request, its upstream stream and
        the exchange's log row for good (and a graceful stop until gunicorn kills)."""
        super().pause_writing()
        self._disarm_send()
        self._send_timer = self.loop.call_later(self.limits.send_timeout_s, self._send_timed_out)

    def resume_writing(self) -> None:
        self._disarm_send()
        super().resume_writing()

    def _disarm_send(self) -> None:
        if self._send_timer is not None:
            self._send_timer.cancel()
            self._send_timer = None

    def _send_timed_out(self) -> None:
        self._send_timer = None
        # abort, not close: close would wait to flush a buffer nobody reads.
        self.transport.abort()

    def data_received(self, data: bytes) -> None:
        if self._reading_head:
            self._head_bytes += len(data)
        super().data_received(data)
        if self.transport.is_closing():
            return
        # Checked after parsing, so a head and body arriving in one read are not mistaken
        # for a big head; a read is at most 256 KiB, so the parser's work stays bounded.
        if self._in_head and self._head_bytes > self.limits.max_head_bytes:
            self._answer_and_close(*self._head_too_large())
        # Timers only for what is still incomplete after this read: a request that came
        # whole in one read (the usual case) costs no timer at all.
        elif self._timer is not None:
            return
        elif self._in_head:
            self._arm(self.limits.header_timeout_s, self._head_timed_out)
        elif not self._reading_head:  # head in, body still coming
            self._arm(self.limits.body_timeout_s, self._body_timed_out)

    def on_message_begin(self) -> None:
        self._in_head = True
        super().on_message_begin()

    def on_url(self, url: bytes) -> None:
        self._head_size += len(url)
        super().on_url(url)

    def _over_capacity(self) -> bool:
        """uvicorn's limit_concurrency test, made before uvicorn makes it."""
        limit = self.limit_concurrency
        return limit is not None and (len(self.connections) >= limit or len(self.tasks) >= limit)

    def _head_too_large(self) -> tuple[int, str, str]:
        limit = self.limits.max_head_bytes
        return 431, f"request line and headers exceed {limit} bytes", _TOO_LARGE

    def _refuse_large_head(self) -> None:
        """A head read whole in one go is measured here (data_received cannot tell)."""
        if self._head_size > self.limits.max_head_bytes:
            self._rejection = self._head_too_large()
            raise _HeadRejected

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        self._head_size += len(name) + len(value) + 4  # ": " and CRLF
        self._refuse_large_head()
        if self._header_count > self.limits.max_header_count:
            limit = self.limits.max_header_count
            self._rejection = (431, f"more than {limit} headers", "too_many_headers")
            raise _HeadRejected
        if len(name) + len(value) > self.limits.max_header_bytes:
            limit = self.limits.max_header_bytes
            self._rejection = (431, f"a header exceeds {limit} bytes", _TOO_LARGE)
            raise _HeadRejected
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._refuse_large_head()
        if self._over_capacity():
            # uvicorn's own answer here is a text/plain 503; ours is JSON like the rest.
            limit = self.limit_concurrency
            message = f"the gateway serves {limit} connections per worker; try again later"
            self._rejection = (503, message, "too_many_connections")
            raise _HeadRejected
        self._disarm()
        self._reading_head = self._in_head = False
        self._head_bytes = self._head_size = self._header_count = 0
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        self._reading_head = True
        super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to anything the parser refuses: ours is JSON, like every other
        error of the gateway, and says which limit was hit."""
        status, message, code = self._rejection or (400, msg, "invalid_http_request")
        self._answer_and_close(status, message, code)

    def _answer_and_close(self, status: int, message: str, code: str) -> None:
        self._disarm()
        if self.transport.is_closing():
            return
        body = orjson.dumps(error_body(status, message, code))
        self.transport.write(
            b"".join(
                [
                    STATUS_LINE[status],
                    b"content-type: application/json\r\n",
                    b"content-length: %d\r\n" % len(body),
                    b"connection: close\r\n\r\n",
                    body,
                ]
            )
        )
        self.transport.close()


def uvicorn_options() -> dict[str, Any]:
    """uvicorn Config keywords for the limits above (CLI server and gunicorn worker)."""
    limits = serving_settings()
    return {
        "http": BoundedHttpToolsProtocol,
        "limit_concurrency": limits.max_connections,
        "timeout_keep_alive": limits.keepalive_s,
    }


class GatewayWorker(UvicornWorker):
    """``gunicorn --worker-class llm_gateway.serving.GatewayWorker``: uvicorn's worker
    serving with the bounded protocol and the limits from the environment."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for name, value in uvicorn_options().items():
            setattr(self.config, name, value)
        # uvicorn waits for open connections without limit; gunicorn kills the worker
        # graceful_timeout after its SIGTERM (and a worker whose heartbeat stopped, as it
        # does while shutting down, after timeout: so it goes for a HUP's old workers). A
        # stream still running then would take the lifespan shutdown (the writer's drain)
        # and its own log row down with it, so uvicorn cuts connections early enough for
        # the shutdown to finish.
        allowed = min(self.cfg.graceful_timeout, self.cfg.timeout or self.cfg.graceful_timeout)
        reserve = serving_settings().shutdown_drain_s
        self.config.timeout_graceful_shutdown = max(1, int(allowed - reserve))
