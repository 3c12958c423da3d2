"""The migration creates exactly the documented schema, and the models agree with it."""

import os
import subprocess
import sys

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine

from llm_gateway.migrations.env_filter import OPTIONS
from llm_gateway.models import Base

from conftest import query

EXPECTED_COLUMNS = {
    ("requests", "id"): ("bigint", "NO"),
    ("requests", "request_id"): ("character varying", "NO"),
    ("requests", "route"): ("character varying", "NO"),
    ("requests", "method"): ("character varying", "NO"),
    ("requests", "url"): ("text", "NO"),
    ("requests", "headers"): ("jsonb", "NO"),
    ("requests", "body"): ("jsonb", "YES"),
    ("requests", "model"): ("character varying", "YES"),
    ("requests", "status_code"): ("integer", "NO"),
    ("requests", "key_alias"): ("character varying", "YES"),
    ("requests", "user"): ("character varying", "YES"),
    ("requests", "created_at"): ("timestamp with time zone", "NO"),
    ("responses", "id"): ("bigint", "NO"),
    ("responses", "request_id_fk"): ("bigint", "NO"),
    ("responses", "request_created_at"): ("timestamp with time zone", "NO"),
    ("responses", "response_body"): ("jsonb", "YES"),
    ("responses", "status_code"): ("integer", "NO"),
    ("responses", "latency_ms"): ("numeric", "NO"),
    ("responses", "prompt_tokens"): ("integer", "YES"),
    ("responses", "completion_tokens"): ("integer", "YES"),
    ("responses", "tokens_used"): ("integer", "YES"),
    ("responses", "cost"): ("numeric", "YES"),
    ("responses", "created_at"): ("timestamp with time zone", "NO"),
    ("responses", "deployment"): ("character varying", "YES"),
    ("responses", "attempts"): ("smallint", "YES"),
}


def test_columns_and_types(pg_cluster, database):
    rows = query(
        pg_cluster,
        database,
        "SELECT table_name, column_name, data_type, is_nullable, character_maximum_length,"
        " numeric_precision, numeric_scale, is_identity FROM information_schema.columns"
        " WHERE table_schema = 'public' AND table_name IN ('requests', 'responses')",
    )
    found = {(r[0], r[1]): (r[2], r[3]) for r in rows}
    assert found == EXPECTED_COLUMNS
    details = {(r[0], r[1]): r[4:] for r in rows}
    assert details[("requests", "request_id")][0] == 255
    assert details[("responses", "latency_ms")][1:3] == (10, 2)
    assert details[("responses", "cost")][1:3] == (12, 6)
    assert details[("requests", "id")][3] == "YES"
    assert details[("responses", "id")][3] == "YES"


def test_foreign_key_cascades_in_the_database(pg_cluster, database):
    rows = query(
        pg_cluster,
        database,
        "SELECT conrelid::regclass::text, confrelid::regclass::text, confdeltype,"
        " pg_get_constraintdef(oid) FROM pg_constraint WHERE contype = 'f' AND conparentid = 0",
    )
    assert len(rows) == 1
    table, referenced, on_delete, definition = rows[0]
    assert (table, referenced, on_delete) == ("responses", "requests", "c")
    assert (
        "(request_id_fk, request_created_at) REFERENCES requests(id, created_at) ON DELETE CASCADE"
        in definition
    )


def test_both_tables_are_partitioned_by_day_with_a_default(pg_cluster, database):
    rows = query(
        pg_cluster,
        database,
        "SELECT c.relname, pg_get_partkeydef(c.oid),"
        " (SELECT count(*) FROM pg_inherits i JOIN pg_class k ON k.oid = i.inhrelid"
        "  WHERE i.inhparent = c.oid AND k.relname ~ ('^' || c.relname || '_p[0-9]{8}$')),"
        " (SELECT count(*) FROM pg_inherits i JOIN pg_class k ON k.oid = i.inhrelid"
        "  WHERE i.inhparent = c.oid AND k.relname = c.relname || '_default')"
        " FROM pg_class c WHERE c.relname IN ('requests', 'responses') ORDER BY 1",
    )
    # Today and the premade days ahead, and the default partition.
    assert rows == [
        ("requests", "RANGE (created_at)", 5, 1),
        ("responses", "RANGE (request_created_at)", 5, 1),
    ]


def test_deleting_a_request_deletes_its_response(pg_cluster, database):
    pg_cluster.execute(
        "WITH r AS (INSERT INTO requests (request_id, route, method, url, headers, status_code)"
        " VALUES ('req_x', '/v1/chat/completions', 'POST', 'http://t', '{}', 200)"
        " RETURNING id, created_at)"
        " INSERT INTO responses (request_id_fk, request_created_at, status_code, latency_ms)"
        " SELECT id, created_at, 200, 1.5 FROM r",
        database,
    )
    pg_cluster.execute("DELETE FROM requests WHERE request_id = 'req_x'", database)
    assert query(pg_cluster, database, "SELECT count(*) FROM responses") == [(0,)]


def test_indexes_and_unique_request_id(pg_cluster, database):
    rows = query(
        pg_cluster,
        database,
        "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public'"
        " AND tablename IN ('requests', 'responses')",
    )
    indexes = dict(rows)
    assert "(model)" in indexes["ix_requests_model"]
    assert "(created_at)" in indexes["ix_requests_created_at"]
    assert "(request_id_fk, request_created_at)" in indexes["ix_responses_request_id_fk"]
    assert indexes["uq_requests_request_id"].startswith("CREATE UNIQUE INDEX")
    assert "(request_id, created_at)" in indexes["uq_requests_request_id"]
    assert "(id, created_at)" in indexes["pk_requests"]
    assert "(id, request_created_at)" in indexes["pk_responses"]


def test_models_match_the_migration(pg_cluster, database):
    engine = create_engine(pg_cluster.url(database))
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts=OPTIONS)
            diff = compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()
    assert diff == []


def test_migrate_is_idempotent(pg_cluster, database):
    result = subprocess.run(
        [sys.executable, "-m", "llm_gateway.cli", "migrate"],
        env={**os.environ, "DATABASE_URL": pg_cluster.url(database)},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert query(pg_cluster, database, "SELECT version_num FROM alembic_version") == [("0003",)]
