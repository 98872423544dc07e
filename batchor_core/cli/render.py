"""How the CLI shows runs: JSON for scripts, rich tables for people, and wait's progress.

rich is imported inside the functions that draw, so commands that print JSON or plain
lines never load it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import IO, TYPE_CHECKING

from batchor_core.models import ItemResult, JSONObject, RunSummary
from batchor_core.pricing import format_usd

if TYPE_CHECKING:
    from rich.console import RenderableType
    from rich.live import Live

__all__ = [
    "WaitProgress",
    "dump_json",
    "human_age",
    "human_seconds",
    "print_runs",
    "print_status",
    "progress_line",
    "result_dict",
    "summary_dict",
]


def summary_dict(summary: RunSummary) -> JSONObject:
    """A run summary as plain JSON values (timestamps in ISO 8601, UTC)."""
    return {
        "run_id": summary.run_id,
        "status": summary.status.value,
        "status_reason": summary.status_reason,
        "total_items": summary.total_items,
        "pending_items": summary.pending_items,
        "completed_items": summary.completed_items,
        "failed_items": summary.failed_items,
        "cancelled_items": summary.cancelled_items,
        "in_flight_items": summary.in_flight_items,
        "batches_total": summary.batches_total,
        "batches_in_flight": summary.batches_in_flight,
        "ingest_complete": summary.ingest_complete,
        "input_tokens": summary.usage.input_tokens,
        "output_tokens": summary.usage.output_tokens,
        "cached_input_tokens": summary.usage.cached_input_tokens,
        "reasoning_tokens": summary.usage.reasoning_tokens,
        "cost_usd": summary.cost,
        "estimated_cost_usd": summary.estimated_cost,
        "cost_note": summary.cost_note,
        "max_cost_usd": summary.max_cost_usd,
        "waiting_reason": summary.waiting_reason,
        "last_error": summary.last_error,
        "stalled_chunks": summary.stalled_chunks,
        "created_at": summary.created_at.isoformat(),
        "updated_at": summary.updated_at.isoformat(),
        "owner": dict(summary.owner) if summary.owner is not None else None,
        "model": summary.model,
        "endpoint": summary.endpoint,
        "batch_ids": list(summary.batch_ids),
        "collected_by": summary.collected_by,
        "collected_at": summary.collected_at.isoformat() if summary.collected_at else None,
    }


def result_dict(result: ItemResult) -> JSONObject:
    """One result as the JSON object ``run.export(..., format="jsonl")`` writes."""
    from batchor_core.exports import result_record

    return result_record(result)


def dump_json(value: object, out: IO[str]) -> None:
    """Write ``value`` as one line of JSON."""
    out.write(json.dumps(value, ensure_ascii=False, default=str) + "\n")


def human_seconds(seconds: float) -> str:
    """``42s``, ``3m05s``, ``2h10m``, ``3d04h``."""
    s = max(round(seconds), 0)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600:02d}h"


def human_age(when: datetime, now: datetime | None = None) -> str:
    """How long ago ``when`` was."""
    now = now or datetime.now(UTC)
    return human_seconds((now - when).total_seconds())


def _done(summary: RunSummary) -> int:
    return summary.completed_items + summary.failed_items + summary.cancelled_items


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}es" if word.endswith("h") else f"{n} {word}s"


def progress_line(summary: RunSummary, *, elapsed: float, eta: float | None) -> str:
    """One plain line describing a run's progress (used when stdout is not a terminal)."""
    reason = f" ({summary.status_reason})" if summary.status_reason else ""
    reading = "" if summary.ingest_complete else ", still reading input"
    eta_text = f", ETA {human_seconds(eta)}" if eta is not None else ""
    return (
        f"[{human_seconds(elapsed):>6}] {summary.run_id} {summary.status.value}{reason}: "
        f"{_done(summary)}/{summary.total_items} done "
        f"({summary.completed_items} completed, {summary.failed_items} failed, "
        f"{summary.cancelled_items} cancelled), {summary.pending_items} pending, "
        f"{_plural(summary.batches_in_flight, 'batch')} in flight{reading}{eta_text}"
    )


