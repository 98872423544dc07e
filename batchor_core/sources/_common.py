"""Pieces every file source shares: options, ids, the bad-row policy and slicing.

Nothing here knows a file format; the format modules feed rows in and get slices out.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, TypeAlias, cast

from batchor_core.errors import ConfigurationError, SourceError
from batchor_core.models import BatchItem, JSONObject, JSONValue
from batchor_core.ports import RejectedRow, SourceSlice

__all__ = [
    "MAX_ID_LENGTH",
    "BadRowPolicy",
    "IdFn",
    "Position",
    "RowChunk",
    "RowProblem",
    "assemble_slices",
    "check_columns",
    "check_id_options",
    "check_policy",
    "check_slice_size",
    "column_items",
    "file_size",
    "fn_name",
    "id_from_fn",
    "item_id_of",
    "reject",
]

BadRowPolicy: TypeAlias = Literal["record", "raise"]
"""``record``: a bad row becomes a :class:`RejectedRow`; ``raise``: it raises ``SourceError``."""

IdFn: TypeAlias = Callable[[Mapping[str, JSONValue]], object]
"""Computes an item id (``str`` or ``int``) from a whole row."""

Position: TypeAlias = tuple[int, int]
"""A format's resume position just after a row: ``(offset, line)`` or ``(row_group, row)``."""


MAX_ID_LENGTH = 512
"""Longest item id a source lets through (the runner's limit)."""


class RowProblem(Exception):
    """Raised inside a source when one row cannot become an item; never leaves the package."""


def check_policy(on_bad_row: str) -> BadRowPolicy:
    """Validate ``on_bad_row``."""
    if on_bad_row == "record":
        return "record"
    if on_bad_row == "raise":
        return "raise"
    raise ConfigurationError(f"on_bad_row must be 'record' or 'raise', not {on_bad_row!r}")


def check_id_options(key: str | None, id_fn: IdFn | None, *, what: str) -> str | None:
    """Resolve the id column/field: ``key``, or ``"id"`` when neither it nor ``id_fn`` is given."""
    if key is not None and id_fn is not None:
        raise ConfigurationError(f"pass either {what}= or id_fn=, not both")
    if id_fn is not None:
        if not callable(id_fn):
            raise ConfigurationError("id_fn must be callable")
        return None
    if key is None:
        return "id"
    if not isinstance(key, str) or not key:
        raise ConfigurationError(f"{what} must be a non-empty string")
    return key


def check_columns(columns: Iterable[str] | None, *, what: str) -> list[str] | None:
    """Validate an optional list of column or field names (kept in order, no duplicates)."""
    if columns is None:
        return None
    if isinstance(columns, str):
        raise ConfigurationError(f"{what} must be a list of names, not a single string")
    names = list(columns)
    for name in names:
        if not isinstance(name, str):
            raise ConfigurationError(f"{what} must contain strings, got {name!r}")
    if len(set(names)) != len(names):
        raise ConfigurationError(f"{what} lists a name twice: {names!r}")
    return names


def check_slice_size(slice_size: int) -> None:
    """Validate the runner's ``slice_size``."""
    if isinstance(slice_size, bool) or not isinstance(slice_size, int) or slice_size < 1:
        raise ConfigurationError(f"slice_size must be a positive integer, not {slice_size!r}")


def fn_name(fn: Callable[..., object]) -> str:
    """A stable name for a callable, for identities (its behaviour cannot be hashed)."""
    module = getattr(fn, "__module__", None) or "?"
    qualname = getattr(fn, "__qualname__", None) or type(fn).__qualname__
    return f"{module}.{qualname}"


def item_id_of(value: object) -> str:
    """Turn an id value into an item id, or raise :class:`RowProblem` saying what is wrong."""
    if isinstance(value, str):
        if not value:
            raise RowProblem("empty id")
        if len(value) > MAX_ID_LENGTH:
            raise RowProblem(f"id is {len(value)} characters long (at most {MAX_ID_LENGTH})")
        return value
    if value is None:
        raise RowProblem("null id")
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise RowProblem(f"id must be a string or an integer, got {type(value).__name__} {value!r:.40}")


def id_from_fn(id_fn: IdFn, row: Mapping[str, JSONValue]) -> str:
    """Call the user's ``id_fn``; any exception it raises becomes a :class:`RowProblem`."""
    try:
        value = id_fn(row)
    except Exception as exc:
        raise RowProblem(f"id_fn raised {type(exc).__name__}: {exc}") from exc
    return item_id_of(value)


