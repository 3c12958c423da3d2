"""A streamed answer is logged as the same answer would have been unstreamed."""

from llm_gateway.stream_log import ResponsesStreamLog, StreamLog, TextCompletionStreamLog


def chunk(*choices, **extra):
    return {"id": "chatcmpl-1", "created": 1, "model": "m", "choices": list(choices), **extra}


def delta(index=0, finish_reason=None, **fields):
    return {"index": index, "delta": fields, "finish_reason": finish_reason}


def test_parallel_tool_calls_in_several_choices_with_reasoning():
    log = StreamLog()
    log.feed(chunk(delta(role="assistant", content=None, reasoning_content="Think")))
    log.feed(chunk(delta(reasoning_content="ing.")))
    opening = [
        {"index": i, "id": f"call_{n}", "type": "function", "function": {"name": n, "arguments": a}}
        for i, n, a in ((0, "f", ""), (1, "g", "{"))
    ]
    log.feed(chunk(delta(tool_calls=opening)))
    log.feed(chunk(delta(tool_calls=[{"index": 0, "function": {"arguments": '{"x":'}}])))
    log.feed(chunk(delta(tool_calls=[{"index": 1, "function": {"arguments": "}"}}])))
    log.feed(chunk(delta(tool_calls=[{"index": 0, "function": {"arguments": "1}"}}])))
    log.feed(chunk(delta(index=1, role="assistant", content="other")))
    log.feed(chunk(delta(finish_reason="tool_calls"), delta(index=1, finish_reason="stop")))
    log.feed(chunk(usage={"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}))
    body = log.body()
    first, second = body["choices"]
    assert first["finish_reason"] == "tool_calls"
    assert first["message"] == {
        "role": "assistant",
        "content": None,
        "refusal": None,
        "reasoning_content": "Thinking.",
        "tool_calls": [
            {"id": "call_f", "type": "function", "function": {"name": "f", "arguments": '{"x":1}'}},
            {"id": "call_g", "type": "function", "function": {"name": "g", "arguments": "{}"}},
        ],
    }
    assert second == {
        "index": 1,
        "message": {"role": "assistant", "content": "other", "refusal": None},
        "finish_reason": "stop",
    }
    assert body["usage"]["total_tokens"] == 7 and body["chunks"] == 9


def test_the_answer_is_named_by_its_chunks_not_by_azures_content_filter_chunk():
    log = StreamLog()
    # Azure OpenAI opens a stream with the prompt's filter results, nameless.
    log.feed({"id": "", "created": 0, "model": "", "object": "", "choices": [],
              "prompt_filter_results": [{"prompt_index": 0}]})  # fmt: skip
    log.feed(chunk(delta(role="assistant", content="Hi"), system_fingerprint="fp_1",
                   service_tier="default"))  # fmt: skip
    log.feed(chunk(delta(finish_reason="stop"), id="chatcmpl-other"))
    body = log.body()
    assert (body["id"], body["created"], body["model"]) == ("chatcmpl-1", 1, "m")
    assert (body["system_fingerprint"], body["service_tier"]) == ("fp_1", "default")
    assert body["choices"][0]["message"]["content"] == "Hi"


def test_openrouters_reasoning_field_is_joined_too():
    """OpenRouter (and newer vLLM) stream the model's reasoning as delta.reasoning; the
    unstreamed answer has it as message.reasoning, so the log must too."""
    log = StreamLog()
    log.feed(chunk(delta(role="assistant", content="", reasoning="Weigh")))
    log.feed(chunk(delta(reasoning=" it.")))
    log.feed(chunk(delta(content="42", finish_reason="stop")))
    message = log.body()["choices"][0]["message"]
    assert (message["reasoning"], message["content"]) == ("Weigh it.", "42")
    assert "reasoning_content" not in message


def test_legacy_function_call_is_joined():
    log = StreamLog()
    log.feed(chunk(delta(role="assistant", function_call={"name": "f", "arguments": ""})))
    log.feed(chunk(delta(function_call={"arguments": '{"a"'})))
    log.feed(chunk(delta(function_call={"arguments": ": 2}"}, finish_reason="function_call")))
    message = log.body()["choices"][0]["message"]
    assert message["function_call"] == {"name": "f", "arguments": '{"a": 2}'}
    assert message["content"] is None


def test_malformed_parts_add_nothing_and_break_nothing():
    log = StreamLog()
    log.feed({"choices": "not a list"})
    log.feed({"choices": [1, None, {"index": "x"}, {"index": True}, {"index": -1}]})
    log.feed({"choices": [{"index": 0, "delta": "text"}, {"delta": {"content": "ok"}}]})
    log.feed({"choices": [{"delta": {"tool_calls": [{"index": None}, "x", {"index": 0}]}}]})
    body = log.body()
    assert body["choices"][0]["message"]["content"] == "ok"
    assert body["choices"][0]["message"]["tool_calls"][0]["function"] == {
        "name": None,
        "arguments": "",
    }


def test_an_answer_is_whole_once_every_choice_has_finished():
    """Some OpenAI-compatible servers end a stream without [DONE]; a finish_reason on
    every choice still makes the answer whole (the relay logs 200, not a cut stream)."""
    log = StreamLog()
    log.feed(chunk(delta(role="assistant", content="Hi"), delta(index=1, content="Yo")))
    log.feed(chunk(delta(finish_reason="stop")))
    assert not log.answered  # choice 1 is still open
    log.feed(chunk(delta(index=1, finish_reason="length")))
    assert log.answered
    text = TextCompletionStreamLog()
    text.feed({"choices": [{"index": 0, "text": "a", "finish_reason": None}]})
    assert not text.answered
    text.feed({"choices": [{"index": 0, "text": "", "finish_reason": "stop"}]})
    assert text.answered
    responses = ResponsesStreamLog()
    responses.feed({"type": "response.output_text.delta", "delta": "a"})
    assert not responses.answered
    responses.feed({"type": "response.completed", "response": {"status": "completed"}})
    assert responses.answered
