"""Database schema: one row per request, one per response, linked by a cascading FK."""

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    DateTime,
    ForeignKey,
    Identity,
    Integer,
    MetaData,
    Numeric,
    SmallInteger,
    String,
    Text,
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


class RequestRecord(Base):
    __tablename__ = "requests"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    request_id: Mapped[str] = mapped_column(String(255), unique=True, nullable=False)
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
        DateTime(timezone=True), server_default=func.now(), index=True
    )


class ResponseRecord(Base):
    __tablename__ = "responses"

    id: Mapped[int] = mapped_column(BigInteger, Identity(always=False), primary_key=True)
    request_id_fk: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("requests.id", ondelete="CASCADE"), nullable=False, index=True
    )
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
