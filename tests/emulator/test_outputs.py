"""Output lines: chat and responses bodies, structured outputs, determinism, usage."""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Any

import jsonschema
import pytest
from openai import OpenAI
from openai.lib import type_to_response_format_param
from openai.types.chat import ChatCompletion
from openai.types.responses import Response
from pydantic import BaseModel

from batchor_core.testing import OpenAIEmulator

from .conftest import make_client
from .helpers import (
    RESPONSES,
    by_custom_id,
    chat_line,
    message_text,
    read_lines,
    responses_line,
    run_batch,
)

pytestmark = pytest.mark.integration


class Priority(StrEnum):
    LOW = "low"
    HIGH = "high"


class Address(BaseModel):
    street: str
    city: str
    postcode: str | None


class Ticket(BaseModel):
    title: str
    nickname: str | None
    priority: Priority
    score: float
    count: int
    done: bool
    address: Address
    tags: list[str]
    history: list[Address]


def _chat_format() -> dict[str, Any]:
    return dict(type_to_response_format_param(Ticket))  # type: ignore[arg-type]


def _responses_format() -> dict[str, Any]:
    spec = _chat_format()["json_schema"]
    return {"type": "json_schema", "name": spec["name"], "schema": spec["schema"], "strict": True}


def test_chat_plain_text_output(client: OpenAI) -> None:
    batch = run_batch(client, [chat_line("a", "What is 2+2?")])
    [line] = read_lines(client, batch.output_file_id)
    assert line["id"].startswith("batch_req_")
    assert line["error"] is None
    response = line["response"]
    assert response["status_code"] == 200
    assert response["request_id"].startswith("req_")
    body = response["body"]
    completion = ChatCompletion.model_validate(body)
    assert completion.object == "chat.completion"
    assert completion.model == "gpt-4o-mini"
    choice = completion.choices[0]
    assert choice.finish_reason == "stop"
    assert choice.message.content == "Echo: What is 2+2?"
    assert choice.message.refusal is None
    usage = body["usage"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_chat_structured_output_conforms_to_pydantic_schema(client: OpenAI) -> None:
    response_format = _chat_format()
    schema = response_format["json_schema"]["schema"]
    lines = [chat_line(f"t{i}", f"ticket {i}", response_format=response_format) for i in range(30)]
    batch = run_batch(client, lines)
    outputs = read_lines(client, batch.output_file_id)
    assert len(outputs) == 30
    values = []
    for line in outputs:
        text = message_text(line)
        assert text is not None
        value = json.loads(text)
        jsonschema.validate(value, schema)
        Ticket.model_validate(value)
        values.append(text)
    assert len(set(values)) > 1  # answers vary with the request content
    assert any(json.loads(v)["nickname"] is None for v in values)
    assert any(json.loads(v)["nickname"] is not None for v in values)


def test_responses_plain_and_message_input(client: OpenAI) -> None:
    lines = [
        responses_line("s", "plain string input"),
        responses_line("m", "message input", as_messages=True),
    ]
    batch = run_batch(client, lines, endpoint=RESPONSES)
    outputs = by_custom_id(read_lines(client, batch.output_file_id))
    for custom_id, expected in (("s", "plain string input"), ("m", "message input")):
        body = outputs[custom_id]["response"]["body"]
        assert "output_text" not in body  # an SDK property, not part of the raw JSON
        response = Response.model_validate(body)
        assert response.status == "completed"
        assert response.incomplete_details is None
        assert response.output_text == f"Echo: {expected}"
        assert body["output"][0]["content"][0]["type"] == "output_text"
        usage = body["usage"]
        assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]


def test_responses_structured_output(client: OpenAI) -> None:
    text_format = _responses_format()
    lines = [responses_line(f"r{i}", f"item {i}", text_format=text_format) for i in range(10)]
    batch = run_batch(client, lines, endpoint=RESPONSES)
    for line in read_lines(client, batch.output_file_id):
        value = json.loads(message_text(line) or "")
        jsonschema.validate(value, text_format["schema"])
        Ticket.model_validate(value)


def test_json_object_mode(client: OpenAI) -> None:
    batch = run_batch(client, [chat_line("a", "hi", response_format={"type": "json_object"})])
    [line] = read_lines(client, batch.output_file_id)
    assert json.loads(message_text(line) or "") == {"echo": "hi"}


def test_answers_depend_on_content_not_custom_id() -> None:
    response_format = _chat_format()

    def answers(seed: int, custom_ids: list[str]) -> list[str | None]:
        with OpenAIEmulator(seed=seed) as emu, make_client(emu) as client:
            lines = [
                chat_line(cid, f"same prompt {i}", response_format=response_format)
                for i, cid in enumerate(custom_ids)
            ]
            outputs = by_custom_id(read_lines(client, run_batch(client, lines).output_file_id))
            return [message_text(outputs[cid]) for cid in custom_ids]

    first = answers(1, ["a", "b", "c"])
    assert answers(1, ["retry-a", "retry-b", "retry-c"]) == first
    assert answers(2, ["a", "b", "c"]) != first


def test_usage_is_summed_on_the_batch(client: OpenAI) -> None:
    batch = run_batch(client, [chat_line(f"r{i}", "x" * 40 * (i + 1)) for i in range(3)])
    outputs = read_lines(client, batch.output_file_id)
    assert batch.usage is not None
    assert batch.usage.input_tokens == sum(
        line["response"]["body"]["usage"]["prompt_tokens"] for line in outputs
    )
    assert batch.usage.output_tokens == sum(
        line["response"]["body"]["usage"]["completion_tokens"] for line in outputs
    )
    assert batch.usage.total_tokens == batch.usage.input_tokens + batch.usage.output_tokens


def test_unshuffled_output_keeps_input_order() -> None:
    with OpenAIEmulator(shuffle_output=False) as emu, make_client(emu) as client:
        lines = [chat_line(f"r{i}", "q") for i in range(5)]
        batch = run_batch(client, lines)
        order = [x["custom_id"] for x in read_lines(client, batch.output_file_id)]
    assert order == [f"r{i}" for i in range(5)]