def reject(
    policy: BadRowPolicy,
    *,
    where: str,
    problem: str,
    item_id: str | None,
    raw: JSONObject,
) -> RejectedRow:
    """Record a bad row, or raise ``SourceError`` under ``on_bad_row="raise"``.

    ``where`` is ``file:line``; it doubles as the item id when the row's own id is unreadable.
    """
    error = f"{where}: {problem}"
    if policy == "raise":
        raise SourceError(
            f"{error} (pass on_bad_row='record' to keep going and store it as failed)",
            item_id=item_id,
        )
    return RejectedRow(item_id=item_id or where, error=error, raw=raw)


def file_size(path: str) -> int:
    """Check ``path`` is a readable regular file and return its size; raise ``SourceError``."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise SourceError(f"{path}: file not found") from None
    except OSError as exc:
        raise SourceError(f"{path}: cannot read file ({exc.strerror or exc})") from exc
    if not os.path.isfile(path):
        raise SourceError(f"{path}: not a regular file")
    if not os.access(path, os.R_OK):
        raise SourceError(f"{path}: permission denied")
    return st.st_size


def column_items(
    ids: Sequence[object],
    columns: Mapping[str, Sequence[JSONValue]],
    payload: Sequence[str],
    metadata: Sequence[str] | None,
) -> list[BatchItem] | None:
    """Items built column by column, or None when some id needs a row-by-row look.

    The fast path for a clean batch of rows; ``ids`` must already be strings.
    """
    if not ids:
        return []
    if set(map(type, ids)) != {str}:
        return None
    strs = cast("Sequence[str]", ids)
    if "" in strs or max(map(len, strs)) > MAX_ID_LENGTH:
        return None
    size = len(strs)
    metas: list[dict[str, JSONValue]] | list[None] = (
        _dicts(metadata, columns, size) if metadata is not None else [None] * size
    )
    return list(map(BatchItem, strs, _dicts(payload, columns, size), metas))


def _dicts(
    keys: Sequence[str], columns: Mapping[str, Sequence[JSONValue]], count: int
) -> list[dict[str, JSONValue]]:
    if not keys:
        return [{} for _ in range(count)]
    rows = zip(*(columns[k] for k in keys), strict=False)  # equal lengths: one batch
    return [dict(zip(keys, row, strict=False)) for row in rows]


@dataclass(frozen=True, slots=True)
class RowChunk:
    """Consecutive input rows of one source, in file order.

    Attributes:
        entries: Each row's item, or why it was rejected.
        locations: Each row's ``file:line``, parallel to ``entries``.
        position: The resume position just after ``entries[k]``.
        clean: Whether no entry is a :class:`RejectedRow` (lets slicing skip the check).
    """

    entries: Sequence[BatchItem | RejectedRow]
    locations: Sequence[str]
    position: Callable[[int], Position]
    clean: bool


def assemble_slices(
    chunks: Iterator[RowChunk],
    *,
    slice_size: int,
    checkpoint: Callable[[Position], JSONObject],
) -> Iterator[SourceSlice]:
    """Regroup row chunks into slices of at most ``slice_size`` rows (items plus rejected).

    Each slice's checkpoint is the position just after its last row, so resuming from it
    yields exactly the rows that follow.
    """
    items: list[BatchItem] = []
    locations: list[str] = []
    rejected: list[RejectedRow] = []
    taken = 0
    last: Position = (0, 0)
    for chunk in chunks:
        size = len(chunk.entries)
        k = 0
        while k < size:
            stop = min(size, k + slice_size - taken)
            if chunk.clean:
                items.extend(cast("Sequence[BatchItem]", chunk.entries)[k:stop])
                locations.extend(chunk.locations[k:stop])
            else:
                for entry, location in zip(
                    chunk.entries[k:stop], chunk.locations[k:stop], strict=True
                ):
                    if isinstance(entry, BatchItem):
                        items.append(entry)
                        locations.append(location)
                    else:
                        rejected.append(entry)
            taken += stop - k
            k = stop
            if taken == slice_size:
                yield _slice(items, locations, rejected, checkpoint(chunk.position(k - 1)))
                items, locations, rejected, taken = [], [], [], 0
        if taken and k:
            last = chunk.position(k - 1)
    if taken:
        yield _slice(items, locations, rejected, checkpoint(last))


def _slice(
    items: Sequence[BatchItem],
    locations: Sequence[str],
    rejected: Sequence[RejectedRow],
    checkpoint: JSONObject,
) -> SourceSlice:
    return SourceSlice(
        items=tuple(items),
        checkpoint=checkpoint,
        rejected=tuple(rejected),
        locations=tuple(locations),
    )
