"""Line rendering and the streaming pass (pure, no sockets)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from openai.types.chat import ChatCompletion
from openai.types.responses import Response

from batchor_core.testing.emulator.bodies import LineRenderer
from batchor_core.testing.emulator.faults import FaultPlan
from batchor_core.testing.emulator.processing import WINDOW, Execution, scan

from .helpers import CHAT, RESPONSES, chat_line, jsonl, responses_line

TRICKY = 'quote " backslash \\ percent %(ids)s %d unicode é ✓ newline \n end'


def test_chat_line_rendering_escapes_everything() -> None:
    renderer = LineRenderer(CHAT, seed=0, batch_seed=5, created=1_700_000_000)
    body = chat_line("x", TRICKY, model="gpt-%s")["body"]
    is_error, line, prompt_tokens, completion_tokens = renderer.render(
        TRICKY, renderer.prepare(body, "gpt-%s")
    )
    assert not is_error
    decoded = json.loads(line)
    assert decoded["custom_id"] == TRICKY
    assert decoded["error"] is None
    completion = ChatCompletion.model_validate(decoded["response"]["body"])
    assert completion.model == "gpt-%s"
    assert completion.created == 1_700_000_000
    assert completion.choices[0].message.content == "Echo: " + TRICKY
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (
        prompt_tokens,
        completion_tokens,
    )


def test_responses_line_rendering_keeps_instructions() -> None:
    renderer = LineRenderer(RESPONSES, seed=0, batch_seed=5, created=1)
    body = {**responses_line("x", TRICKY)["body"], "instructions": "be %(brief)s"}
    _, line, _, _ = renderer.render("x", renderer.prepare(body, "gpt-4o-mini"))
    response = Response.model_validate(json.loads(line)["response"]["body"])
    assert response.instructions == "be %(brief)s"
    assert response.output_text == "Echo: " + TRICKY


def test_line_ids_are_unique_and_distinct_per_batch() -> None:
    ids: set[str] = set()
    for batch_seed in (1, 2):
        renderer = LineRenderer(CHAT, seed=0, batch_seed=batch_seed, created=1)
        prepared = renderer.prepare(chat_line("x", "q")["body"], "m")
        for _ in range(50):
            decoded = json.loads(renderer.render("x", prepared)[1])
            ids.update((decoded["id"], decoded["response"]["request_id"]))
    assert len(ids) == 200


def _execute(tmp_path: Path, lines: list[dict[str, Any]], fraction: float, expire: bool) -> Any:
    source = tmp_path / "in.jsonl"
    source.write_bytes(jsonl(lines))
    execution = Execution(
        renderer=LineRenderer(CHAT, seed=0, batch_seed=9, created=1),
        faults=FaultPlan().line_session(),
        output_path=tmp_path / "out.jsonl",
        error_path=tmp_path / "err.jsonl",
        done_fraction=fraction,
        expire_unfinished=expire,
        shuffle_seed=4,
    )
    return scan(source, endpoint=CHAT, max_requests=10**6, execution=execution, count_ids=True)


def test_scan_spans_windows_and_spreads_done_requests(tmp_path: Path) -> None:
    count = WINDOW * 2 + 17
    lines = [chat_line(f"r{i}", f"q{i}") for i in range(count)]
    result = _execute(tmp_path, lines, 0.3, expire=True)
    assert result.errors == []
    assert (result.total, result.completed, result.failed) == (
        count,
        int(count * 0.3),
        count - int(count * 0.3),
    )
    output = [json.loads(x)["custom_id"] for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    errors = [json.loads(x) for x in (tmp_path / "err.jsonl").read_text().splitlines()]
    assert len(output) == result.completed and len(errors) == result.failed
    assert {e["error"]["code"] for e in errors} == {"batch_expired"}
    assert sorted(output + [e["custom_id"] for e in errors]) == sorted(
        f"r{i}" for i in range(count)
    )
    # Done requests are spread over the file, not just its head.
    assert max(int(cid[1:]) for cid in output) > count * 0.9
    assert sum(result.custom_ids.values()) == count


def test_scan_cancelled_drops_unfinished(tmp_path: Path) -> None:
    lines = [chat_line(f"r{i}", "q") for i in range(10)]
    result = _execute(tmp_path, lines, 0.0, expire=False)
    assert (result.completed, result.failed, result.output_lines, result.error_lines) == (
        0,
        0,
        0,
        0,
    )
    assert not (tmp_path / "out.jsonl").exists() and not (tmp_path / "err.jsonl").exists()
