"""Engine construction and the connection facts logged at startup."""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.engine import make_url

from llm_gateway.config import DatabaseSettings

APPLICATION_NAME = "llm-gateway"


def normalize_url(url: str | None) -> str:
    """Accept libpq-style ``postgres://``/``postgresql://`` URLs; we always use psycopg2."""
    if not url:
        raise ValueError("DATABASE_URL is not set")
    for prefix in ("postgres://", "postgresql://"):
        if url.startswith(prefix):
            return "postgresql+psycopg2://" + url[len(prefix) :]
    return url


def _json_dumps(value: Any) -> str:
    # orjson is several times faster than json for the JSONB columns the writer fills.
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


def make_engine(url: str, settings: DatabaseSettings) -> Engine:
    """Pooled engine; TLS options (sslmode, sslrootcert, ...) pass through from the URL."""
    parsed = make_url(normalize_url(url))
    connect_args: dict[str, Any] = {"connect_timeout": settings.connect_timeout}
    if "application_name" not in parsed.query:
        connect_args["application_name"] = APPLICATION_NAME
    return create_engine(
        parsed,
        pool_size=settings.pool_size,
        max_overflow=settings.max_overflow,
        pool_recycle=settings.pool_recycle,
        pool_pre_ping=settings.pool_pre_ping,
        pool_timeout=settings.pool_timeout,
        connect_args=connect_args,
        json_serializer=_json_dumps,
        json_deserializer=orjson.loads,
    )


def connection_facts(engine: Engine, settings: DatabaseSettings) -> dict[str, Any]:
    """What an operator needs to trust the connection: version, TLS, pool, identity."""
    with engine.connect() as conn:
        row = conn.execute(
            text(
                "SELECT current_setting('server_version'), current_user, current_database(),"
                " current_setting('application_name'),"
                " (SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()),"
                " (SELECT version FROM pg_stat_ssl WHERE pid = pg_backend_pid())"
            )
        ).one()
    return {
        "event": "db_connected",
        "server_version": row[0],
        "ssl": bool(row[4]),
        "ssl_version": row[5],
        "pool_size": settings.pool_size,
        "max_overflow": settings.max_overflow,
        "db_user": row[1],
        "database": row[2],
        "host": engine.url.host or "unix-socket",
        "application_name": row[3],
    }
