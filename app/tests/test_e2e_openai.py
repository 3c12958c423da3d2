"""A new user's view: the official openai client, plain and streaming, then the rows."""

import base64
import struct
from functools import partial

import openai
import pytest

from conftest import LONG_REPLY_CHARS, query
from helpers import wait_until

MESSAGES = [{"role": "user", "content": "tell me something"}]


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


def test_streams_read_to_the_end_are_logged_200_however_fast_the_client_closes(
    client, gateway, pg_cluster
):
    """The SDK closes its connection as soon as it reads [DONE]; that is a delivered
    answer, not a client that left (which is what 499 means)."""
    ids = []
    for _ in range(30):
        with client.chat.completions.with_streaming_response.create(
            model="gpt-test", messages=MESSAGES, stream=True
        ) as response:
            ids.append(response.headers["x-request-id"])
            for _chunk in response.parse():
                pass
    sql = "SELECT status_code FROM requests WHERE request_id = ANY(%s)"
    rows = wait_until(lambda: (r := query(pg_cluster, gateway.database, sql, (ids,))) and
                      len(r) == len(ids) and r)  # fmt: skip
    assert [status for (status,) in rows] == [200] * len(ids)


TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "lookup",
            "description": "Look the text up",
            "parameters": {"type": "object", "properties": {"text": {"type": "string"}}},
        },
    }
]


def logged_body(gateway, pg_cluster, request_id):
    sql = (
        "SELECT p.response_body FROM requests r JOIN responses p ON p.request_id_fk = r.id"
        " WHERE r.request_id = %s"
    )
    return wait_until(lambda: query(pg_cluster, gateway.database, sql, (request_id,)))[0][0]


