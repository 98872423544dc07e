"""Run: the handle you refresh, wait on, inspect, read results from, and control."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

from pydantic import BaseModel, ValidationError

from batchor_core import jsoncodec
from batchor_core.budget import cost_estimate, output_per_request
from batchor_core.errors import (
    ConfigurationError,
    IngestIncompleteError,
    RetentionError,
    RunConflictError,
    RunFinishedError,
    RunLeasedError,
    RunNotFoundError,
    RunTimeoutError,
)
from batchor_core.exports import (
    ExportReport,
    export_format,
    output_fields,
    write_export,
    write_parquet,
)
from batchor_core.models import (
    ItemResult,
    ItemStatus,
    JSONObject,
    Price,
    RunStatus,
    RunSummary,
    is_amount,
)
from batchor_core.packing import chunk_key, output_key
from batchor_core.ports import ChunkState, ChunkStats, RunRecord
from batchor_core.pricing import cost_of
from batchor_core.result_rows import item_results

if TYPE_CHECKING:
    import pandas as pd  # type: ignore[import-untyped]
    import pyarrow as pa  # type: ignore[import-untyped]

    from batchor_core.runner import BatchRunner

__all__ = ["Run", "summarize"]

_FINISHED = (RunStatus.COMPLETED.value, RunStatus.CANCELLED.value)


class Run:
    """Handle on one durable run. Cheap to create; all state lives in the store.

    Get one from :meth:`BatchRunner.start` or :meth:`BatchRunner.get_run`.
    """

    def __init__(
        self, runner: BatchRunner, run_id: str, *, output_model: type[BaseModel] | None
    ) -> None:
        self._runner = runner
        self._run_id = run_id
        self._output_model = output_model

    def __repr__(self) -> str:
        return f"Run({self._run_id!r})"

    @property
    def run_id(self) -> str:
        """The run's durable id."""
        return self._run_id

    # ------------------------------------------------------------------ progress

    def refresh(self, *, max_collect: int = 4) -> RunSummary:
        """Advance the run one bounded step (never sleeps) and return its summary.

        Args:
            max_collect: Most finished batches to download and record in this step.

        Raises:
            RunLeasedError: Another process is advancing the run right now.
        """
        self._runner.stepper.step(self._record(), self._output_model, max_collect=max_collect)
        return self.summary()

    def wait(
        self,
        *,
        timeout: float | None = None,
        poll_interval: float = 30.0,
        on_progress: Callable[[RunSummary], None] | None = None,
    ) -> RunSummary:
        """Refresh until the run finishes, or is paused with nothing left to collect.

        A paused run's batches in flight are still collected; ``wait()`` returns once none
        is left, or once those left are held back by provider errors (see
        ``summary().status_reason`` and ``last_error``; ``resume()`` retries them).

        Args:
            timeout: Seconds to wait at most (None: no limit). A step under way is not
                cut short: with a provider that does not answer, the wait can end up to
                one provider call (``OpenAIProviderConfig.timeout_seconds``) later.
            poll_interval: Seconds between polls while nothing changes.
            on_progress: Called with the summary after every step that changed something.

        Raises:
            ConfigurationError: ``timeout`` or ``poll_interval`` is not a number of
                seconds (negative, NaN).
            RunTimeoutError: The run did not finish in time (it keeps going; wait again).
        """
        if timeout is not None and not timeout >= 0:  # NaN too
            raise ConfigurationError(
                f"wait(timeout=...) must be a number of seconds or None, not {timeout!r}"
            )
        if not (0 <= poll_interval < float("inf")):
            raise ConfigurationError(
                f"wait(poll_interval=...) must be a number of seconds, not {poll_interval!r}"
            )
        clock = self._runner.clock
        started = clock.now()  # timeouts run on the runner's clock (a fake one in tests)
        while True:
            record = self._record()
            leased_elsewhere = False
            try:
                changed = self._runner.stepper.step(record, self._output_model, max_collect=4)
            except RunLeasedError:
                changed = False  # another process is advancing it; watch and wait
                leased_elsewhere = True
            summary = self.summary()
            if (
                not summary.ingest_complete
                and not changed
                and not leased_elsewhere
                and summary.status in (RunStatus.INGESTING, RunStatus.RUNNING)
                and summary.batches_in_flight == 0
            ):
                raise IngestIncompleteError(
                    f"run {self._run_id!r} stopped part-way through reading its items "
                    f"({summary.total_items} read) and no process is reading them; resume it "
                    "with runner.start(job, items=<the same items>, run_id=...)",
                    run_id=self._run_id,
                )
            if changed and on_progress is not None:
                on_progress(summary)
            if summary.is_finished or (
                summary.status is RunStatus.PAUSED and not self._collectable_in_flight()
            ):
                # Finished, or paused with nothing left to collect: batches in flight are
                # still collected while paused, unless they are stalled by errors too.
                return summary
            # The timeout holds even while every step changes something (a provider
            # that keeps failing with no backoff records a new error each time).
            left = None if timeout is None else timeout - (clock.now() - started).total_seconds()
            if left is not None and left <= 0:
                why = f"; {summary.waiting_reason}" if summary.waiting_reason else ""
                raise RunTimeoutError(
                    f"run {self._run_id!r} not finished after {timeout:g}s "
                    f"({summary.pending_items} items pending{why}); it continues in the "
                    "background of the provider, call wait() again later",
                    run_id=self._run_id,
                )
            if changed:
                continue
            delay = poll_interval
            wake = self._runner.stepper.next_wake(self._run_id)
            if wake is not None:
                delay = min(delay, max((wake - clock.now()).total_seconds(), 0.05))
            if left is not None:
                delay = min(delay, left)
            clock.sleep(delay)

    def summary(self) -> RunSummary:
        """Status, counts, usage and cost, read from the store (cheap at any size)."""
        storage = self._runner.storage
        with storage.read():  # the run and its batches as of one moment; no writer waits
            record = self._record()
            stats = storage.chunk_stats([self._run_id])[self._run_id]
        return summarize(record, stats, self._runner.price_of(record))

    # ------------------------------------------------------------------ results

    def results(self, *, after: int = 0, page_size: int = 1000) -> Iterator[ItemResult]:
        """Terminal results in a stable order, starting after cursor ``after``.

        Usable while the run is still going: remember the last result's ``cursor`` and
        pass it as ``after`` later (even from another process) to read only newer ones.
        Rows are read ``page_size`` at a time, so memory is bounded by the page.
        """
        if page_size < 1:
            raise ConfigurationError(f"results(page_size=...) must be at least 1, not {page_size}")
        cursor = after
        parse = self._output_parser()
        while True:
            rows = self._runner.storage.read_results(self._run_id, after=cursor, limit=page_size)
            if not rows:
                return
            try:
                yield from item_results(rows, parse)
            except ValidationError as exc:
                raise self._mismatch(exc) from exc
            cursor = rows[-1].finished_seq

    def _mismatch(self, exc: ValidationError) -> RunConflictError:
        model = self._output_model.__name__ if self._output_model is not None else "the model"
        first: dict[str, object] = dict(exc.errors()[0]) if exc.errors() else {}
        value = str(first.get("input"))[:200]
        return RunConflictError(
            f"a completed output of run {self._run_id!r} does not validate against {model}: "
            f"{first.get('msg', exc)} (input {value!r}). "
            "It was checked when collected by a process without the output model, against "
            "the stored JSON schema only, so the model's own validators did not run; read "
            "the results untyped (runner.get_run(run_id), without job=) or relax the model",
            run_id=self._run_id,
        )

    def item(self, item_id: str) -> ItemResult | None:
        """One item's current state by id (pending items have status ``pending``)."""
        row = self._runner.storage.item_status(self._run_id, item_id)
        return None if row is None else next(item_results([row], self._output_parser()))

    def _output_parser(self) -> Callable[[str], object]:
        """A completed output's JSON text to its ``output``: the output model's own JSON
        validator (what ``model_validate_json`` calls, minus a Python frame per row), or
        plain JSON without a model."""
        if self._output_model is not None:
            return self._output_model.__pydantic_validator__.validate_json
        return jsoncodec.loads

    def error_counts(self) -> dict[str, int]:
        """How many failed or cancelled items carry each error code, most common first."""
        return self._runner.storage.error_counts(self._run_id)

    def to_arrow(
        self,
        *,
        status: ItemStatus | str | None = None,
        columns: Sequence[str] | None = None,
        include_payload: bool = False,
    ) -> pa.Table:
        """Terminal results as a ``pyarrow.Table``, in input order, read from the store
        page by page as columns (no per-row result objects).

        Columns: ``item_id``, ``status``, one column per field of the output model (typed
        from its JSON schema; nested objects as structs, lists as lists, enums as
        strings) or ``output`` for text jobs, then ``error_code``, ``error_message``,
        ``attempts``, ``input_tokens``, ``output_tokens``, ``metadata`` (JSON text),
        ``cursor`` and, with ``include_payload``, ``payload`` (the input, JSON text).

        Args:
            status: Only results with this status (``completed``, ``failed``, ...).
            columns: Only these columns, in this order (skipping the output fields skips
                parsing them).
            include_payload: Add the ``payload`` column.
        """
        from batchor_core.columnar import results_table

        wanted = None if status is None else ItemStatus(status).value
        return results_table(
            self._runner.storage,
            self._run_id,
            self._output_schema(),
            status=wanted,
            columns=columns,
            include_payload=include_payload,
        )

    def to_pandas(
        self,
        *,
        status: ItemStatus | str | None = None,
        columns: Sequence[str] | None = None,
        include_payload: bool = False,
    ) -> pd.DataFrame:
        """Terminal results as a ``pandas.DataFrame`` (see :meth:`to_arrow`)."""
        table = self.to_arrow(status=status, columns=columns, include_payload=include_payload)
        # The table is ours alone: each column's Arrow memory is freed once converted,
        # so the peak stays near one copy of the results rather than two. Not with
        # split_blocks: numeric columns without nulls would then be read-only views of
        # Arrow memory, and the caller's frame.loc[...] = ... would raise.
        return table.to_pandas(self_destruct=True)

    def mark_collected(self, by: str, *, replace: str | None = None) -> bool:
        """Record that ``by`` turned this finished run into its one downstream result.

        The first caller wins and every later caller is told so, which is how a Dagster
        sensor and asset agree that a run was materialized exactly once. ``replace``
        takes the marker over from a collector known to have failed.

        Returns:
            Whether ``by`` holds the marker now.
        """
        self._record()  # an unknown run raises RunNotFoundError
        holder = self._runner.storage.mark_collected(
            self._run_id, by, now=self._runner.clock.now(), replace=replace
        )
        return holder == by

    def release_collection(self, by: str) -> bool:
        """Give up the collection marker ``by`` holds (its collector failed before it
        produced the downstream result), so another collector may take the run."""
        return self._runner.storage.release_collected(self._run_id, by)

    def _output_schema(self) -> JSONObject | None:
        schema = self._record().job_spec.get("output_schema")
        return schema if isinstance(schema, dict) else None

    # ------------------------------------------------------------------ retention

    def export(
        self,
        path: str | os.PathLike[str],
        *,
        format: str | None = None,
        after: int = 0,
        status: ItemStatus | str | None = None,
    ) -> ExportReport:
        """Stream terminal results (after cursor ``after``) to ``path``.

        Formats: ``jsonl`` (outputs as JSON); ``csv``, one column per output field
        (nested values as JSON text); ``parquet``, the typed columns of :meth:`to_arrow`
        plus the input ``payload``. Without ``format``, the path's suffix names it
        (``.jsonl``/``.ndjson``, ``.csv``, ``.parquet``; ``jsonl`` for any other); a
        ``format`` that contradicts the suffix is refused (``ConfigurationError``). The
        file appears atomically. An export of every status is recorded with the run,
        which is what allows :meth:`prune` to delete raw outputs; one filtered by
        ``status`` is partial and is not.
        """
        format = export_format(path, format)
        wanted = None if status is None else ItemStatus(status)
        if format == "parquet":
            from batchor_core.columnar import result_batches

            schema, batches = result_batches(
                self._runner.storage,
                self._run_id,
                self._output_schema(),
                status=None if wanted is None else wanted.value,
                include_payload=True,
                after=after,
            )
            report = write_parquet(batches, schema, path, after=after)
        else:
            fields = output_fields(self._output_schema())
            results = (r for r in self.results(after=after) if wanted in (None, r.status))
            report = write_export(results, path, format, after=after, output_fields=fields)
        if wanted is not None:
            return report
        record = self._record()
        retention = dict(record.retention or {})
        exports = list(retention.get("exports", []))
        exports.append(
            {
                "path": str(report.path),
                "format": report.format,
                "after": after,
                "rows": report.rows,
                "cursor": report.cursor,
                "run_status": record.status.value,
                "at": self._runner.clock.now().isoformat(),
            }
        )
        retention["exports"] = exports[-20:]
        self._runner.storage.set_retention(self._run_id, retention)
        return report

    def prune(
        self, *, requests: bool = True, raw_outputs: bool = False, force: bool = False
    ) -> int:
        """Delete artifacts deliberately; return how many files were deleted.

        Args:
            requests: Delete request JSONL of batches no item can be retried from.
            raw_outputs: Delete downloaded provider output and error files. Refused unless
                the run is finished and a full export was taken after it finished
                (or ``force=True``).
            force: Delete raw outputs even without an export.

        Raises:
            RetentionError: Raw outputs would be lost without an export.
        """
        record = self._record()
        chunks = self._runner.storage.list_chunks(self._run_id)
        artifacts = self._runner.artifacts
        deleted = 0
        if raw_outputs and not force:
            exports = (record.retention or {}).get("exports", [])
            full = [e for e in exports if e.get("after") == 0 and e.get("run_status") in _FINISHED]
            if not record.status.is_terminal or not full:
                raise RetentionError(
                    f"run {self._run_id!r}: raw outputs are only pruned after the run finished "
                    "and a full export was taken (run.export(path)); pass force=True to "
                    "delete them anyway",
                    run_id=self._run_id,
                )
        if requests:
            busy = self._runner.storage.chunks_with_pending_items(self._run_id)
            for chunk in chunks:
                if chunk.state is ChunkState.COLLECTED and chunk.chunk_id not in busy:
                    deleted += artifacts.delete(chunk_key(self._run_id, chunk.chunk_id))
        if raw_outputs:
            for chunk in chunks:
                if chunk.batch_id:
                    for kind in ("output", "error"):
                        key = output_key(self._run_id, chunk.chunk_id, chunk.batch_id, kind)
                        deleted += artifacts.delete(key)
        retention = dict(record.retention or {})
        prunes = list(retention.get("prunes", []))
        prunes.append(
            {
                "requests": requests,
                "raw_outputs": raw_outputs,
                "forced": force,
                "files_deleted": deleted,
                "at": self._runner.clock.now().isoformat(),
            }
        )
        retention["prunes"] = prunes[-20:]
        self._runner.storage.set_retention(self._run_id, retention)
        return deleted

    # ------------------------------------------------------------------ control

    def pause(self, reason: str | None = None) -> RunSummary:
        """Stop submitting new batches; batches in flight are still collected."""
        self._require_live("pause")
        self._runner.storage.set_status(
            self._run_id,
            RunStatus.PAUSED,
            reason=reason or "paused by operator",
            expected=[RunStatus.INGESTING, RunStatus.RUNNING, RunStatus.PAUSED],
        )
        return self.summary()

    def set_max_cost(self, usd: float | None) -> RunSummary:
        """Set (or with None, remove) the run's cost cap, in USD.

        The cap is not part of the job's fingerprint, so it can be raised on a run that
        paused at it; then :meth:`resume` it (or pass ``max_cost_usd=`` to ``resume``).
        """
        self._require_live("set the cost cap of")
        if usd is not None and not is_amount(usd):
            raise ConfigurationError("max_cost_usd must be a non-negative finite number or None")
        limits = dict(self._record().limits or {})
        if usd is None:
            limits.pop("max_cost_usd", None)
        else:
            limits["max_cost_usd"] = float(usd)
        self._runner.storage.set_limits(self._run_id, limits)
        return self.summary()

    def resume(self, *, max_cost_usd: float | None = None) -> RunSummary:
        """Resume a paused run; batches held back by errors are retried at once, and the
        run's share of the enqueued-token budget, shrunk by ``token_limit_exceeded``
        rejections, is whole again.

        Args:
            max_cost_usd: A new cost cap first (see :meth:`set_max_cost`), for a run that
                paused at its old one.
        """
        self._require_live("resume")
        if max_cost_usd is not None:
            self.set_max_cost(max_cost_usd)
        self._runner.storage.set_token_limit_strikes(self._run_id, 0)
        if self._runner.storage.set_status(
            self._run_id, RunStatus.RUNNING, expected=[RunStatus.PAUSED]
        ):
            self._runner.stepper.clear_stalls(self._run_id)
        try:
            return self.refresh()
        except RunLeasedError:
            return self.summary()  # the process holding the lease carries on

    def cancel(self, reason: str | None = None) -> RunSummary:
        """Cancel the run: cancel in-flight batches, keep their finished rows, cancel the rest."""
        self._require_live("cancel")
        why = reason or "cancelled by operator"
        self._runner.storage.set_status(
            self._run_id,
            RunStatus.CANCELLING,
            reason=why,
            expected=[
                RunStatus.RUNNING,
                RunStatus.PAUSED,
                RunStatus.INGESTING,
                RunStatus.CANCELLING,
            ],
        )
        # The step cancels in-flight batches and settles the run; if another process holds
        # the lease, its next step does the same.
        try:
            return self.refresh(max_collect=1_000_000)
        except RunLeasedError:
            return self.summary()

    def _collectable_in_flight(self) -> bool:
        return any(
            c.state is ChunkState.SUBMITTED and c.first_error_at is None
            for c in self._runner.storage.list_chunks(self._run_id, [ChunkState.SUBMITTED])
        )

    def _require_live(self, action: str) -> None:
        record = self._record()
        if record.status.is_terminal:
            raise RunFinishedError(
                f"cannot {action} run {self._run_id!r}: it is already {record.status.value}",
                run_id=self._run_id,
            )

    def _record(self) -> RunRecord:
        record = self._runner.storage.load_run(self._run_id)
        if record is None:
            raise RunNotFoundError(f"run {self._run_id!r} no longer exists", run_id=self._run_id)
        return record


