"""Alembic environment: ``llm-gateway migrate`` hands over an open connection; no URL
passes through Alembic's config file (or its %-interpolation)."""

from alembic import context

from llm_gateway.migrations.env_filter import OPTIONS
from llm_gateway.models import Base

config = context.config


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is None:
        raise RuntimeError("run migrations with `llm-gateway migrate`, which connects")
    context.configure(connection=connection, target_metadata=Base.metadata, **OPTIONS)
    with context.begin_transaction():
        context.run_migrations()


run_migrations_online()
