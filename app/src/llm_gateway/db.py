"""Engines (the gateway's pool, a migration's single connection), the connection facts
logged at startup, and driver errors told without the password."""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import URL, Engine, NullPool, create_engine, text

from llm_gateway.config import DatabaseSettings

APPLICATION_NAME = "llm-gateway"
MIGRATE_APPLICATION_NAME = "llm-gateway-migrate"


def _json_dumps(value: Any) -> str:
    # orjson is several times faster than json for the JSONB columns the writer fills.
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


def _connect_args(url: URL, application_name: str, settings: DatabaseSettings) -> dict:
    connect_args: dict[str, Any] = {"connect_timeout": settings.connect_timeout}
    if "application_name" not in url.query:
        connect_args["application_name"] = application_name
    return connect_args


def make_engine(url: URL, settings: DatabaseSettings) -> Engine:
    """The gateway's pooled engine; TLS options (sslmode, sslrootcert) are in the URL."""
    return create_engine(
        url,
        pool_size=settings.pool_size,
        max_overflow=settings.max_overflow,
        pool_recycle=settings.pool_recycle,
        pool_pre_ping=settings.pool_pre_ping,
        pool_timeout=settings.pool_timeout,
        connect_args=_connect_args(url, APPLICATION_NAME, settings),
        json_serializer=_json_dumps,
        json_deserializer=orjson.loads,
    )


def migration_engine(url: URL) -> Engine:
    """One connection, no pool: a migration or its check runs once and exits."""
    connect_args = _connect_args(url, MIGRATE_APPLICATION_NAME, DatabaseSettings())
    return create_engine(url, poolclass=NullPool, connect_args=connect_args)


def driver_reason(exc: BaseException, password: str | None) -> str:
    """The driver's own first line (e.g. "password authentication failed for user ..."),
    which tells an operator what to fix; never the password, should a driver echo it."""
    lines = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    reason = lines[0][:300] if lines else ""
    return reason.replace(password, "********") if password else reason


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
