"""Parsing output and error file lines, hand-written in OpenAI's format: no sockets."""

from __future__ import annotations

import json
from typing import Any

import pytest

from batchor_core.errors import ConfigurationError, ProviderError
from batchor_core.models import ItemError, Usage
from batchor_core.ports import ParsedLine
from batchor_core.providers import OpenAIBatchProvider, OpenAIProviderConfig

CHAT = "/v1/chat/completions"
RESPONSES = "/v1/responses"


@pytest.fixture
def provider() -> OpenAIBatchProvider:
    return OpenAIBatchProvider(OpenAIProviderConfig(api_key="sk-test"))


def line(*, response: dict[str, Any] | None = None, error: dict[str, Any] | None = None) -> bytes:
    obj = {"id": "batch_req_1", "custom_id": "item-1", "response": response, "error": error}
    return json.dumps(obj).encode() + b"\n"


def ok(body: dict[str, Any]) -> dict[str, Any]:
    return {"status_code": 200, "request_id": "req_1", "body": body}


def chat_body(
    *,
    content: str | None = '{"a": 1}',
    refusal: str | None = None,
    finish: str = "stop",
) -> dict[str, Any]:
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": refusal},
                "finish_reason": finish,
            }
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17},
    }


def responses_body(
    *,
    content: list[dict[str, Any]] | None = None,
    status: str = "completed",
    incomplete: str | None = None,
    error: dict[str, Any] | None = None,
) -> dict[str, Any]:
    if content is None:
        content = [{"type": "output_text", "text": '{"a": ', "annotations": []}]
        content.append({"type": "output_text", "text": "1}", "annotations": []})
    return {
        "id": "resp_1",
        "object": "response",
        "status": status,
        "error": error,
        "incomplete_details": {"reason": incomplete} if incomplete else None,
        "output": [
            {"type": "reasoning", "id": "rs_1", "summary": []},
            {"type": "message", "id": "msg_1", "role": "assistant", "content": content},
        ],
        "usage": {"input_tokens": 30, "output_tokens": 7, "total_tokens": 37},
    }


CHAT_USAGE = Usage(input_tokens=12, output_tokens=5)
RESP_USAGE = Usage(input_tokens=30, output_tokens=7)


# --------------------------------------------------------------------------- chat


def test_chat_success(provider: OpenAIBatchProvider) -> None:
    parsed = provider.parse_line(CHAT, line(response=ok(chat_body())))
    assert parsed == ParsedLine("item-1", '{"a": 1}', None, CHAT_USAGE)


def test_chat_success_without_trailing_newline_or_usage(provider: OpenAIBatchProvider) -> None:
    body = chat_body()
    del body["usage"]
    parsed = provider.parse_line(CHAT, line(response=ok(body)).rstrip(b"\n"))
    assert parsed == ParsedLine("item-1", '{"a": 1}', None, None)


def test_chat_refusal(provider: OpenAIBatchProvider) -> None:
    body = chat_body(content=None, refusal="I can't help with that.")
    parsed = provider.parse_line(CHAT, line(response=ok(body)))
    assert parsed == ParsedLine(
        "item-1", None, ItemError("refusal", "I can't help with that."), CHAT_USAGE
    )


def test_chat_length(provider: OpenAIBatchProvider) -> None:
    parsed = provider.parse_line(
        CHAT, line(response=ok(chat_body(content='{"a"', finish="length")))
    )
    assert parsed.text is None
    assert parsed.error == ItemError("length", "output truncated at max tokens")
    assert parsed.usage == CHAT_USAGE


def test_chat_content_filter(provider: OpenAIBatchProvider) -> None:
    body = chat_body(content=None, finish="content_filter")
    parsed = provider.parse_line(CHAT, line(response=ok(body)))
    assert parsed.error is not None
    assert parsed.error.code == "content_filter"
    assert parsed.text is None


