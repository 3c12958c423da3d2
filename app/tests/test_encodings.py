"""Upstreams that compress: what the client receives and what the log holds is the JSON.

The gateway asks its upstream for uncompressed answers (``Accept-Encoding: identity``);
these tests send it answers compressed anyway, by the fake upstream (every coding,
plain and streamed) and by a real nginx in front of it, and drive the gateway with the
official openai client.
"""

import orjson
import pytest

from conftest import query
from helpers import CHAT_BODY, http_call, wait_until

MESSAGES = [{"role": "user", "content": "compress me please"}]
REPLY = "Fake reply: compress me please"
ROUTES = ["encoded-gzip", "encoded-deflate", "encoded-br", "encoded-zstd", "via-nginx",
          "via-nginx-gzip"]  # fmt: skip


def logged(gateway, pg_cluster, request_id):
    sql = (
        "SELECT p.status_code, p.response_body, p.tokens_used FROM requests r"
        " JOIN responses p ON p.request_id_fk = r.id WHERE r.request_id = %s"
    )
    return wait_until(lambda: query(pg_cluster, gateway.database, sql, (request_id,)))[0]


@pytest.mark.parametrize("model", ROUTES)
def test_plain_answer_from_a_compressing_upstream(client, gateway, pg_cluster, model):
    raw = client.chat.completions.with_raw_response.create(model=model, messages=MESSAGES)
    completion = raw.parse()
    assert completion.choices[0].message.content == REPLY
    status, body, tokens = logged(gateway, pg_cluster, raw.headers["x-request-id"])
    assert status == 200
    assert body == orjson.loads(raw.content)  # the log holds exactly what the client got
    assert tokens == completion.usage.total_tokens


@pytest.mark.parametrize("model", ROUTES)
def test_streamed_answer_from_a_compressing_upstream(client, gateway, pg_cluster, model):
    with client.chat.completions.with_streaming_response.create(
        model=model, messages=MESSAGES, stream=True
    ) as response:
        request_id = response.headers["x-request-id"]
        text = "".join(c.choices[0].delta.content or "" for c in response.parse() if c.choices)
    assert text == REPLY
    status, body, tokens = logged(gateway, pg_cluster, request_id)
    assert status == 200
    assert body["choices"][0]["message"]["content"] == REPLY
    assert tokens == 8


def test_the_gateway_answers_its_clients_uncompressed(gateway):
    reply = gateway.call(
        "POST",
        "/v1/chat/completions",
        {**CHAT_BODY, "model": "encoded-br"},
        headers={"Accept-Encoding": "gzip, br"},
    )
    assert reply.status == 200
    assert "content-encoding" not in reply.headers
    assert reply.json()["choices"][0]["message"]["content"]


@pytest.mark.parametrize(
    ("accept", "coding"),
    [("gzip, deflate", "gzip"), ("br;q=1, gzip;q=0.5", "br"), ("zstd", "zstd"),
     ("identity", None), ("gzip;q=0", None), (None, None)],
)  # fmt: skip
def test_the_fake_upstream_compresses_what_the_client_accepts(fake_upstream, accept, coding):
    headers = {"Accept-Encoding": accept} if accept else {}
    # http.client adds no Accept-Encoding of its own and does not decode.
    reply = http_call(fake_upstream.port, "POST", "/v1/chat/completions", CHAT_BODY,
                      headers=headers)  # fmt: skip
    assert reply.status == 200
    assert reply.headers.get("content-encoding") == coding


def test_nginx_passes_the_gateways_identity_request_on(nginx):
    reply = http_call(
        nginx.honest_port,
        "POST",
        "/v1/chat/completions",
        CHAT_BODY,
        headers={"Accept-Encoding": "identity"},
    )
    assert reply.status == 200 and "content-encoding" not in reply.headers
    forced = http_call(
        nginx.forcing_port,
        "POST",
        "/v1/chat/completions",
        CHAT_BODY,
        headers={"Accept-Encoding": "identity"},
    )
    assert forced.headers.get("content-encoding") == "gzip"  # what the gateway must decode
