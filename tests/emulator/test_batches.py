"""Batches API through the real SDK: create, retrieve, list, cancel, stepwise progression."""

from __future__ import annotations

import openai
import pytest
from openai import OpenAI

from batchor_core.testing import OpenAIEmulator

from .conftest import make_client
from .helpers import (
    CHAT,
    by_custom_id,
    chat_line,
    create_batch,
    jsonl,
    message_text,
    raw_request,
    read_lines,
    run_batch,
    upload,
)

pytestmark = pytest.mark.integration


def test_create_returns_validating_then_completed(client: OpenAI, emu: OpenAIEmulator) -> None:
    file = upload(client, jsonl([chat_line(f"r{i}", f"question {i}") for i in range(4)]))
    created = client.batches.create(
        input_file_id=file.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"run": "r-1"},
    )
    assert created.status == "validating"
    assert created.id.startswith("batch_")
    assert created.metadata == {"run": "r-1"}
    assert created.expires_at == created.created_at + 24 * 3600
    assert emu.batch_create_count == 1

    batch = client.batches.retrieve(created.id)
    assert batch.status == "completed"
    assert batch.model == "gpt-4o-mini"
    assert batch.request_counts is not None
    assert (batch.request_counts.total, batch.request_counts.completed) == (4, 4)
    assert batch.request_counts.failed == 0
    assert batch.error_file_id is None
    assert batch.output_file_id is not None
    assert batch.completed_at is not None and batch.in_progress_at is not None
    assert batch.created_at <= batch.in_progress_at <= batch.completed_at
    assert batch.failed_at is None and batch.cancelled_at is None
    assert batch.usage is not None and batch.usage.input_tokens > 0

    output = client.files.retrieve(batch.output_file_id)
    assert output.purpose == "batch_output"
    lines = by_custom_id(read_lines(client, batch.output_file_id))
    assert set(lines) == {"r0", "r1", "r2", "r3"}
    assert message_text(lines["r2"]) == "Echo: question 2"
    assert emu.custom_id_counts() == {"r0": 1, "r1": 1, "r2": 1, "r3": 1}
    assert emu.request_bodies_seen() == 4


def test_output_order_differs_from_input_and_is_deterministic() -> None:
    lines = [chat_line(f"r{i:02d}", f"q{i}") for i in range(12)]
    orders = []
    for _ in range(2):
        with OpenAIEmulator(seed=3) as emu, make_client(emu) as client:
            batch = run_batch(client, lines)
            orders.append([x["custom_id"] for x in read_lines(client, batch.output_file_id)])
    assert orders[0] == orders[1]
    assert sorted(orders[0]) == [x["custom_id"] for x in lines]
    assert orders[0] != [x["custom_id"] for x in lines]


def test_two_lines_are_never_left_in_order(client: OpenAI) -> None:
    batch = run_batch(client, [chat_line("first", "a"), chat_line("second", "b")])
    order = [x["custom_id"] for x in read_lines(client, batch.output_file_id)]
    assert order == ["second", "first"]


def test_list_paginates_newest_first(client: OpenAI) -> None:
    file = upload(client, jsonl([chat_line("x", "y")]))
    ids = [
        client.batches.create(
            input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
        ).id
        for _ in range(5)
    ]
    newest_first = ids[::-1]
    page = client.batches.list(limit=2)
    assert [b.id for b in page.data] == newest_first[:2]
    assert page.has_more is True
    second = page.get_next_page()
    assert [b.id for b in second.data] == newest_first[2:4]
    assert [b.id for b in client.batches.list(limit=2)] == newest_first  # auto-pagination
    last = client.batches.list(limit=2, after=newest_first[3])
    assert [b.id for b in last.data] == newest_first[4:]
    assert last.has_more is False
    assert all(b.status == "completed" for b in client.batches.list(limit=100).data)


def test_list_limit_is_validated(emu: OpenAIEmulator) -> None:
    status, _, body = raw_request(emu, "GET", "/v1/batches?limit=101")
    assert status == 400
    assert body["error"]["param"] == "limit"
    status, _, body = raw_request(emu, "GET", "/v1/batches")
    assert (status, body["data"], body["has_more"]) == (200, [], False)


def test_stepwise_progression(step_client: OpenAI, stepwise: OpenAIEmulator) -> None:
    created = create_batch(step_client, [chat_line(f"r{i}", "q") for i in range(4)])
    seen = [step_client.batches.retrieve(created.id) for _ in range(4)]
    assert [b.status for b in seen] == ["in_progress", "finalizing", "completed", "completed"]
    in_progress = seen[0]
    assert in_progress.in_progress_at is not None and in_progress.finalizing_at is None
    assert in_progress.request_counts is not None
    assert in_progress.request_counts.total == 4
    assert seen[1].finalizing_at is not None and seen[1].output_file_id is None
    assert seen[2].output_file_id is not None and seen[2].completed_at is not None
    # Listing does not advance stepwise batches.
    other = create_batch(step_client, [chat_line("z", "q")])
    assert step_client.batches.list().data[0].status == "validating"
    assert step_client.batches.retrieve(other.id).status == "in_progress"


def test_stepwise_in_progress_polls() -> None:
    emulator = OpenAIEmulator(processing="stepwise", in_progress_polls=3)
    with emulator as emu, make_client(emu) as client:
        created = create_batch(client, [chat_line("a", "q")])
        statuses = [client.batches.retrieve(created.id).status for _ in range(5)]
    assert statuses == ["in_progress"] * 3 + ["finalizing", "completed"]


def test_cancel_completed_batch_is_rejected(client: OpenAI) -> None:
    created = create_batch(client, [chat_line("a", "q")])
    with pytest.raises(openai.BadRequestError):
        client.batches.cancel(created.id)


