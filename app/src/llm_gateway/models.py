"""Database schema: one row per request, one per response, linked by a cascading FK.

Both tables are range-partitioned by time (UTC; by day, or by week when the database says
so) since revision 0003: ``requests`` by ``created_at``, ``responses`` by
``request_created_at`` (its request's ``created_at``), so an exchange's rows share a
partition and a day (or week) goes by dropping its partitions. PostgreSQL wants the
partition key in every unique key, hence the composite keys. The children
(``requests_p20261130``, ..., ``requests_default``) are not modelled: the migration and
pg_partman create them (``is_partition``).
"""

import re
from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    DateTime,
    ForeignKeyConstraint,
    Identity,
    Index,
    Integer,
    MetaData,
    Numeric,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# Deterministic constraint/index names, so Alembic migrations stay reproducible.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


# A daily or weekly child as pg_partman 5 names it, or the default partition.
_PARTITION = re.compile(r"^(requests|responses)_(p\d{8}|default)$")


def is_partition(table_name: str | None) -> bool:
    """A partition of requests or responses (schema comparisons skip them)."""
    return bool(table_name and _PARTITION.match(table_name))


class RequestRecord(Base):
    __tablename__ = "requests"
    __table_args__ = (
        # The writer's ON CONFLICT target: a replayed exchange carries its created_at.
        UniqueConstraint("request_id", "created_at", name="uq_requests_request_id"),
        {"postgresql_partition_by": "RANGE (created_at)"},
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    request_id: Mapped[str] = mapped_column(String(255), nullable=False)
    route: Mapped[str] = mapped_column(String(255))
    method: Mapped[str] = mapped_column(String(16))
    url: Mapped[str] = mapped_column(Text)
    headers: Mapped[dict[str, Any]] = mapped_column(JSONB)
    body: Mapped[Any | None] = mapped_column(JSONB)
    model: Mapped[str | None] = mapped_column(String(255), index=True)
    status_code: Mapped[int] = mapped_column(Integer)
    key_alias: Mapped[str | None] = mapped_column(String(255))
    user: Mapped[str | None] = mapped_column("user", String(255))
    created_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), primary_key=True, index=True
    )


class ResponseRecord(Base):
    __tablename__ = "responses"
    __table_args__ = (
        ForeignKeyConstraint(
            ["request_id_fk", "request_created_at"],
            ["requests.id", "requests.created_at"],
            name="fk_responses_request_id_fk_requests",
            ondelete="CASCADE",
        ),
        # The FK's lookup index (the cascade deletes by both columns).
        Index("ix_responses_request_id_fk", "request_id_fk", "request_created_at"),
        {"postgresql_partition_by": "RANGE (request_created_at)"},
    )

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    request_id_fk: Mapped[int] = mapped_column(BigInteger, nullable=False)
    # The request's created_at: the partition key, so both rows of an exchange share a day.
    request_created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    response_body: Mapped[Any | None] = mapped_column(JSONB)
    status_code: Mapped[int] = mapped_column(Integer)
    latency_ms: Mapped[Decimal] = mapped_column(Numeric(10, 2))
    prompt_tokens: Mapped[int | None] = mapped_column(Integer)
    completion_tokens: Mapped[int | None] = mapped_column(Integer)
    tokens_used: Mapped[int | None] = mapped_column(Integer)
    cost: Mapped[Decimal | None] = mapped_column(Numeric(12, 6))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    # The deployment (model_info.id, else provider/model@host) that gave this answer, and
    # the upstream calls it took (retries and fallbacks included).
    deployment: Mapped[str | None] = mapped_column(String(255))
    attempts: Mapped[int | None] = mapped_column(SmallInteger)
