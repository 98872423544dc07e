"""``batchor emulator``: serve the bundled OpenAI Files + Batches emulator for offline trials.

The fault flags script the emulator's :class:`~batchor_core.testing.FaultPlan`; each one
affects the next N matching requests or batches (the plan counts, it has no periods).
"""

from __future__ import annotations

import signal
import threading
from enum import StrEnum
from types import FrameType
from typing import Annotated

import typer

from batchor_core.cli.errors import CliError, ExitCode

__all__ = ["Processing", "emulator", "parse_line_fault"]


class Processing(StrEnum):
    """``--processing`` values."""

    instant = "instant"
    stepwise = "stepwise"


def emulator(
    port: Annotated[int, typer.Option("--port", help="Port to bind (0: any free port).")] = 8089,
    host: Annotated[str, typer.Option("--host", help="Interface to bind.")] = "127.0.0.1",
    processing: Annotated[
        Processing,
        typer.Option(
            "--processing",
            help="instant: a batch is done when first read; stepwise: one status per poll.",
        ),
    ] = Processing.instant,
    in_progress_polls: Annotated[
        int,
        typer.Option(
            "--in-progress-polls",
            min=1,
            help="With --processing stepwise: polls a batch stays in_progress.",
        ),
    ] = 1,
    seed: Annotated[int, typer.Option("--seed", help="Seed for ids and answers.")] = 0,
    data_dir: Annotated[
        str | None,
        typer.Option(
            "--data-dir", help="Keep file bytes here [default: a temp dir].", show_default=False
        ),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key", help="Require this key [default: accept any].", show_default=False
        ),
    ] = None,
    fail_batches: Annotated[
        int, typer.Option("--fail-batches", min=0, help="The next N batches end 'failed'.")
    ] = 0,
    expire_batches: Annotated[
        int, typer.Option("--expire-batches", min=0, help="The next N batches end 'expired'.")
    ] = 0,
    http_429: Annotated[
        int,
        typer.Option("--http-429", min=0, help="Answer the next N requests 429 (Retry-After 1s)."),
    ] = 0,
    http_500: Annotated[
        int, typer.Option("--http-500", min=0, help="Answer the next N requests 500.")
    ] = 0,
    drop_connections: Annotated[
        int, typer.Option("--drop-connections", min=0, help="Drop the next N connections.")
    ] = 0,
    commit_then_fail: Annotated[
        int,
        typer.Option("--commit-then-fail", min=0, help="Create the next N batches but answer 500."),
    ] = 0,
    line_fault: Annotated[
        list[str] | None,
        typer.Option(
            "--line-fault",
            help="KIND:TEXT: lines containing TEXT get KIND (error, server_error, "
            "invalid_json, schema_mismatch, refusal, length). Repeatable.",
            show_default=False,
        ),
    ] = None,
    enqueued_token_limit: Annotated[
        int | None,
        typer.Option(
            "--enqueued-token-limit",
            help="Fail batches past this many enqueued tokens per model.",
            show_default=False,
        ),
    ] = None,
) -> int:
    """Serve an emulated OpenAI Batch API on 127.0.0.1 until Ctrl-C, for offline trials."""
    from batchor_core.testing import OpenAIEmulator

    rules = [parse_line_fault(spec) for spec in line_fault or []]
    emu = OpenAIEmulator(
        host=host,
        port=port,
        processing=processing.value,
        in_progress_polls=in_progress_polls,
        seed=seed,
        data_dir=data_dir,
        api_key=api_key,
        enqueued_token_limit=enqueued_token_limit,
    )
    plan = emu.faults
    if fail_batches:
        plan.fail_batch(count=fail_batches)
    if expire_batches:
        plan.expire_batch(count=expire_batches)
    if http_429:
        plan.http_error(status=429, count=http_429)
    if http_500:
        plan.http_error(status=500, count=http_500)
    if drop_connections:
        plan.drop_connection(count=drop_connections)
    if commit_then_fail:
        plan.commit_then_fail(count=commit_then_fail)
    for kind, text in rules:
        plan.line_fault(contains=text, kind=kind)  # type: ignore[arg-type]
    stop = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    try:
        emu.start()
    except OSError as exc:
        message = f"cannot listen on {host}:{port}: {exc.strerror}"
        raise CliError(message, ExitCode.UNAVAILABLE) from exc
    try:
        print(f"batchor emulator listening on {emu.base_url}")
        print(f"export OPENAI_BASE_URL={emu.base_url}")
        print(f"export OPENAI_API_KEY={api_key or 'sk-emulator'}", flush=True)
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        emu.stop()
    return ExitCode.OK


def parse_line_fault(spec: str) -> tuple[str, str]:
    """``KIND:TEXT`` as ``(kind, text)``."""
    from batchor_core.testing.emulator.faults import LINE_FAULT_KINDS

    kind, sep, text = spec.partition(":")
    if not sep or not text or kind not in LINE_FAULT_KINDS:
        raise CliError(
            f"--line-fault takes KIND:TEXT with KIND one of {', '.join(sorted(LINE_FAULT_KINDS))}, "
            f"not {spec!r}",
            ExitCode.USAGE,
        )
    return kind, text