def test_cancel_held_batch_keeps_partial_results(client: OpenAI, emu: OpenAIEmulator) -> None:
    emu.faults.hold_batches(True, completed_fraction=0.5)
    created = create_batch(client, [chat_line(f"r{i}", f"q{i}") for i in range(10)])
    held = client.batches.retrieve(created.id)
    assert held.status == "in_progress"
    assert held.request_counts is not None and held.request_counts.completed == 5
    cancelling = client.batches.cancel(created.id)
    assert cancelling.status == "cancelling" and cancelling.cancelling_at is not None
    done = client.batches.retrieve(created.id)
    assert done.status == "cancelled" and done.cancelled_at is not None
    assert done.request_counts is not None
    assert (done.request_counts.total, done.request_counts.completed) == (10, 5)
    assert len(read_lines(client, done.output_file_id)) == 5
    assert done.error_file_id is None


def test_release_lets_held_batches_finish(client: OpenAI, emu: OpenAIEmulator) -> None:
    emu.faults.hold_batches(True)
    created = create_batch(client, [chat_line("a", "q"), chat_line("b", "q")])
    assert client.batches.retrieve(created.id).status == "in_progress"
    assert client.batches.retrieve(created.id).status == "in_progress"
    emu.release_batches()
    batch = client.batches.retrieve(created.id)
    assert batch.status == "completed"
    assert len(read_lines(client, batch.output_file_id)) == 2


def test_stepwise_cancel_mid_flight(step_client: OpenAI) -> None:
    created = create_batch(step_client, [chat_line(f"r{i}", "q") for i in range(8)])
    assert step_client.batches.retrieve(created.id).status == "in_progress"
    assert step_client.batches.cancel(created.id).status == "cancelling"
    assert step_client.batches.cancel(created.id).status == "cancelling"  # idempotent
    done = step_client.batches.retrieve(created.id)
    assert done.status == "cancelled"
    assert done.request_counts is not None and done.request_counts.completed == 4
    with pytest.raises(openai.BadRequestError):
        step_client.batches.cancel(created.id)
    assert len(read_lines(step_client, done.output_file_id)) == 4


def test_cancel_while_validating(step_client: OpenAI, stepwise: OpenAIEmulator) -> None:
    created = create_batch(step_client, [chat_line("a", "q")])
    assert step_client.batches.cancel(created.id).status == "cancelling"
    done = step_client.batches.retrieve(created.id)
    assert done.status == "cancelled" and done.output_file_id is None
    assert stepwise.custom_id_counts() == {"a": 1}


def test_deleting_the_input_file_does_not_break_the_batch(client: OpenAI) -> None:
    file = upload(client, jsonl([chat_line("a", "q")]))
    created = client.batches.create(
        input_file_id=file.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    client.files.delete(file.id)
    assert client.batches.retrieve(created.id).status == "completed"


@pytest.mark.parametrize(
    ("overrides", "param"),
    [
        ({"endpoint": "/v1/nope"}, "endpoint"),
        ({"endpoint": "/v1/embeddings"}, "endpoint"),
        ({"completion_window": "48h"}, "completion_window"),
        ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
        ({"metadata": {"k" * 65: "v"}}, "metadata"),
        ({"metadata": {"k": "v" * 513}}, "metadata"),
        ({"metadata": {"k": 1}}, "metadata"),
        ({"input_file_id": None}, "input_file_id"),
    ],
)
def test_create_rejects_bad_parameters(
    client: OpenAI, emu: OpenAIEmulator, overrides: dict[str, object], param: str
) -> None:
    file = upload(client, jsonl([chat_line("a", "q")]))
    body: dict[str, object] = {
        "input_file_id": file.id,
        "endpoint": CHAT,
        "completion_window": "24h",
        **overrides,
    }
    status, _, error = raw_request(emu, "POST", "/v1/batches", body=body)
    assert status == 400
    assert error["error"]["param"] == param
    assert emu.batch_create_count == 0


def test_create_with_unknown_file_is_404(client: OpenAI, emu: OpenAIEmulator) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.batches.create(
            input_file_id="file-missing", endpoint="/v1/chat/completions", completion_window="24h"
        )
    assert "file-missing" in caught.value.message
    assert emu.batch_create_count == 0


def test_unknown_ids_and_paths_are_404(client: OpenAI, emu: OpenAIEmulator) -> None:
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_nope")
    with pytest.raises(openai.NotFoundError):
        client.batches.cancel("batch_nope")
    status, _, body = raw_request(emu, "GET", "/v1/unknown/thing")
    assert status == 404
    assert body == {
        "error": {
            "message": "Invalid URL (GET /v1/unknown/thing)",
            "type": "invalid_request_error",
            "param": None,
            "code": None,
        }
    }
    status, _, _ = raw_request(emu, "DELETE", "/v1/batches")
    assert status == 404


def test_emulator_inspection_does_not_step_stepwise_batches(
    step_client: OpenAI, stepwise: OpenAIEmulator
) -> None:
    created = create_batch(step_client, [chat_line("a", "q")])
    assert [b["status"] for b in stepwise.batches()] == ["validating"]
    assert stepwise.batch(created.id)["status"] == "validating"
    assert step_client.batches.retrieve(created.id).status == "in_progress"


def test_concurrent_clients(client: OpenAI, emu: OpenAIEmulator) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def one(worker: int) -> str:
        batch = run_batch(client, [chat_line(f"w{worker}-{i}", f"q{i}") for i in range(20)])
        assert len(read_lines(client, batch.output_file_id)) == 20
        return batch.status

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = list(pool.map(one, range(16)))
    assert statuses == ["completed"] * 16
    assert emu.batch_create_count == 16
    assert emu.request_bodies_seen() == 320
    assert len(emu.custom_id_counts()) == 320
