"""A new user's view: the official openai client, plain and streaming, then the rows."""

import openai
import pytest

from conftest import MASTER_KEY, query
from helpers import wait_until

MESSAGES = [{"role": "user", "content": "tell me something"}]


@pytest.fixture
def client(gateway):
    with openai.OpenAI(base_url=f"{gateway.base_url}/v1", api_key=MASTER_KEY) as client:
        yield client


def stored(gateway, pg_cluster, request_id):
    sql = (
        "SELECT r.model, p.status_code, p.response_body->'choices'->0->'message'->>'content',"
        " p.tokens_used FROM requests r JOIN responses p ON p.request_id_fk = r.id"
        " WHERE r.request_id = %s"
    )
    return wait_until(lambda: query(pg_cluster, gateway.database, sql, (request_id,)))


def test_models_via_openai_client(client):
    assert "gpt-test" in [model.id for model in client.models.list()]


def test_plain_completion_via_openai_client(client, gateway, pg_cluster):
    raw = client.chat.completions.with_raw_response.create(model="gpt-test", messages=MESSAGES)
    completion = raw.parse()
    text = completion.choices[0].message.content
    assert text == "Fake reply: tell me something"
    rows = stored(gateway, pg_cluster, raw.headers["x-request-id"])
    assert rows == [("gpt-test", 200, text, completion.usage.total_tokens)]


def test_streaming_completion_via_openai_client(client, gateway, pg_cluster):
    with client.chat.completions.with_streaming_response.create(
        model="gpt-test", messages=MESSAGES, stream=True
    ) as response:
        request_id = response.headers["x-request-id"]
        text = "".join(chunk.choices[0].delta.content or "" for chunk in response.parse())
    assert text == "Fake reply: tell me something"
    rows = stored(gateway, pg_cluster, request_id)
    assert rows == [("gpt-test", 200, text, 8)]  # 3 prompt + 5 completion words


def test_errors_surface_as_openai_exceptions(client):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=MESSAGES)
    with pytest.raises(openai.AuthenticationError):
        client.with_options(api_key="sk-wrong").chat.completions.create(
            model="gpt-test", messages=MESSAGES
        )
    with pytest.raises(openai.InternalServerError) as raised:
        client.with_options(max_retries=0).chat.completions.create(
            model="upstream-500", messages=MESSAGES
        )
    assert raised.value.status_code == 502
