"""Input validation: a bad input file makes the batch fail with line-numbered errors."""

from __future__ import annotations

import json
from typing import Any

import pytest
from openai import OpenAI

from batchor_core.testing import OpenAIEmulator

from .conftest import make_client
from .helpers import chat_line, jsonl, run_batch, upload

pytestmark = pytest.mark.integration


def _errors(batch: Any) -> list[tuple[str | None, int | None, str | None]]:
    assert batch.status == "failed", batch
    assert batch.failed_at is not None and batch.output_file_id is None
    return [(e.code, e.line, e.param) for e in batch.errors.data]


def test_each_bad_line_is_reported_with_its_number(client: OpenAI) -> None:
    ok = chat_line("ok", "q")
    lines: list[dict[str, Any] | str] = [
        ok,
        '{"custom_id": "x", ',
        "[1, 2]",
        {k: v for k, v in chat_line("x", "q").items() if k != "custom_id"},
        {**chat_line("url", "q"), "url": "/v1/responses"},
        chat_line("ok", "duplicate"),
        chat_line("other-model", "q", model="gpt-4o"),
        {**chat_line("get", "q"), "method": "GET"},
        {k: v for k, v in chat_line("nobody", "q").items() if k != "body"},
        {**chat_line("nomodel", "q"), "body": {"messages": []}},
    ]
    batch = run_batch(client, lines)
    assert _errors(batch) == [
        ("invalid_json_line", 2, None),
        ("invalid_request", 3, None),
        ("missing_required_parameter", 4, "custom_id"),
        ("invalid_url", 5, "url"),
        ("duplicate_custom_id", 6, "custom_id"),
        ("mismatched_model", 7, "body.model"),
        ("invalid_method", 8, "method"),
        ("missing_required_parameter", 9, "body"),
        ("missing_required_parameter", 10, "body.model"),
    ]
    assert batch.request_counts is not None and batch.request_counts.total == 0
    assert batch.in_progress_at is None


def test_blank_lines_are_skipped_but_counted_in_line_numbers(client: OpenAI) -> None:
    data = jsonl([chat_line("a", "q")]) + b"\n\n" + b"oops\n"
    file = upload(client, data)
    batch = client.batches.retrieve(
        client.batches.create(
            input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
        ).id
    )
    assert _errors(batch) == [("invalid_json_line", 4, None)]


def test_wrong_purpose(client: OpenAI) -> None:
    file = upload(client, jsonl([chat_line("a", "q")]), purpose="user_data")
    created = client.batches.create(
        input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    batch = client.batches.retrieve(created.id)
    assert _errors(batch) == [("invalid_file_purpose", None, "input_file_id")]


def test_empty_file(client: OpenAI) -> None:
    assert _errors(run_batch(client, [])) == [("empty_file", None, None)]


def test_too_many_requests_and_too_many_bytes() -> None:
    lines = [chat_line(f"r{i}", "q") for i in range(5)]
    with OpenAIEmulator(max_requests_per_file=3) as emu, make_client(emu) as client:
        assert _errors(run_batch(client, lines)) == [("too_many_requests", 4, None)]
        assert emu.custom_id_counts() == {f"r{i}": 1 for i in range(5)}
    with OpenAIEmulator(max_file_bytes=100) as emu, make_client(emu) as client:
        assert _errors(run_batch(client, lines)) == [("file_too_large", None, "input_file_id")]


def test_validation_in_stepwise_mode(step_client: OpenAI) -> None:
    file = upload(step_client, jsonl([chat_line("a", "q"), "nope"]))
    created = step_client.batches.create(
        input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    batch = step_client.batches.retrieve(created.id)
    assert _errors(batch) == [("invalid_json_line", 2, None)]


def test_error_list_is_capped(client: OpenAI) -> None:
    batch = run_batch(client, ["x"] * 150)
    assert len(_errors(batch)) == 100


def test_non_utf8_line_is_invalid_json(client: OpenAI) -> None:
    data = jsonl([chat_line("a", "q")]) + b'{"custom_id": "\xff"}\n'
    file = upload(client, data)
    batch = client.batches.retrieve(
        client.batches.create(
            input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
        ).id
    )
    assert _errors(batch) == [("invalid_json_line", 2, None)]
    assert json.loads(jsonl([chat_line("a", "q")]))["custom_id"] == "a"
