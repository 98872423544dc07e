"""Operator actions: ``pause``, ``resume``, ``cancel`` and ``prune``."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from batchor_core.cli.config import open_runner, open_storage
from batchor_core.cli.errors import ExitCode
from batchor_core.cli.options import (
    ArtifactsOpt,
    BaseUrlOpt,
    JsonOpt,
    ReasonOpt,
    RunIdArg,
    StoreOpt,
    settings,
)
from batchor_core.cli.render import dump_json, summary_dict
from batchor_core.models import RunSummary

__all__ = ["break_lease", "cancel", "db_upgrade", "pause", "prune", "resume"]


def _report(summary: RunSummary, json_out: bool) -> int:
    if json_out:
        dump_json(summary_dict(summary), sys.stdout)
    else:
        reason = f" ({summary.status_reason})" if summary.status_reason else ""
        print(f"run {summary.run_id} {summary.status.value}{reason}")
    return ExitCode.OK


def pause(
    run_id: RunIdArg,
    reason: ReasonOpt = None,
    json_out: JsonOpt = False,
    store: StoreOpt = None,
    artifacts: ArtifactsOpt = None,
) -> int:
    """Stop submitting new batches; batches in flight are still collected."""
    with open_runner(settings(store, artifacts)) as runner:
        return _report(runner.pause(run_id, reason), json_out)


def resume(
    run_id: RunIdArg,
    max_cost_usd: Annotated[
        float | None,
        typer.Option(
            "--max-cost-usd",
            min=0.0,
            help="Raise (or set) the run's cost cap first, for a run paused at its cap.",
            show_default=False,
        ),
    ] = None,
    json_out: JsonOpt = False,
    store: StoreOpt = None,
    artifacts: ArtifactsOpt = None,
    base_url: BaseUrlOpt = None,
) -> int:
    """Resume a paused run (and advance it one step)."""
    with open_runner(settings(store, artifacts, base_url)) as runner:
        return _report(runner.resume(run_id, max_cost_usd=max_cost_usd), json_out)


def cancel(
    run_id: RunIdArg,
    reason: ReasonOpt = None,
    json_out: JsonOpt = False,
    store: StoreOpt = None,
    artifacts: ArtifactsOpt = None,
    base_url: BaseUrlOpt = None,
) -> int:
    """Cancel a run: cancel its batches in flight, keep finished results, cancel the rest."""
    with open_runner(settings(store, artifacts, base_url)) as runner:
        return _report(runner.cancel(run_id, reason), json_out)


def prune(
    run_id: RunIdArg,
    requests: Annotated[
        bool,
        typer.Option(
            "--requests/--no-requests", help="Delete request files no item can be retried from."
        ),
    ] = True,
    raw_outputs: Annotated[
        bool,
        typer.Option(
            "--raw-outputs",
            help="Delete downloaded provider outputs (needs a full export first, or --force).",
        ),
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Delete raw outputs even without an export.")
    ] = False,
    json_out: JsonOpt = False,
    store: StoreOpt = None,
    artifacts: ArtifactsOpt = None,
) -> int:
    """Delete a run's artifacts deliberately (recorded with the run)."""
    with open_runner(settings(store, artifacts)) as runner:
        deleted = runner.get_run(run_id).prune(
            requests=requests, raw_outputs=raw_outputs, force=force
        )
    if json_out:
        dump_json({"run_id": run_id, "files_deleted": deleted}, sys.stdout)
    else:
        print(f"run {run_id}: deleted {deleted} files")
    return ExitCode.OK


def break_lease(
    run_id: RunIdArg,
    json_out: JsonOpt = False,
    store: StoreOpt = None,
    artifacts: ArtifactsOpt = None,
) -> int:
    """Clear a stale lease whose holder you know is gone (another host, before its TTL).

    A dead holder on this host, or any holder of a Postgres store, is detected without
    this; a holder that is in fact alive is fenced out and stops before its next call.
    """
    with open_runner(settings(store, artifacts)) as runner:
        holder = runner.break_lease(run_id)
    if json_out:
        dump_json({"run_id": run_id, "previous_holder": holder}, sys.stdout)
    elif holder:
        print(f"run {run_id}: lease of {holder} broken")
    else:
        print(f"run {run_id}: no lease was held")
    return ExitCode.OK


def db_upgrade(json_out: JsonOpt = False, store: StoreOpt = None) -> int:
    """Bring the store's schema to this batchor's revision (opening it does the same);
    a store written by a newer batchor is refused."""
    storage = open_storage(store, must_exist=True)
    try:
        revision = getattr(storage, "schema_revision", None)
    finally:
        storage.close()
    if json_out:
        dump_json({"store": repr(storage), "schema_revision": revision}, sys.stdout)
    else:
        print(f"{storage!r}: schema at revision {revision}")
    return ExitCode.OK