def test_chat_empty_output(provider: OpenAIBatchProvider) -> None:
    parsed = provider.parse_line(CHAT, line(response=ok(chat_body(content=None))))
    assert parsed.error is not None
    assert parsed.error.code == "empty_output"
    no_choices = provider.parse_line(CHAT, line(response=ok({"choices": []})))
    assert no_choices.error is not None
    assert no_choices.error.code == "empty_output"


def test_chat_http_error(provider: OpenAIBatchProvider) -> None:
    response = {
        "status_code": 400,
        "request_id": "req_9",
        "body": {
            "error": {
                "message": "This model's maximum context length is 8192 tokens.",
                "type": "invalid_request_error",
                "param": "messages",
                "code": "context_length_exceeded",
            }
        },
    }
    parsed = provider.parse_line(CHAT, line(response=response))
    assert parsed.custom_id == "item-1"
    assert parsed.text is None
    assert parsed.usage is None
    assert parsed.error == ItemError(
        "http_400",
        "HTTP 400: context_length_exceeded: This model's maximum context length is 8192 "
        "tokens. [request req_9]",
    )


def test_http_error_without_error_body(provider: OpenAIBatchProvider) -> None:
    parsed = provider.parse_line(CHAT, line(response={"status_code": 500, "body": {}}))
    assert parsed.error == ItemError("http_500", "HTTP 500: no error details")


@pytest.mark.parametrize("endpoint", [CHAT, RESPONSES])
@pytest.mark.parametrize("code", ["batch_expired", "batch_cancelled"])
def test_line_error_keeps_its_code(provider: OpenAIBatchProvider, endpoint: str, code: str) -> None:
    message = "This request could not be executed before the completion window expired."
    parsed = provider.parse_line(endpoint, line(error={"code": code, "message": message}))
    assert parsed == ParsedLine("item-1", None, ItemError(code, message), None)


def test_line_error_without_code(provider: OpenAIBatchProvider) -> None:
    parsed = provider.parse_line(CHAT, line(error={"message": "boom"}))
    assert parsed.error == ItemError("provider_error", "boom")


def test_line_with_neither_response_nor_error(provider: OpenAIBatchProvider) -> None:
    parsed = provider.parse_line(CHAT, line())
    assert parsed.error is not None
    assert parsed.error.code == "provider_error"


# --------------------------------------------------------------------------- responses


def test_responses_success_concatenates_output_text(provider: OpenAIBatchProvider) -> None:
    parsed = provider.parse_line(RESPONSES, line(response=ok(responses_body())))
    assert parsed == ParsedLine("item-1", '{"a": 1}', None, RESP_USAGE)


def test_responses_refusal(provider: OpenAIBatchProvider) -> None:
    body = responses_body(content=[{"type": "refusal", "refusal": "No."}])
    parsed = provider.parse_line(RESPONSES, line(response=ok(body)))
    assert parsed == ParsedLine("item-1", None, ItemError("refusal", "No."), RESP_USAGE)


def test_responses_length(provider: OpenAIBatchProvider) -> None:
    body = responses_body(status="incomplete", incomplete="max_output_tokens")
    parsed = provider.parse_line(RESPONSES, line(response=ok(body)))
    assert parsed.text is None
    assert parsed.error == ItemError("length", "output truncated at max_output_tokens")
    assert parsed.usage == RESP_USAGE


def test_responses_content_filter(provider: OpenAIBatchProvider) -> None:
    body = responses_body(status="incomplete", incomplete="content_filter")
    parsed = provider.parse_line(RESPONSES, line(response=ok(body)))
    assert parsed.error is not None
    assert parsed.error.code == "content_filter"


def test_responses_incomplete_for_another_reason(provider: OpenAIBatchProvider) -> None:
    body = responses_body(status="incomplete", incomplete="something_new")
    parsed = provider.parse_line(RESPONSES, line(response=ok(body)))
    assert parsed.error == ItemError("incomplete", "response incomplete (reason: something_new)")