def summarize(
    record: RunRecord,
    stats: ChunkStats,
    price: tuple[Price | None, str] | None = None,
) -> RunSummary:
    """A run's summary from its stored record, its chunk totals and its model's price."""
    done = record.completed_items + record.failed_items + record.cancelled_items
    spec = record.job_spec
    usage = record.usage
    cost = estimated = None
    note: str | None = None
    if price is not None:
        rate, note = price
        cost = cost_of(usage, rate)
        pending = cost_estimate(
            stats.open_est_tokens, stats.open_requests, rate, output_per_request(record, usage)
        )
        estimated = None if cost is None or pending is None else round(cost + pending, 10)
    live = record.status in (RunStatus.RUNNING, RunStatus.INGESTING)
    return RunSummary(
        run_id=record.run_id,
        status=record.status,
        status_reason=record.status_reason,
        total_items=record.total_items,
        pending_items=record.total_items - done,
        completed_items=record.completed_items,
        failed_items=record.failed_items,
        cancelled_items=record.cancelled_items,
        in_flight_items=stats.in_flight_items,
        batches_total=stats.batches_total,
        batches_in_flight=stats.batches_in_flight,
        ingest_complete=record.ingest_complete,
        usage=usage,
        created_at=record.created_at,
        updated_at=record.updated_at,
        owner=record.owner,
        model=spec.get("model"),
        endpoint=spec.get("endpoint"),
        batch_ids=stats.batch_ids,
        collected_by=record.collected_by,
        collected_at=record.collected_at,
        last_error=stats.last_error,
        stalled_chunks=stats.stalled_chunks,
        waiting_reason=record.waiting_reason if live else None,
        cost=cost,
        estimated_cost=estimated,
        cost_note=note,
        max_cost_usd=(record.limits or {}).get("max_cost_usd"),
    )
