"""Scripted faults: HTTP errors, dropped connections, commit-then-fail, line and batch faults."""

from __future__ import annotations

import json

import openai
import pytest
from openai import OpenAI

from batchor_core.testing import OpenAIEmulator

from .conftest import make_client
from .helpers import (
    RESPONSES,
    by_custom_id,
    chat_line,
    create_batch,
    jsonl,
    message_text,
    read_lines,
    responses_line,
    run_batch,
    upload,
)

pytestmark = pytest.mark.integration

SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string"}, "score": {"type": "integer"}},
    "required": ["answer", "score"],
    "additionalProperties": False,
}
CHAT_FORMAT = {
    "type": "json_schema",
    "json_schema": {"name": "A", "schema": SCHEMA, "strict": True},
}


def test_429_carries_retry_after_and_is_a_rate_limit_error(
    client: OpenAI, emu: OpenAIEmulator
) -> None:
    emu.faults.http_error(method="POST", path="/v1/batches", status=429, retry_after=2.0)
    file = upload(client, jsonl([chat_line("a", "q")]))
    with pytest.raises(openai.RateLimitError) as caught:
        client.batches.create(
            input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
    error = caught.value
    assert error.response.headers["retry-after"] == "2"
    assert error.response.headers["retry-after-ms"] == "2000"
    assert error.code == "rate_limit_exceeded"
    assert emu.batch_create_count == 0
    # The fault fired once; the next create goes through.
    client.batches.create(
        input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert emu.batch_create_count == 1


def test_sdk_retries_honour_the_fault_count(emu: OpenAIEmulator) -> None:
    emu.faults.http_error(method="GET", path="/v1/files", status=429, retry_after=0.01, count=2)
    with OpenAI(api_key="sk-test", base_url=emu.base_url, max_retries=2) as client:
        assert client.files.list().data == []
    with OpenAI(api_key="sk-test", base_url=emu.base_url, max_retries=0) as client:
        client.files.list()  # the fault is used up


@pytest.mark.parametrize(
    ("status", "error_type"),
    [
        (500, openai.InternalServerError),
        (502, openai.InternalServerError),
        (503, openai.InternalServerError),
    ],
)
def test_5xx_faults(
    client: OpenAI, emu: OpenAIEmulator, status: int, error_type: type[Exception]
) -> None:
    emu.faults.http_error(method="GET", path="/v1/batches/{id}", status=status)
    created = create_batch(client, [chat_line("a", "q")])
    with pytest.raises(error_type) as caught:
        client.batches.retrieve(created.id)
    assert caught.value.status_code == status  # type: ignore[attr-defined]
    assert client.batches.retrieve(created.id).status == "completed"


def test_path_patterns_do_not_overmatch(client: OpenAI, emu: OpenAIEmulator) -> None:
    emu.faults.http_error(method="POST", path="/v1/batches", status=500)
    created_file = upload(client, jsonl([chat_line("a", "q")]))
    client.files.retrieve(created_file.id)  # other paths are unaffected
    with pytest.raises(openai.InternalServerError):
        client.batches.create(
            input_file_id=created_file.id,
            endpoint="/v1/chat/completions",
            completion_window="24h",
        )


def test_wildcard_path_fault(client: OpenAI, emu: OpenAIEmulator) -> None:
    emu.faults.http_error(path="/v1/files*", status=503, count=2)
    with pytest.raises(openai.InternalServerError):
        upload(client, b"{}\n")
    with pytest.raises(openai.InternalServerError):
        client.files.list()
    assert client.files.list().data == []


def test_dropped_connection(client: OpenAI, emu: OpenAIEmulator) -> None:
    emu.faults.drop_connection(method="POST", path="/v1/files")
    with pytest.raises(openai.APIConnectionError):
        upload(client, jsonl([chat_line("a", "q")]))
    assert emu.files() == []
    upload(client, jsonl([chat_line("a", "q")]))
    assert len(emu.files()) == 1


@pytest.mark.parametrize("drop", [False, True])
def test_commit_then_fail_leaves_the_batch(client: OpenAI, emu: OpenAIEmulator, drop: bool) -> None:
    emu.faults.commit_then_fail(status=500, drop_connection=drop)
    file = upload(client, jsonl([chat_line("a", "q")]))
    expected = openai.APIConnectionError if drop else openai.InternalServerError
    with pytest.raises(expected):
        client.batches.create(
            input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
        )
    assert emu.batch_create_count == 1
    [listed] = client.batches.list().data
    assert listed.input_file_id == file.id
    assert listed.status == "completed"
    assert emu.custom_id_counts() == {"a": 1}


def test_line_faults_of_every_kind_chat(client: OpenAI, emu: OpenAIEmulator) -> None:
    kinds = ["error", "server_error", "invalid_json", "schema_mismatch", "refusal", "length"]
    for kind in kinds:
        emu.faults.line_fault(contains=f"<{kind}>", kind=kind)  # type: ignore[arg-type]
    lines = [chat_line(kind, f"please <{kind}>", response_format=CHAT_FORMAT) for kind in kinds]
    lines.append(chat_line("ok", "fine", response_format=CHAT_FORMAT))
    batch = run_batch(client, lines)
    assert batch.request_counts is not None
    assert (batch.request_counts.completed, batch.request_counts.failed) == (5, 2)
    outputs = by_custom_id(read_lines(client, batch.output_file_id))
    errors = by_custom_id(read_lines(client, batch.error_file_id))
    assert set(errors) == {"error", "server_error"}
    assert errors["error"]["response"]["status_code"] == 400
    assert errors["error"]["response"]["body"]["error"]["type"] == "invalid_request_error"
    assert errors["server_error"]["response"]["status_code"] == 500
    assert errors["server_error"]["error"] is None

    assert json.loads(message_text(outputs["ok"]) or "")["score"] >= 0
    with pytest.raises(ValueError):
        json.loads(message_text(outputs["invalid_json"]) or "")
    mismatch = json.loads(message_text(outputs["schema_mismatch"]) or "")
    assert not ("answer" in mismatch and isinstance(mismatch.get("score"), int))
    refusal = outputs["refusal"]["response"]["body"]["choices"][0]
    assert refusal["message"]["content"] is None
    assert refusal["message"]["refusal"] == "I'm sorry, I can't help with that."
    length = outputs["length"]["response"]["body"]["choices"][0]
    assert length["finish_reason"] == "length"
    with pytest.raises(ValueError):
        json.loads(length["message"]["content"])


def test_line_faults_responses_shapes(client: OpenAI, emu: OpenAIEmulator) -> None:
    emu.faults.line_fault(contains="<refuse>", kind="refusal")
    emu.faults.line_fault(contains="<cut>", kind="length")
    emu.faults.line_fault(contains="<bad>", kind="error", status_code=422, message="nope")
    lines = [
        responses_line("refuse", "x <refuse>"),
        responses_line("cut", "x <cut>"),
        responses_line("bad", "x <bad>"),
    ]
    batch = run_batch(client, lines, endpoint=RESPONSES)
    outputs = by_custom_id(read_lines(client, batch.output_file_id))
    refused = outputs["refuse"]["response"]["body"]["output"][0]["content"][0]
    assert refused == {"type": "refusal", "refusal": "I'm sorry, I can't help with that."}
    cut = outputs["cut"]["response"]["body"]
    assert cut["status"] == "incomplete"
    assert cut["incomplete_details"] == {"reason": "max_output_tokens"}
    [bad] = read_lines(client, batch.error_file_id)
    assert bad["response"]["status_code"] == 422
    assert bad["response"]["body"]["error"]["message"] == "nope"


def test_line_fault_times_counts_per_request_body(client: OpenAI, emu: OpenAIEmulator) -> None:
    rule = emu.faults.line_fault(contains="FLAKY", kind="server_error", times=1)
    first = run_batch(client, [chat_line("a-1", "FLAKY one"), chat_line("b-1", "FLAKY two")])
    assert first.request_counts is not None and first.request_counts.failed == 2
    # Retried under new custom_ids with the same bodies: the budget is spent.
    second = run_batch(client, [chat_line("a-2", "FLAKY one"), chat_line("c-1", "FLAKY three")])
    assert {x["custom_id"] for x in read_lines(client, second.error_file_id)} == {"c-1"}
    assert rule.fired == 3


def test_line_fault_budget_is_kept_when_a_batch_fails_validation(
    client: OpenAI, emu: OpenAIEmulator
) -> None:
    rule = emu.faults.line_fault(contains="FLAKY", kind="error", times=1)
    failed = run_batch(client, [chat_line("a", "FLAKY"), "{broken"])
    assert failed.status == "failed"
    batch = run_batch(client, [chat_line("a", "FLAKY")])
    assert batch.request_counts is not None and batch.request_counts.failed == 1
    assert rule.fired == 1


def test_fail_batch(client: OpenAI, emu: OpenAIEmulator) -> None:
    emu.faults.fail_batch(code="invalid_request", message="scripted", count=1)
    batch = run_batch(client, [chat_line("a", "q")])
    assert batch.status == "failed" and batch.failed_at is not None
    assert batch.output_file_id is None and batch.error_file_id is None
    assert batch.errors is not None and batch.errors.data is not None
    [error] = batch.errors.data
    assert (error.code, error.message, error.line, error.param) == (
        "invalid_request",
        "scripted",
        None,
        None,
    )
    assert run_batch(client, [chat_line("a", "q")]).status == "completed"


def test_expire_batch_partial_output(client: OpenAI, emu: OpenAIEmulator) -> None:
    emu.faults.expire_batch(completed_fraction=0.5)
    batch = run_batch(client, [chat_line(f"r{i}", f"q{i}") for i in range(10)])
    assert batch.status == "expired" and batch.expired_at is not None
    assert batch.request_counts is not None
    counts = batch.request_counts
    assert (counts.total, counts.completed, counts.failed) == (10, 5, 5)
    outputs = read_lines(client, batch.output_file_id)
    errors = read_lines(client, batch.error_file_id)
    assert len(outputs) == 5 and len(errors) == 5
    assert {x["custom_id"] for x in outputs + errors} == {f"r{i}" for i in range(10)}
    for line in errors:
        assert line["response"] is None
        assert line["error"] == {
            "code": "batch_expired",
            "message": "This request could not be executed before the completion window expired.",
        }


def test_expire_in_stepwise_mode(step_client: OpenAI, stepwise: OpenAIEmulator) -> None:
    stepwise.faults.expire_batch(completed_fraction=0.0)
    created = create_batch(step_client, [chat_line("a", "q"), chat_line("b", "q")])
    statuses = [step_client.batches.retrieve(created.id).status for _ in range(2)]
    assert statuses == ["in_progress", "expired"]
    batch = step_client.batches.retrieve(created.id)
    assert batch.output_file_id is None
    assert len(read_lines(step_client, batch.error_file_id)) == 2


def test_enqueued_token_limit_on_a_single_batch() -> None:
    with OpenAIEmulator(enqueued_token_limit=50) as emu, make_client(emu) as client:
        batch = run_batch(client, [chat_line(f"r{i}", "q" * 100) for i in range(3)])
    assert batch.status == "failed"
    assert batch.errors is not None and batch.errors.data is not None
    assert batch.errors.data[0].code == "token_limit_exceeded"
    assert "gpt-4o-mini" in (batch.errors.data[0].message or "")


def test_enqueued_token_limit_counts_in_flight_batches() -> None:
    line = chat_line("r", "q" * 200)
    one_batch_tokens = len(jsonl([line])) // 4
    emulator = OpenAIEmulator(enqueued_token_limit=one_batch_tokens + 10)
    with emulator as emu, make_client(emu) as client:
        emu.faults.hold_batches(True)
        first = run_batch(client, [line])
        assert first.status == "in_progress"
        second = run_batch(client, [line])
        assert second.status == "failed"
        assert second.errors is not None and second.errors.data is not None
        assert second.errors.data[0].code == "token_limit_exceeded"
        emu.release_batches()
        assert client.batches.retrieve(first.id).status == "completed"
        assert run_batch(client, [line]).status == "completed"


def test_fault_plan_rejects_bad_scripts(emu: OpenAIEmulator) -> None:
    with pytest.raises(ValueError):
        emu.faults.line_fault(contains="x", kind="explode")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        emu.faults.http_error(count=0)
    with pytest.raises(ValueError):
        emu.faults.expire_batch(completed_fraction=1.5)


def test_clear_forgets_pending_faults(client: OpenAI, emu: OpenAIEmulator) -> None:
    emu.faults.http_error(status=500, count=5)
    emu.faults.fail_batch()
    emu.faults.clear()
    assert run_batch(client, [chat_line("a", "q")]).status == "completed"