def test_responses_failed(provider: OpenAIBatchProvider) -> None:
    body = responses_body(
        status="failed", content=[], error={"code": "server_error", "message": "oops"}
    )
    parsed = provider.parse_line(RESPONSES, line(response=ok(body)))
    assert parsed.error == ItemError("response_failed", "response failed: server_error: oops")
    assert parsed.usage == RESP_USAGE


def test_responses_empty_output(provider: OpenAIBatchProvider) -> None:
    parsed = provider.parse_line(RESPONSES, line(response=ok(responses_body(content=[]))))
    assert parsed.error is not None
    assert parsed.error.code == "empty_output"


def test_responses_http_error(provider: OpenAIBatchProvider) -> None:
    response = {
        "status_code": 429,
        "request_id": "req_2",
        "body": {"error": {"message": "Slow down", "code": "rate_limit_exceeded"}},
    }
    parsed = provider.parse_line(RESPONSES, line(response=response))
    assert parsed.error == ItemError(
        "http_429", "HTTP 429: rate_limit_exceeded: Slow down [request req_2]"
    )


# --------------------------------------------------------------------------- corrupt lines


@pytest.mark.parametrize(
    "raw",
    [
        b"not json at all\n",
        b'{"custom_id": "x", "response": ',
        b"\xff\xfe garbage",
        b"[1, 2, 3]\n",
        b'{"id": "batch_req_1", "response": null, "error": null}\n',
        b'{"custom_id": "", "response": null}\n',
        b'{"custom_id": 7, "response": null}\n',
    ],
)
def test_corrupt_line_raises_provider_error(provider: OpenAIBatchProvider, raw: bytes) -> None:
    with pytest.raises(ProviderError) as info:
        provider.parse_line(CHAT, raw)
    assert info.value.retryable is False


def test_corrupt_line_message_is_bounded(provider: OpenAIBatchProvider) -> None:
    with pytest.raises(ProviderError) as info:
        provider.parse_line(CHAT, b"x" * 100_000)
    assert len(str(info.value)) < 500


def test_unknown_endpoint(provider: OpenAIBatchProvider) -> None:
    with pytest.raises(ConfigurationError):
        provider.parse_line("/v1/embeddings", line(response=ok({})))


@pytest.mark.parametrize(
    ("usage", "expected"),
    [
        # Negative counts would lower a run's totals and its cost.
        (
            {
                "prompt_tokens": -5,
                "completion_tokens": 3,
                "prompt_tokens_details": {"cached_tokens": -1},
            },
            Usage(0, 3, 0, 0),
        ),
        # Counts past a 32-bit column (per item) or whose sums overflow 64 bits (per run)
        # would make recording the batch fail on every step: the run could never go on.
        ({"prompt_tokens": 3_000_000_000, "completion_tokens": 2**62}, Usage(0, 0, 0, 0)),
        # Strings, floats and booleans are not token counts.
        (
            {"prompt_tokens": "12", "completion_tokens": 5.0, "completion_tokens_details": True},
            Usage(0, 0, 0, 0),
        ),
        # Booleans are ints to Python, not to us; 2**31 - 1 is the last count kept.
        (
            {
                "prompt_tokens": True,
                "completion_tokens": 2**31 - 1,
                "prompt_tokens_details": {"cached_tokens": 2**31},
                "completion_tokens_details": {"reasoning_tokens": False},
            },
            Usage(0, 2**31 - 1, 0, 0),
        ),
        (
            {
                "prompt_tokens": 12,
                "completion_tokens": 5,
                "prompt_tokens_details": {"cached_tokens": 4},
                "completion_tokens_details": {"reasoning_tokens": 2},
            },
            Usage(12, 5, 4, 2),
        ),
    ],
)
def test_usage_keeps_only_plausible_token_counts(
    provider: OpenAIBatchProvider, usage: dict[str, Any], expected: Usage
) -> None:
    body = chat_body()
    body["usage"] = usage
    parsed = provider.parse_line("/v1/chat/completions", line(response=ok(body)))
    assert parsed.usage == expected
