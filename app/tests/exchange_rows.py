"""Exchanges generated in SQL (generate_series), for the migration test and bench-db.

Rows look like the gateway's: a request with its headers and a chat body, a response with
an answer and usage. Bodies are built from md5 digests, not repeat(): PostgreSQL
compresses a repeated string to almost nothing, which would make the rows far smaller on
disk than real ones.
"""

from __future__ import annotations

_HAS_REQUEST_CREATED_AT = (
    "SELECT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'responses'::regclass"
    " AND attname = 'request_created_at' AND NOT attisdropped)"
)


def insert_exchanges_sql(
    count: int,
    days: float,
    partitioned: bool,
    end: str = "now()",
    prefix: str = "req_seed_",
    body_chunks: int = 24,
) -> str:
    """One statement inserting ``count`` exchanges spread evenly over the ``days`` before
    ``end`` (an SQL timestamptz expression), ids in time order. Each body carries
    ``body_chunks`` x 33 bytes of text (24: about 0.8 KB each way; with headers and
    JSON ~2 KB per exchange). ``partitioned``: the 0003 schema (responses carry their
    request's created_at), else 0002's."""
    text = f"(SELECT string_agg(md5(g::text || ':' || i), ' ') FROM generate_series(1, {body_chunks}) AS i)"  # noqa: E501
    answer = f"(SELECT string_agg(md5(i || ':' || r.id), ' ') FROM generate_series(1, {body_chunks}) AS i)"  # noqa: E501
    key, key_value = ("request_created_at, ", "r.created_at, ") if partitioned else ("", "")
    return f"""
        WITH r AS (
            INSERT INTO requests (request_id, route, method, url, headers, body, model,
                                  status_code, key_alias, "user", created_at)
            SELECT '{prefix}' || g, '/v1/chat/completions', 'POST', '/v1/chat/completions',
                   jsonb_build_object('content-type', 'application/json',
                                      'user-agent', 'OpenAI/Python 1.55.0',
                                      'authorization', '[REDACTED]',
                                      'x-stainless-retry-count', '0'),
                   jsonb_build_object('model', 'gpt-4o-mini', 'messages', jsonb_build_array(
                       jsonb_build_object('role', 'system', 'content', 'You are terse.'),
                       jsonb_build_object('role', 'user', 'content', {text}))),
                   (ARRAY['gpt-4o-mini', 'gpt-4o', 'llama-3.1-70b'])[1 + g % 3], 200,
                   'team-a', NULL, {end} - ({count} - g) * (interval '1 day' * {days} / {count})
            FROM generate_series(1, {count}) AS g
            RETURNING id, created_at, model
        )
        INSERT INTO responses (request_id_fk, {key}response_body, status_code, latency_ms,
                               prompt_tokens, completion_tokens, tokens_used, cost,
                               created_at, deployment, attempts)
        SELECT r.id, {key_value}jsonb_build_object(
                   'id', 'chatcmpl-' || r.id, 'object', 'chat.completion', 'model', r.model,
                   'choices', jsonb_build_array(jsonb_build_object('index', 0,
                       'message', jsonb_build_object('role', 'assistant', 'content', {answer}),
                       'finish_reason', 'stop')),
                   'usage', jsonb_build_object('prompt_tokens', 210, 'completion_tokens', 190,
                                               'total_tokens', 400)),
               200, 350.25, 210, 190, 400, 0.000152, r.created_at + interval '350 ms',
               'openai/gpt-4o-mini@api.openai.com', 1
        FROM r
    """


def run_insert(cursor, count: int, days: float, **options) -> None:
    """``insert_exchanges_sql`` for whichever schema the database has, on a psycopg2 cursor."""
    cursor.execute(_HAS_REQUEST_CREATED_AT)
    partitioned = cursor.fetchone()[0]
    cursor.execute(insert_exchanges_sql(count, days, partitioned, **options))
