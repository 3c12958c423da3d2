"""Operational endpoints: models list, health, DB stats, stored exchanges, metrics."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import func, select, text
from sqlalchemy.exc import SQLAlchemyError
from starlette.responses import JSONResponse, Response

from llm_gateway import __version__, metrics
from llm_gateway.gateway import Gateway
from llm_gateway.models import RequestRecord, ResponseRecord
from llm_gateway.settings import NO_DATABASE

router = APIRouter()
HEALTH_TIMEOUT_S = 5.0


def _gateway(request: Request) -> Gateway:
    return request.app.state.gateway


def require_key(request: Request) -> str:
    gateway = _gateway(request)
    alias = gateway.keys.alias(request.headers.get("authorization"))
    if alias is None:
        raise HTTPException(401, "missing or invalid API key")
    return alias


def _optional_key(flag: str):
    def check(request: Request) -> None:
        if getattr(_gateway(request).config.service, flag):
            require_key(request)

    return check


def _engine(gateway: Gateway):
    if gateway.engine is None:
        raise HTTPException(503, NO_DATABASE)
    return gateway.engine


def _pool_state(gateway: Gateway) -> dict[str, Any]:
    if gateway.engine is None:
        return {}
    pool = gateway.engine.pool
    return {
        "size": pool.size(),
        "checked_out": pool.checkedout(),
        "overflow": pool.overflow(),
        "checked_in": pool.checkedin(),
        "max_overflow": gateway.config.database.max_overflow,
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    return value


@router.get("/v1/models", dependencies=[Depends(require_key)])
async def list_models(request: Request) -> dict:
    return {
        "object": "list",
        "data": [
            {"id": name, "object": "model", "created": 0, "owned_by": "llm-gateway"}
            for name in _gateway(request).router.model_names
        ],
    }


@router.api_route("/api/health/liveness", methods=["GET", "HEAD"])
async def liveness() -> JSONResponse:
    """Liveness, for load balancers: 200 whenever this process's event loop serves. The
    database is not asked: a gateway whose database is down still answers and logs to
    its spool, so a balancer must keep sending it traffic (readiness is /api/health)."""
    return JSONResponse({"status": "alive"})


@router.api_route(
    "/api/health",
    methods=["GET", "HEAD"],
    dependencies=[Depends(_optional_key("health_requires_auth"))],
)
async def health(request: Request) -> JSONResponse:
    """Readiness: runs a real query through the pool (a health check that skips the DB
    proves nothing) and checks that this worker's writer runs and drains. 503 names
    every problem; exchanges quarantined or lost since start (by any worker, in
    multiprocess mode) make it "degraded"."""
    gateway = _gateway(request)
    database: dict[str, Any] = {"ok": False}
    if gateway.engine is None:
        database["error"] = NO_DATABASE
    else:

        def ping() -> None:
            with gateway.engine.connect() as conn:
                conn.execute(text("SELECT 1"))

        try:
            await asyncio.wait_for(run_in_threadpool(ping), HEALTH_TIMEOUT_S)
            database["ok"] = True
        except (SQLAlchemyError, TimeoutError) as exc:
            database["error"] = exc.__class__.__name__
    writer = gateway.writer
    counts = await run_in_threadpool(metrics.writer_summary)  # reads files in multiprocess mode
    problems = []
    if not database["ok"]:
        problems.append("database unreachable")
    if not writer.running:
        problems.append("writer not running")
    if writer.stalled:
        problems.append("writer not draining")
    # Past events stay visible (the counters), but do not take a serving gateway out.
    notices = [
        f"{counts[name]} exchanges {name} since start"
        for name in ("quarantined", "lost")
        if counts[name]
    ]
    body = {
        "status": "unhealthy" if problems else ("degraded" if notices else "healthy"),
        "problems": problems + notices,
        "database": database,
        "pool": _pool_state(gateway),
        "writer": {
            "running": writer.running,
            "stalled": writer.stalled,
            "queue_depth": writer.queue.qsize(),
            "spool_backlog": writer.spool.backlog,
            "db_ok": writer.db_ok,
            "quarantined": counts["quarantined"],
            "lost": counts["lost"],
            "restarts": counts["restarts"],
        },
        "log_mode": gateway.config.service.log_mode,
        # The release this worker runs (what it imported at start, not what is installed
        # now): after a deploy, the proof that the restart took effect.
        "version": __version__,
    }
    return JSONResponse(body, status_code=503 if problems else 200)


def _query(gateway: Gateway, run):
    try:
        with _engine(gateway).connect() as conn:
            return run(conn)
    except SQLAlchemyError as exc:
        raise HTTPException(503, f"database unavailable: {exc.__class__.__name__}") from exc


@router.get("/api/db-stats", dependencies=[Depends(require_key)])
def db_stats(request: Request) -> dict:
    gateway = _gateway(request)

    def counts(conn) -> dict[str, int]:
        # One statement, one snapshot: two separate counts could straddle a commit and show
        # a response without its request.
        requests = select(func.count()).select_from(RequestRecord).scalar_subquery()
        responses = select(func.count()).select_from(ResponseRecord).scalar_subquery()
        row = conn.execute(select(requests, responses)).one()
        return {"requests": row[0], "responses": row[1]}

    gateway.writer.publish_state()  # this worker's gauges as of now; others' within 1 s
    return {
        "rows": _query(gateway, counts),
        "pool": _pool_state(gateway),
        # Every worker's, in multiprocess mode: the figures /metrics shows.
        "writer": metrics.writer_summary(),
        "log_mode": gateway.config.service.log_mode,
    }


Limit = Annotated[int, Query(ge=1, le=1000)]


# Newest-first reads look at the last day first: the lower bound on the partition key
# prunes every older partition at plan time, so the query touches the current ones (and
# the premade, empty ones). Only when that day holds fewer rows than asked for does it read
# everything. Both give the same answer: every row outside the window is older.
RECENT_WINDOW = timedelta(days=1)


def _newest_requests(since: datetime | None, limit: int):
    table = RequestRecord.__table__
    query = select(table).order_by(table.c.created_at.desc(), table.c.id.desc()).limit(limit)
    return query if since is None else query.where(table.c.created_at >= since)


def _newest_responses(since: datetime | None, limit: int):
    """Responses of the newest requests, in the requests' order: the walk follows the
    requests' created_at index and finds each response by its FK index, in the same day."""
    requests, responses = RequestRecord.__table__, ResponseRecord.__table__
    query = (
        select(responses)
        .join(
            requests,
            (responses.c.request_id_fk == requests.c.id)
            & (responses.c.request_created_at == requests.c.created_at),
        )
        .order_by(requests.c.created_at.desc(), requests.c.id.desc())
        .limit(limit)
    )
    if since is not None:
        query = query.where(requests.c.created_at >= since, responses.c.request_created_at >= since)
    return query


def newest_first(conn, build, limit: int) -> list[dict]:
    """``build(since, limit)``'s rows: from the recent window if it holds enough."""
    since = datetime.now(UTC) - RECENT_WINDOW
    rows = conn.execute(build(since, limit)).mappings().all()
    if len(rows) < limit:
        rows = conn.execute(build(None, limit)).mappings().all()
    return [{key: _jsonable(value) for key, value in row.items()} for row in rows]


def _latest(request: Request, build, limit: int) -> dict:
    data = _query(_gateway(request), lambda conn: newest_first(conn, build, limit))
    return {"object": "list", "data": data, "count": len(data)}


@router.get("/api/requests", dependencies=[Depends(require_key)])
def latest_requests(request: Request, limit: Limit = 10) -> dict:
    return _latest(request, _newest_requests, limit)


@router.get("/api/responses", dependencies=[Depends(require_key)])
def latest_responses(request: Request, limit: Limit = 10) -> dict:
    return _latest(request, _newest_responses, limit)


@router.get("/metrics", dependencies=[Depends(_optional_key("metrics_requires_auth"))])
def prometheus_metrics() -> Response:
    payload, content_type = metrics.render()
    return Response(payload, media_type=content_type)
