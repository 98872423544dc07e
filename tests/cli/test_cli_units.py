"""The CLI's pieces without processes or sockets: request builder, progress, exit codes."""

from __future__ import annotations

import ast
import io
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from rich.console import Console

import batchor_core
from batchor_core import BatchItem, BatchJob, RunStatus, RunSummary, Usage
from batchor_core.cli.builder import PromptRequest
from batchor_core.cli.errors import ExitCode
from batchor_core.cli.render import WaitProgress, human_seconds, progress_line
from batchor_core.cli.run_commands import exit_code_of
from batchor_core.errors import ConfigurationError
from batchor_core.jobspec import job_spec
from batchor_core.testing import FakeBatchProvider

CHAT = "/v1/chat/completions"


def _fingerprint(builder: PromptRequest) -> str:
    job = BatchJob(model="m", endpoint=builder.endpoint, build_request=builder)
    return job_spec(job, FakeBatchProvider())[1]


def test_the_builder_is_identified_by_its_flags_not_by_the_instance() -> None:
    # Two processes build two instances from the same flags: the same run must match.
    a = PromptRequest(endpoint=CHAT, template="Classify: {text}", system_prompt="Be brief.")
    b = PromptRequest(endpoint=CHAT, template="Classify: {text}", system_prompt="Be brief.")
    assert _fingerprint(a) == _fingerprint(b)
    others = [
        PromptRequest(endpoint=CHAT, template="Classify: {text}"),
        PromptRequest(endpoint=CHAT, template="Judge: {text}", system_prompt="Be brief."),
        PromptRequest(endpoint=CHAT, field="text", system_prompt="Be brief."),
    ]
    assert len({_fingerprint(a), *(_fingerprint(o) for o in others)}) == 4


def test_request_bodies_for_both_endpoints() -> None:
    item = BatchItem("1", {"text": "nice", "n": 3, "tags": ["a"]})
    chat = PromptRequest(endpoint=CHAT, template="{text} ({n})", system_prompt="sys")
    assert chat(item) == {
        "messages": [
            {"role": "system", "content": "sys"},
            {"role": "user", "content": "nice (3)"},
        ]
    }
    responses = PromptRequest(endpoint="/v1/responses", field="tags", system_prompt="sys")
    assert responses(item) == {"input": '["a"]', "instructions": "sys"}
    assert PromptRequest(endpoint=CHAT, field="text")(item) == {
        "messages": [{"role": "user", "content": "nice"}]
    }


@pytest.mark.parametrize(
    ("template", "message"),
    [("no fields", "uses no column"), ("{}", "named after columns"), ("{0}", "named after"),
     ("{text", "not a valid template")],
)  # fmt: skip
def test_bad_templates_are_refused(template: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        PromptRequest(endpoint=CHAT, template=template)


def test_template_fields_are_the_columns_read() -> None:
    builder = PromptRequest(endpoint=CHAT, template="{title}: {body} {title} {meta[x]}")
    assert builder.fields == ["title", "body", "meta"]


def _summary(**changes: object) -> RunSummary:
    now = datetime(2026, 11, 30, tzinfo=UTC)
    base = RunSummary(
        run_id="r", status=RunStatus.RUNNING, status_reason=None, total_items=100,
        pending_items=100, completed_items=0, failed_items=0, cancelled_items=0,
        in_flight_items=100, batches_total=2, batches_in_flight=2, ingest_complete=True,
        usage=Usage(), created_at=now, updated_at=now,
    )  # fmt: skip
    return replace(base, **changes)  # type: ignore[arg-type]


def test_progress_lines_only_when_something_changes() -> None:
    out = io.StringIO()
    ticks = iter([0.0, 0.0, 10.0, 20.0])
    progress = WaitProgress(out, live=False, monotonic=lambda: next(ticks))
    progress.update(_summary())
    progress.update(_summary())  # nothing new: no line
    progress.update(_summary(completed_items=40, failed_items=10, pending_items=50,
                             batches_in_flight=1))  # fmt: skip
    progress.update(_summary(status=RunStatus.COMPLETED, completed_items=90, failed_items=10,
                             pending_items=0, batches_in_flight=0))  # fmt: skip
    assert out.getvalue().splitlines() == [
        "[    0s] r running: 0/100 done (0 completed, 0 failed, 0 cancelled), 100 pending, "
        "2 batches in flight",
        "[   10s] r running: 50/100 done (40 completed, 10 failed, 0 cancelled), 50 pending, "
        "1 batch in flight, ETA 10s",
        "[   20s] r completed: 100/100 done (90 completed, 10 failed, 0 cancelled), 0 pending, "
        "0 batches in flight, ETA 0s",
    ]


def test_progress_line_names_the_pause_reason_and_an_unfinished_ingest() -> None:
    line = progress_line(
        _summary(status=RunStatus.PAUSED, status_reason="insufficient_quota",
                 ingest_complete=False),
        elapsed=3725, eta=None,
    )  # fmt: skip
    assert line.startswith("[ 1h02m] r paused (insufficient_quota): 0/100 done")
    assert line.endswith("2 batches in flight, still reading input")


def test_live_panel_renders_counts_batches_elapsed_and_eta() -> None:
    ticks = iter([0.0, 5.0, 5.0])
    progress = WaitProgress(io.StringIO(), live=False, monotonic=lambda: next(ticks))
    progress.update(_summary(completed_items=0))
    progress._summary = _summary(completed_items=25, pending_items=75, batches_in_flight=1)
    out = io.StringIO()
    Console(file=out, width=100, color_system=None).print(progress)
    text = out.getvalue()
    for part in ("r", "running", "25/100 done", "25 completed", "75 pending",
                 "batches in flight", "1", "5s / 15s"):  # fmt: skip
        assert part in text, text


@pytest.mark.parametrize(
    ("changes", "code"),
    [({"status": RunStatus.COMPLETED, "pending_items": 0}, ExitCode.OK),
     ({"status": RunStatus.COMPLETED, "failed_items": 2}, ExitCode.ITEMS_FAILED),
     ({"status": RunStatus.CANCELLED}, ExitCode.CANCELLED),
     ({"status": RunStatus.PAUSED}, ExitCode.PAUSED)],
)  # fmt: skip
def test_exit_code_of_a_run(changes: dict[str, object], code: ExitCode) -> None:
    assert exit_code_of(_summary(**changes)) is code


def test_human_seconds() -> None:
    assert [human_seconds(s) for s in (0, 59.6, 61, 3600 * 5 + 60, 86400 * 2 + 7200)] == [
        "0s", "1m00s", "1m01s", "5h01m", "2d02h",
    ]  # fmt: skip


def test_live_mode_draws_and_stops_cleanly() -> None:
    out = io.StringIO()
    with WaitProgress(out, live=True) as progress:
        progress.update(_summary())
        progress.update(_summary(status=RunStatus.COMPLETED, completed_items=100, pending_items=0))
    assert "100/100 done" in out.getvalue()


def _module_imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_the_cli_sits_on_top_and_keeps_typer_and_rich_to_itself() -> None:
    package = Path(batchor_core.__file__).parent
    for path in package.rglob("*.py"):
        rel = path.relative_to(package)
        if rel.parts[0] == "cli":
            continue
        imports = _module_imports(path)  # lazy imports too: the core never reaches up
        assert not any(i.startswith("batchor_core.cli") for i in imports), rel
        assert not any(i.split(".")[0] in {"typer", "rich"} for i in imports), rel
