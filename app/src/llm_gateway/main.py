"""Application factory: ``gunicorn ... 'llm_gateway.main:create_app()'`` (one per worker)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response

from llm_gateway import __version__, api, metrics, proxy
from llm_gateway.config import GatewayConfig, load_config
from llm_gateway.db import connection_facts, driver_reason, make_engine
from llm_gateway.errors import error_response
from llm_gateway.events import emit_event
from llm_gateway.gateway import Gateway
from llm_gateway.serving import serving_settings
from llm_gateway.settings import NO_DATABASE, EnvSettings
from llm_gateway.spool import Spool
from llm_gateway.writer import ExchangeWriter

log = logging.getLogger("llm_gateway")


async def _announce_database(gateway: Gateway, retry_s: float) -> None:
    """Log ``db_connected`` once the database answers; until then ``db_unavailable`` once.

    The service starts without a database (chat keeps working, exchanges spool), so this
    keeps trying in the background instead of blocking startup.
    """
    if gateway.engine is None:
        emit_event("db_unavailable", reason=NO_DATABASE)
        return
    reported = False
    while True:
        try:
            facts = await asyncio.to_thread(
                connection_facts, gateway.engine, gateway.config.database
            )
        except Exception as exc:  # any failure means "not yet"; report it once
            gateway.writer.db_ok = False
            if not reported:
                emit_event(
                    "db_unavailable",
                    error=exc.__class__.__name__,
                    reason=driver_reason(exc, gateway.engine.url.password),
                    host=gateway.engine.url.host,
                    retry_s=retry_s,
                )
                reported = True
            await asyncio.sleep(retry_s)
            continue
        facts.pop("event")
        emit_event("db_connected", **facts)
        return


def create_app(
    config: GatewayConfig | None = None, env: EnvSettings | None = None
) -> ForwardFastPath:
    # Config errors surface here, at worker boot, naming the entry and the reason.
    env = env or EnvSettings()
    config = config or load_config(env)
    database_url = env.sqlalchemy_url()
    if config.ignored_keys:
        emit_event("config_ignored", keys=list(config.ignored_keys))

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = make_engine(database_url, config.database) if database_url is not None else None
        spool = Spool(env.spool_dir)
        spool.open()
        writer = ExchangeWriter(engine, spool, config.writer, config.database)
        writer.start()
        # One pooled client session per worker; aiohttp rather than httpx because its
        # client costs ~3-4x less CPU per request here (app/README.md, "How logging stays off").
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300),
            auto_decompress=True,  # see proxy._upstream_headers
        )
        gateway = Gateway(config=config, writer=writer, session=session, engine=engine)
        app.state.gateway = gateway
        announcer = asyncio.create_task(_announce_database(gateway, config.writer.retry_interval_s))
        try:
            yield
        finally:
            announcer.cancel()
            await writer.stop(timeout=serving_settings().writer_stop_timeout_s)
            await session.close()
            if engine is not None:
                engine.dispose()
            writer.publish_state()
            emit_event("shutdown", **metrics.writer_summary())
            metrics.forget_this_process()

    app = FastAPI(
        title="llm-gateway",
        version=__version__,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        # Our own Prometheus metrics cover requests; FastAPI's OpenTelemetry hooks would
        # look up providers (and the environment) on every request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
        # "/v1/chat/completions/" is a 404 like any other unknown route, not a redirect
        # whose Location is built from the client's Host header.
        redirect_slashes=False,
    )
    # Reachable through FastAPI too (same handler), e.g. for ASGI test clients.
    for path in proxy.ENDPOINTS:
        app.router.add_route(path, proxy.forward_call, methods=["POST"])
    app.include_router(api.router)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    return ForwardFastPath(app)


class ForwardFastPath:
    """Pure ASGI front: POST to a forwarded endpoint goes straight to its handler, past
    FastAPI's middleware stack and router (tens of microseconds per request on this
    machine); everything else, lifespan included, is the FastAPI app."""

    def __init__(self, app: FastAPI):
        self.app = app

    def __getattr__(self, name: str):
        return getattr(self.app, name)  # app.state, app.router, ... as on FastAPI

    async def __call__(self, scope, receive, send) -> None:
        forwarded = scope["type"] == "http" and scope["path"] in proxy.ENDPOINTS
        if not forwarded or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        scope["app"] = self.app
        try:
            response = await proxy.forward_call(Request(scope, receive))
        except Exception:
            # What ServerErrorMiddleware would do: log it and answer OpenAI-style.
            log.exception("unhandled error in %s", scope["path"])
            response = error_response(500, "internal error in the gateway", "internal_error")
        await response(scope, receive, send)


async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
    codes = {401: "invalid_api_key", 404: "not_found", 405: "method_not_allowed"}
    return error_response(exc.status_code, str(exc.detail), codes.get(exc.status_code))


async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
    problems = [
        f"{'.'.join(str(p) for p in err['loc'][1:]) or err['loc'][0]}: {err['msg']}"
        for err in exc.errors()
    ]
    first = exc.errors()[0]["loc"] if exc.errors() else ()
    param = str(first[-1]) if first else None
    return error_response(422, "; ".join(problems), "invalid_parameter", param)
