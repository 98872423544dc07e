"""Read commands: ``status``, ``list``, ``results`` and ``item``. None of them advances a run."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from batchor_core.cli.config import open_runner
from batchor_core.cli.errors import CliError, ExitCode
from batchor_core.cli.options import ArtifactsOpt, JsonOpt, RunIdArg, StoreOpt, settings
from batchor_core.cli.render import (
    dump_json,
    print_runs,
    print_status,
    result_dict,
    summary_dict,
)
from batchor_core.exports import SUFFIXES
from batchor_core.models import ItemStatus, RunStatus

__all__ = ["item", "list_runs", "results", "status"]


def status(
    run_id: RunIdArg,
    json_out: JsonOpt = False,
    store: StoreOpt = None,
    artifacts: ArtifactsOpt = None,
) -> int:
    """Show a run's status, counts, batches, tokens and error codes."""
    # One snapshot, waiting for no writer: the counts agree with the error codes.
    with open_runner(settings(store, artifacts)) as runner, runner.storage.read():
        run = runner.get_run(run_id)
        summary = run.summary()
        errors = run.error_counts()
    if json_out:
        dump_json({**summary_dict(summary), "error_counts": errors}, sys.stdout)
    else:
        print_status(summary, errors, sys.stdout, color=sys.stdout.isatty())
    return ExitCode.OK


def list_runs(
    status: Annotated[
        list[RunStatus] | None,
        typer.Option(
            "--status", help="Only runs with this status (repeatable).", show_default=False
        ),
    ] = None,
    owner: Annotated[
        list[str] | None,
        typer.Option(
            "--owner", help="Only runs whose owner has KEY=VALUE (repeatable).", show_default=False
        ),
    ] = None,
    json_out: JsonOpt = False,
    store: StoreOpt = None,
    artifacts: ArtifactsOpt = None,
) -> int:
    """List runs, oldest first: id, status, counts, age and reason."""
    wanted_owner: dict[str, str] | None = None
    if owner:
        wanted_owner = {}
        for pair in owner:
            key, sep, value = pair.partition("=")
            if not sep or not key:
                raise CliError(f"--owner takes KEY=VALUE, not {pair!r}", ExitCode.USAGE)
            wanted_owner[key] = value
    with open_runner(settings(store, artifacts)) as runner:
        summaries = runner.list_runs(status=status or None, owner=wanted_owner)
    if json_out:
        for summary in summaries:
            dump_json(summary_dict(summary), sys.stdout)
    else:
        print_runs(summaries, sys.stdout, color=sys.stdout.isatty())
    return ExitCode.OK


def results(
    run_id: RunIdArg,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="Write to a .jsonl, .csv or .parquet file instead of JSON lines on stdout.",
            show_default=False,
        ),
    ] = None,
    failed_only: Annotated[
        bool, typer.Option("--failed-only", help="Only items that failed.")
    ] = False,
    json_out: JsonOpt = False,
    store: StoreOpt = None,
    artifacts: ArtifactsOpt = None,
) -> int:
    """Write a run's finished results (JSON lines on stdout, or a file with --output).

    A full export to a file is recorded with the run (``prune --raw-outputs`` needs one).
    """
    fmt = None
    if output is not None:
        fmt = SUFFIXES.get(output.suffix.lower())
        if fmt is None:
            raise CliError(
                f"cannot tell the format of {output}: use .jsonl, .csv or .parquet", ExitCode.USAGE
            )
    with open_runner(settings(store, artifacts)) as runner:
        run = runner.get_run(run_id)
        before = run.summary()
        rows = (r for r in run.results() if not failed_only or r.status is ItemStatus.FAILED)
        if output is None or fmt is None:
            for result in rows:
                dump_json(result_dict(result), sys.stdout)
        else:
            # A --failed-only export is partial: written, but not recorded as the run's.
            status = ItemStatus.FAILED if failed_only else None
            report = run.export(output, format=fmt, status=status)
    if not before.is_finished:
        # Only finished items have results: say so on stderr, away from the data.
        print(
            f"batchor: note: run {run_id} is {before.status.value} with "
            f"{before.pending_items} of {before.total_items} items pending: these results "
            "are partial",
            file=sys.stderr,
        )
    if output is None or fmt is None:
        return ExitCode.OK
    if json_out:
        dump_json(
            {
                "path": str(report.path),
                "format": report.format,
                "rows": report.rows,
                "cursor": report.cursor,
            },
            sys.stdout,
        )
    else:
        print(f"wrote {report.rows} results to {report.path}")
    return ExitCode.OK


def item(
    run_id: RunIdArg,
    item_id: Annotated[str, typer.Argument(help="The item's id.", show_default=False)],
    json_out: JsonOpt = False,
    store: StoreOpt = None,
    artifacts: ArtifactsOpt = None,
) -> int:
    """Show one item: status, output or error, attempts, tokens."""
    with open_runner(settings(store, artifacts)) as runner:
        result = runner.get_run(run_id).item(item_id)
    if result is None:
        raise CliError(f"run {run_id!r} has no item {item_id!r}", ExitCode.NOT_FOUND)
    record = result_dict(result)
    if json_out:
        dump_json(record, sys.stdout)
        return ExitCode.OK
    for key, value in record.items():
        if value is not None and key != "cursor":
            text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
            print(f"{key:>14}  {text}")
    return ExitCode.OK