class WaitProgress:
    """Follows a run while ``wait`` runs.

    On a terminal it draws a live panel (bar, counts, batches in flight, elapsed, ETA);
    otherwise it prints one plain line (:func:`progress_line`) whenever the counts or
    the status change.

    Args:
        out: Where to draw.
        live: Draw the live panel (stdout is a terminal).
        monotonic: Time source for elapsed and ETA.
    """

    def __init__(
        self, out: IO[str], *, live: bool, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self._out = out
        self._live_wanted = live
        self._monotonic = monotonic
        self._started = monotonic()
        self._first_done: int | None = None
        self._summary: RunSummary | None = None
        self._last_key: tuple[object, ...] | None = None
        self._live: Live | None = None

    def __enter__(self) -> WaitProgress:
        if self._live_wanted:
            from rich.console import Console
            from rich.live import Live

            self._live = Live(
                self, console=Console(file=self._out), refresh_per_second=4, transient=False
            )
            self._live.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None

    def update(self, summary: RunSummary) -> None:
        """Show ``summary`` (a plain line only if something changed)."""
        if self._first_done is None:
            self._first_done = _done(summary)
        self._summary = summary
        if self._live is not None:
            self._live.refresh()
            return
        key = (
            summary.status,
            summary.status_reason,
            summary.total_items,
            summary.completed_items,
            summary.failed_items,
            summary.cancelled_items,
            summary.batches_in_flight,
            summary.ingest_complete,
        )
        if key != self._last_key:
            self._last_key = key
            elapsed, eta = self._timing(summary)
            self._out.write(progress_line(summary, elapsed=elapsed, eta=eta) + "\n")
            self._out.flush()

    def _timing(self, summary: RunSummary) -> tuple[float, float | None]:
        elapsed = self._monotonic() - self._started
        gained = _done(summary) - (self._first_done or 0)
        if summary.is_finished or summary.pending_items == 0:
            return elapsed, 0.0
        if gained <= 0 or elapsed <= 0 or not summary.ingest_complete:
            return elapsed, None
        return elapsed, summary.pending_items / (gained / elapsed)

    def __rich__(self) -> RenderableType:
        """The live panel (rich calls this on every refresh)."""
        from rich.progress_bar import ProgressBar
        from rich.table import Table

        grid = Table.grid(padding=(0, 2))
        grid.add_column(style="bold", no_wrap=True)
        grid.add_column()
        summary = self._summary
        if summary is None:
            grid.add_row("waiting for the first summary ...")
            return grid
        elapsed, eta = self._timing(summary)
        reason = f" ({summary.status_reason})" if summary.status_reason else ""
        grid.add_row(summary.run_id, f"{summary.status.value}{reason}")
        bar = Table.grid(padding=(0, 1))
        bar.add_row(
            ProgressBar(total=max(summary.total_items, 1), completed=_done(summary), width=30),
            f"{_done(summary)}/{summary.total_items} done",
        )
        grid.add_row("progress", bar)
        grid.add_row(
            "items",
            f"[green]{summary.completed_items} completed[/]  "
            f"[red]{summary.failed_items} failed[/]  {summary.cancelled_items} cancelled  "
            f"{summary.pending_items} pending",
        )
        grid.add_row("batches in flight", str(summary.batches_in_flight))
        grid.add_row(
            "elapsed / ETA",
            f"{human_seconds(elapsed)} / {human_seconds(eta) if eta is not None else '?'}",
        )
        return grid


def print_status(
    summary: RunSummary, errors: Mapping[str, int], out: IO[str], *, color: bool
) -> None:
    """A run's summary as a two-column table."""
    from rich.console import Console
    from rich.table import Table

    table = Table.grid(padding=(0, 2))
    rows: list[tuple[str, str]] = [
        ("run", summary.run_id),
        ("status", summary.status.value),
    ]
    if summary.status_reason:
        rows.append(("reason", summary.status_reason))
    rows += [
        ("model", f"{summary.model} {summary.endpoint}"),
        (
            "items",
            f"{summary.total_items} total: {summary.completed_items} completed, "
            f"{summary.failed_items} failed, {summary.cancelled_items} cancelled, "
            f"{summary.pending_items} pending"
            + ("" if summary.ingest_complete else " (input not fully read)"),
        ),
        ("batches", f"{summary.batches_total} total, {summary.batches_in_flight} in flight"),
        ("tokens", _tokens_text(summary)),
        ("cost", _cost_text(summary)),
        (
            "created",
            f"{summary.created_at:%Y-%m-%d %H:%M:%S} UTC ({human_age(summary.created_at)} ago)",
        ),
        ("updated", f"{summary.updated_at:%Y-%m-%d %H:%M:%S} UTC"),
    ]
    if summary.waiting_reason:
        rows.append(("waiting", summary.waiting_reason))
    if summary.last_error:  # batches held back by provider or artifact-store errors
        rows.append(("retrying", f"{summary.stalled_chunks} batch(es) after: {summary.last_error}"))
    if errors:
        rows.append(("errors", ", ".join(f"{code}: {n}" for code, n in errors.items())))
    if summary.owner:
        rows.append(("owner", json.dumps(dict(summary.owner), sort_keys=True)))
    if summary.collected_by:
        rows.append(("collected by", summary.collected_by))
    for key, value in rows:
        table.add_row(f"[bold]{key}[/]", value)
    Console(file=out, no_color=not color, highlight=False, soft_wrap=True).print(table)


def _tokens_text(summary: RunSummary) -> str:
    usage = summary.usage
    return (
        f"{usage.input_tokens} in ({usage.cached_input_tokens} cached), "
        f"{usage.output_tokens} out ({usage.reasoning_tokens} reasoning)"
    )


def _cost_text(summary: RunSummary) -> str:
    if summary.cost is None:
        return summary.cost_note or "unknown"
    text = f"{format_usd(summary.cost)} USD so far"
    if summary.estimated_cost is not None:
        text += f", ~{format_usd(summary.estimated_cost)} USD in all"
    if summary.max_cost_usd is not None:
        text += f" (cap {format_usd(summary.max_cost_usd)} USD)"
    return text


def print_runs(summaries: Iterable[RunSummary], out: IO[str], *, color: bool) -> None:
    """Runs as a table: id, status, counts, age, reason."""
    from rich.console import Console
    from rich.table import Table

    table = Table(box=None, header_style="bold", pad_edge=False)
    for name, justify in (
        ("RUN", "left"),
        ("STATUS", "left"),
        ("DONE", "right"),
        ("FAILED", "right"),
        ("PENDING", "right"),
        ("BATCHES", "right"),
        ("AGE", "right"),
        ("REASON", "left"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    now = datetime.now(UTC)
    for s in summaries:
        table.add_row(
            s.run_id,
            s.status.value,
            f"{_done(s)}/{s.total_items}",
            str(s.failed_items),
            str(s.pending_items),
            f"{s.batches_in_flight}/{s.batches_total}",
            human_age(s.created_at, now),
            s.status_reason or "",
        )
    Console(file=out, no_color=not color, highlight=False, width=200).print(table)
