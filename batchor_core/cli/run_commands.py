"""``batchor start`` and ``batchor wait``: start or resume a run from a file, and follow it."""

from __future__ import annotations

import sys
from enum import StrEnum
from typing import Annotated

import typer

from batchor_core.cli.builder import PromptRequest
from batchor_core.cli.config import load_output_model, open_runner, open_source
from batchor_core.cli.errors import CliError, ExitCode
from batchor_core.cli.options import (
    ArtifactsOpt,
    BaseUrlOpt,
    JsonOpt,
    RunIdArg,
    StoreOpt,
    settings,
)
from batchor_core.cli.render import WaitProgress, dump_json, summary_dict
from batchor_core.models import BatchJob, Endpoint, EnqueueLimit, RunStatus, RunSummary
from batchor_core.run import Run

__all__ = ["EndpointChoice", "exit_code_of", "follow", "start", "wait"]


class EndpointChoice(StrEnum):
    """``--endpoint`` values."""

    chat = "chat"
    responses = "responses"


_ENDPOINTS = {
    EndpointChoice.chat: Endpoint.CHAT_COMPLETIONS.value,
    EndpointChoice.responses: Endpoint.RESPONSES.value,
}

PollOpt = Annotated[
    float,
    typer.Option("--poll-interval", min=0.0, help="Seconds between polls while nothing changes."),
]
TimeoutOpt = Annotated[
    float | None,
    typer.Option(
        "--timeout",
        min=0.0,
        help="Give up waiting after this many seconds (exit 10; the run goes on).",
        show_default=False,
    ),
]


def start(
    input_path: Annotated[
        str, typer.Argument(metavar="INPUT", help="A .csv, .jsonl or .parquet file.")
    ],
    model: Annotated[str, typer.Option("--model", help="Model name, e.g. gpt-4o-mini.")],
    id_column: Annotated[
        str, typer.Option("--id-column", help="Column (or JSONL field) holding each item's id.")
    ] = "id",
    prompt_template: Annotated[
        str | None,
        typer.Option(
            "--prompt-template",
            help="User message as a template over the row, e.g. 'Classify: {text}'.",
            show_default=False,
        ),
    ] = None,
    prompt_field: Annotated[
        str | None,
        typer.Option(
            "--prompt-field", help="Column whose value is the user message.", show_default=False
        ),
    ] = None,
    endpoint: Annotated[
        EndpointChoice, typer.Option("--endpoint", help="Chat Completions or Responses API.")
    ] = EndpointChoice.chat,
    system_prompt: Annotated[
        str | None,
        typer.Option(
            "--system-prompt", help="A system message for every request.", show_default=False
        ),
    ] = None,
    output_model: Annotated[
        str | None,
        typer.Option(
            "--output-model",
            help="module:Class of a pydantic model the output must match (structured output).",
            show_default=False,
        ),
    ] = None,
    run_id: Annotated[
        str | None,
        typer.Option(
            "--run-id",
            help="Durable id; the same id with the same flags and file resumes the run.",
            show_default=False,
        ),
    ] = None,
    max_cost_usd: Annotated[
        float | None,
        typer.Option(
            "--max-cost-usd",
            help="Pause the run before a batch would take its cost above this (USD).",
            show_default=False,
        ),
    ] = None,
    enqueue_limit: Annotated[
        int | None,
        typer.Option(
            "--enqueue-limit",
            help="Enqueued-token limit of the model: batches in flight over every run in "
            "the store stay within it.",
            show_default=False,
        ),
    ] = None,
    follow_run: Annotated[
        bool, typer.Option("--wait", help="Follow the run until it finishes (like batchor wait).")
    ] = False,
    poll_interval: PollOpt = 30.0,
    timeout: TimeoutOpt = None,
    json_out: JsonOpt = False,
    store: StoreOpt = None,
    artifacts: ArtifactsOpt = None,
    base_url: BaseUrlOpt = None,
) -> int:
    """Start a run from a file (or resume the run with this id), submit, and return."""
    builder = PromptRequest(
        endpoint=_ENDPOINTS[endpoint],
        template=prompt_template,
        field=prompt_field,
        system_prompt=system_prompt,
    )
    try:
        job = BatchJob(
            model=model,
            endpoint=builder.endpoint,
            build_request=builder,
            output_model=load_output_model(output_model) if output_model else None,
            max_cost_usd=max_cost_usd,
            enqueue_limit=None if enqueue_limit is None else EnqueueLimit(tokens=enqueue_limit),
        )
    except ValueError as exc:  # BatchJob's own argument checks
        raise CliError(str(exc), ExitCode.USAGE) from exc
    # A missing key or a bad base URL fails before a store or artifact directory is made.
    from batchor_core.providers.openai import OpenAIProviderConfig

    config = OpenAIProviderConfig(base_url=base_url)
    config.resolved_api_key()
    config.resolved_base_url()
    source = open_source(input_path, id_column=id_column, fields=builder.fields)
    with open_runner(settings(store, artifacts, base_url), must_exist=False) as runner:
        run = runner.start(job, items=source, run_id=run_id)
        if follow_run:
            return follow(run, poll_interval=poll_interval, timeout=timeout, json_out=json_out)
        summary = run.summary()
        if json_out:
            dump_json(summary_dict(summary), sys.stdout)
        else:
            print(
                f"run {summary.run_id} {summary.status.value}: {summary.total_items} items "
                f"({summary.pending_items} pending) in {summary.batches_total} batches, "
                f"{summary.batches_in_flight} in flight"
            )
            if not summary.is_finished:
                print(f"follow it with: batchor wait {summary.run_id}")
        return ExitCode.OK


