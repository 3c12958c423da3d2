"""Alembic environment: the URL comes from DATABASE_URL via llm_gateway.db, never a file."""

from alembic import context
from sqlalchemy import create_engine, pool

from llm_gateway.db import normalize_url
from llm_gateway.models import Base

config = context.config


def run_migrations_online() -> None:
    engine = create_engine(
        normalize_url(config.get_main_option("sqlalchemy.url")),
        poolclass=pool.NullPool,
        connect_args={"application_name": "llm-gateway-migrate"},
    )
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=Base.metadata)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


run_migrations_online()