def test_a_streamed_tool_call_is_logged_as_the_unstreamed_answer(client, gateway, pg_cluster):
    plain = client.chat.completions.create(model="gpt-test", messages=MESSAGES, tools=TOOLS)
    with client.chat.completions.with_streaming_response.create(
        model="gpt-test", messages=MESSAGES, tools=TOOLS, stream=True
    ) as response:
        request_id = response.headers["x-request-id"]
        deltas = [c.choices[0].delta for c in response.parse() if c.choices]
    received = "".join(call.function.arguments or "" for d in deltas for call in d.tool_calls or [])
    assert received == plain.choices[0].message.tool_calls[0].function.arguments
    choice = logged_body(gateway, pg_cluster, request_id)["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] is None
    ((call,),) = [choice["message"]["tool_calls"]]
    assert call["id"] == next(d.tool_calls[0].id for d in deltas if d.tool_calls)
    assert call["type"] == "function"
    assert call["function"] == {"name": "lookup", "arguments": received}


def test_a_streamed_refusal_is_logged(client, gateway, pg_cluster):
    with client.chat.completions.with_streaming_response.create(
        model="refusal", messages=MESSAGES, stream=True
    ) as response:
        request_id = response.headers["x-request-id"]
        received = "".join(c.choices[0].delta.refusal or "" for c in response.parse() if c.choices)
    message = logged_body(gateway, pg_cluster, request_id)["choices"][0]["message"]
    assert received and message["refusal"] == received
    assert message["content"] is None


def logged_row(gateway, pg_cluster, request_id):
    sql = (
        "SELECT r.route, r.model, p.status_code, p.response_body, p.prompt_tokens,"
        " p.completion_tokens, p.tokens_used, p.cost FROM requests r"
        " JOIN responses p ON p.request_id_fk = r.id WHERE r.request_id = %s"
    )
    keys = ("route", "model", "status", "body", "prompt", "completion", "total", "cost")
    row = wait_until(lambda: query(pg_cluster, gateway.database, sql, (request_id,)))[0]
    return dict(zip(keys, row, strict=True))


@pytest.mark.parametrize("include_usage", [False, True])
def test_an_error_mid_stream_reaches_the_client_and_is_logged(
    client, gateway, pg_cluster, include_usage
):
    """A model that fails after the 200 went out ends the stream with
    data: {"error": ...} (no [DONE]); the SDK raises it. The client must get it whether
    or not it asked for usage, and the row must say the answer failed: 502 with the
    upstream's error and the text sent before it."""
    options = {"stream_options": {"include_usage": True}} if include_usage else {}
    with client.chat.completions.with_streaming_response.create(
        model="stream-error", messages=MESSAGES, stream=True, **options
    ) as response:
        request_id = response.headers["x-request-id"]
        received = []
        with pytest.raises(openai.APIError, match="server had an error"):
            for chunk in response.parse():
                received += [c.delta.content or "" for c in chunk.choices]
    row = logged_row(gateway, pg_cluster, request_id)
    assert row["status"] == 502
    assert row["body"]["error"]["type"] == "server_error"
    logged_text = row["body"]["choices"][0]["message"]["content"]
    assert logged_text == "".join(received) == "Fake reply: tell"


@pytest.mark.parametrize("endpoint", ["completions", "responses"])
def test_an_error_mid_stream_of_the_other_endpoints_is_logged(
    client, gateway, pg_cluster, endpoint
):
    if endpoint == "completions":
        create = partial(client.completions.with_streaming_response.create, prompt="say this")
    else:
        create = partial(client.responses.with_streaming_response.create, input="answer me")
    with create(model="stream-error", stream=True) as response:
        request_id = response.headers["x-request-id"]
        try:
            events = list(response.parse())
        except openai.APIError:
            events = ["raised"]
    # Legacy completions raise like chat; the Responses API's error is a typed event.
    assert getattr(events[-1], "type", events[-1]) in ("raised", "error")
    row = logged_row(gateway, pg_cluster, request_id)
    assert row["status"] == 502
    assert "server had an error" in row["body"]["error"]["message"]


@pytest.mark.parametrize("endpoint", ["chat", "completions", "responses"])
def test_a_stream_that_ends_before_its_answer_does_is_an_error(
    client, gateway, pg_cluster, endpoint
):
    """An upstream (or a proxy) that ends its HTTP body cleanly in the middle of an
    answer: no finish_reason and no [DONE] (Responses API: no response.completed). The
    SDK would end its loop as if the answer were whole; the gateway tells the client
    and logs a 502, not a 200 with a cut answer."""
    create = {
        "chat": partial(client.chat.completions.with_streaming_response.create,
                        messages=MESSAGES),
        "completions": partial(client.completions.with_streaming_response.create,
                               prompt="say this"),
        "responses": partial(client.responses.with_streaming_response.create,
                             input="answer me"),
    }[endpoint]  # fmt: skip
    with create(model="stream-cut", stream=True) as response:
        request_id = response.headers["x-request-id"]
        with pytest.raises(openai.APIError, match="ended before"):
            list(response.parse())
    row = logged_row(gateway, pg_cluster, request_id)
    assert row["status"] == 502
    assert row["body"]["error"]["code"] == "upstream_stream_incomplete"


def test_a_stream_whose_upstream_dies_mid_answer_is_logged_as_broken(client, gateway, pg_cluster):
    """The upstream was reached and answered; its connection broke mid-body. The row
    (and the client's error) must say so, not that the upstream was unreachable."""
    with client.chat.completions.with_streaming_response.create(
        model="stream-abort", messages=MESSAGES, stream=True
    ) as response:
        request_id = response.headers["x-request-id"]
        with pytest.raises(openai.APIError, match="broke off"):
            list(response.parse())
    row = logged_row(gateway, pg_cluster, request_id)
    assert row["status"] == 502
    assert row["body"]["error"]["code"] == "upstream_stream_broken"
    assert row["body"]["choices"][0]["message"]["content"] == "Fake reply: tell"


@pytest.mark.parametrize("newline", ["cr", "crlf"])
def test_streams_with_any_sse_line_ending_are_read(client, gateway, pg_cluster, newline):
    """SSE ends lines with LF, CRLF or a lone CR (the SDK reads all three); a CRLF may
    be cut between two reads. The row must hold the answer and its usage."""
    with client.chat.completions.with_streaming_response.create(
        model=f"newline-{newline}", messages=MESSAGES, stream=True
    ) as response:
        request_id = response.headers["x-request-id"]
        text = "".join(c.choices[0].delta.content or "" for c in response.parse() if c.choices)
    assert text == "Fake reply: tell me something"
    row = logged_row(gateway, pg_cluster, request_id)
    assert (row["status"], row["total"]) == (200, 8)
    assert row["body"]["choices"][0]["message"]["content"] == text
    with client.responses.with_streaming_response.create(
        model=f"newline-{newline}", input="answer me", stream=True
    ) as response:
        request_id = response.headers["x-request-id"]
        events = list(response.parse())
    assert events[-1].type == "response.completed"
    row = logged_row(gateway, pg_cluster, request_id)
    assert (row["status"], row["total"]) == (200, 6)


@pytest.mark.parametrize("encoding_format", [None, "float"])
def test_embeddings_via_openai_client(client, gateway, pg_cluster, encoding_format):
    """Without encoding_format the SDK asks for base64 and decodes it; the row keeps the
    upstream's answer as it came, the same vector."""
    options = {"encoding_format": encoding_format} if encoding_format else {}
    raw = client.embeddings.with_raw_response.create(
        model="gpt-test", input=["one two", "three"], **options
    )
    embeddings = raw.parse()
    assert [len(item.embedding) for item in embeddings.data] == [8, 8]
    row = logged_row(gateway, pg_cluster, raw.headers["x-request-id"])
    assert (row["route"], row["status"], row["prompt"], row["total"]) == (
        "/v1/embeddings", 200, 3, 3)  # fmt: skip
    assert row["completion"] is None
    assert float(row["cost"]) == pytest.approx(3 * 0.000001)  # the input price only
    logged = row["body"]["data"][1]["embedding"]
    if encoding_format is None:
        assert body_of_request(gateway, pg_cluster, raw.headers["x-request-id"])[
            "encoding_format"] == "base64"  # fmt: skip
        packed = base64.b64decode(logged)
        logged = list(struct.unpack(f"<{len(packed) // 4}f", packed))
    assert logged == pytest.approx(embeddings.data[1].embedding)


def body_of_request(gateway, pg_cluster, request_id):
    sql = "SELECT body FROM requests WHERE request_id = %s"
    return wait_until(lambda: query(pg_cluster, gateway.database, sql, (request_id,)))[0][0]


@pytest.mark.parametrize("stream", [False, True])
def test_legacy_completions_via_openai_client(client, gateway, pg_cluster, stream):
    if stream:
        with client.completions.with_streaming_response.create(
            model="gpt-test", prompt="say this", stream=True
        ) as response:
            request_id = response.headers["x-request-id"]
            text = "".join(c.choices[0].text for c in response.parse() if c.choices)
    else:
        raw = client.completions.with_raw_response.create(model="gpt-test", prompt="say this")
        request_id, text = raw.headers["x-request-id"], raw.parse().choices[0].text
    assert text == "Fake reply: say this"
    row = logged_row(gateway, pg_cluster, request_id)
    assert (row["route"], row["status"]) == ("/v1/completions", 200)
    assert row["body"]["choices"][0]["text"] == text
    assert (row["prompt"], row["completion"]) == (2, 4)


@pytest.mark.parametrize("stream", [False, True])
def test_responses_api_via_openai_client(client, gateway, pg_cluster, stream):
    if stream:
        with client.responses.with_streaming_response.create(
            model="gpt-test", input="answer me", stream=True
        ) as response:
            request_id = response.headers["x-request-id"]
            events = list(response.parse())
        text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
        assert events[-1].type == "response.completed"
    else:
        raw = client.responses.with_raw_response.create(model="gpt-test", input="answer me")
        request_id, text = raw.headers["x-request-id"], raw.parse().output_text
    assert text == "Fake reply: answer me"
    row = logged_row(gateway, pg_cluster, request_id)
    assert (row["route"], row["status"]) == ("/v1/responses", 200)
    assert row["body"]["output"][0]["content"][0]["text"] == text
    # input_tokens / output_tokens land in the same columns as chat's counts.
    assert (row["prompt"], row["completion"], row["total"]) == (2, 4, 6)


def test_a_long_responses_stream_is_relayed_and_logged_whole(client, gateway, pg_cluster):
    """A long answer's response.completed event (and output_text.done) carries the whole
    text on one SSE line; that line may be longer than any buffer, as the answer may."""
    with client.responses.with_streaming_response.create(
        model="long", input="answer me", stream=True
    ) as response:
        request_id = response.headers["x-request-id"]
        events = list(response.parse())
    assert events[-1].type == "response.completed"
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert len(text) == LONG_REPLY_CHARS
    row = logged_row(gateway, pg_cluster, request_id)
    assert row["status"] == 200
    assert row["body"]["output"][0]["content"][0]["text"] == text


def test_an_unknown_route_is_a_json_404(gateway):
    reply = gateway.call("POST", "/v1/no-such-endpoint", {"model": "gpt-test"})
    assert reply.status == 404
    assert reply.json()["error"]["code"] == "not_found"


def test_a_parameter_openai_rejects_is_rejected_through_the_gateway(client, gateway, pg_cluster):
    with pytest.raises(openai.BadRequestError) as raised:
        client.chat.completions.create(model="gpt-test", messages=MESSAGES, temperature="hot")
    assert raised.value.param == "temperature"
    assert raised.value.response.headers["x-request-id"]


@pytest.mark.parametrize("stream", [False, True])
def test_an_azure_deployment_via_openai_client(client, gateway, pg_cluster, stream):
    """azure/<deployment>: Azure's path, ?api-version= and api-key header upstream (the
    fake answers 404/401 to anything else); the client sees an OpenAI endpoint."""
    if stream:
        with client.chat.completions.with_streaming_response.create(
            model="azure-gpt", messages=MESSAGES, stream=True
        ) as response:
            request_id = response.headers["x-request-id"]
            text = "".join(c.choices[0].delta.content or "" for c in response.parse() if c.choices)
    else:
        raw = client.chat.completions.with_raw_response.create(model="azure-gpt", messages=MESSAGES)
        request_id, text = raw.headers["x-request-id"], raw.parse().choices[0].message.content
    assert text == "Fake reply: tell me something"
    row = logged_row(gateway, pg_cluster, request_id)
    assert (row["model"], row["status"]) == ("azure-gpt", 200)
    assert row["body"]["model"] == "fake-azure-deployment"