def wait(
    run_id: RunIdArg,
    poll_interval: PollOpt = 30.0,
    timeout: TimeoutOpt = None,
    json_out: JsonOpt = False,
    store: StoreOpt = None,
    artifacts: ArtifactsOpt = None,
    base_url: BaseUrlOpt = None,
) -> int:
    """Advance a run until it finishes, showing its progress.

    Exits 0 when every item completed, 7 when some failed, 8 when the run was cancelled,
    9 when it is paused, 10 on --timeout.
    """
    with open_runner(settings(store, artifacts, base_url)) as runner:
        run = runner.get_run(run_id)
        return follow(run, poll_interval=poll_interval, timeout=timeout, json_out=json_out)


def follow(run: Run, *, poll_interval: float, timeout: float | None, json_out: bool) -> int:
    """Wait for ``run`` with a progress display (none with ``json_out``); the exit code."""
    if json_out:
        summary = run.wait(timeout=timeout, poll_interval=poll_interval)
        dump_json(summary_dict(summary), sys.stdout)
    else:
        with WaitProgress(sys.stdout, live=sys.stdout.isatty()) as progress:
            progress.update(run.summary())
            summary = run.wait(
                timeout=timeout, poll_interval=poll_interval, on_progress=progress.update
            )
            progress.update(summary)
    code = exit_code_of(summary)
    if code is not ExitCode.OK:  # scripts see the code; people see why on stderr
        reason = f": {summary.status_reason}" if summary.status_reason else ""
        detail = (
            f"completed with {summary.failed_items} failed "
            f"{'item' if summary.failed_items == 1 else 'items'} "
            f"(see: batchor results {summary.run_id} --failed-only)"
            if code is ExitCode.ITEMS_FAILED
            else f"is {summary.status.value}{reason}"
        )
        print(f"batchor: run {summary.run_id} {detail}", file=sys.stderr, flush=True)
    return code


def exit_code_of(summary: RunSummary) -> ExitCode:
    """How a run that stopped being waited on ends the command."""
    if summary.status is RunStatus.CANCELLED:
        return ExitCode.CANCELLED
    if summary.status is RunStatus.PAUSED:
        return ExitCode.PAUSED
    if summary.failed_items:
        return ExitCode.ITEMS_FAILED
    return ExitCode.OK
