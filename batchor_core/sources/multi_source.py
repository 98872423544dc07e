"""Several sources read one after another, as one source."""

from __future__ import annotations

import glob
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from batchor_core.errors import ConfigurationError, SourceError
from batchor_core.models import BatchItem, JSONObject
from batchor_core.ports import ItemSource, RejectedRow, SourceSlice
from batchor_core.sources._common import check_slice_size

__all__ = ["MultiSource"]


class MultiSource:
    """The ordered concatenation of several sources (usually one per file).

    Slices never mix two sources. Before yielding anything, every source still to be read
    that has a ``check()`` method (the file sources do) is checked, so a missing file or a
    bad header at the end of the list fails the run before the first item.

    The identity is ``{"kind": "multi", "namespace_ids": ..., "namespaces": ...,
    "sources": [<each source's identity>]}``; the checkpoint is ``{"index": i, "inner":
    <source i's checkpoint>}``.

    Args:
        sources: The sources, in reading order.
        namespace_ids: Prefix every item id with ``"<name>/"``, so the same id may occur in
            two files. The name is the file stem when every source has a ``path`` and the
            stems are distinct, else the source's 0-based index. The names are part of the
            identity (renaming a file then changes the ids, so it changes the identity).
    """

    def __init__(self, sources: Iterable[ItemSource], *, namespace_ids: bool = False) -> None:
        self._sources = list(sources)
        if not self._sources:
            raise ConfigurationError("MultiSource needs at least one source")
        self._namespace_ids = bool(namespace_ids)
        self._namespaces = _namespaces(self._sources) if namespace_ids else None

    @classmethod
    def from_glob(
        cls,
        pattern: str | os.PathLike[str],
        *,
        factory: Callable[[Path], ItemSource],
        namespace_ids: bool = False,
    ) -> MultiSource:
        """One source per file matching ``pattern``, in sorted path order.

        Args:
            pattern: A glob (``"data/*.csv"``; ``**`` matches subdirectories) or a
                directory (every file directly in it).
            factory: Builds the source for one path, e.g.
                ``lambda p: CsvSource(p, id_column="id")``.
            namespace_ids: See :class:`MultiSource`.

        Raises:
            SourceError: If no file matches.
        """
        text = os.fspath(pattern)
        if os.path.isdir(text):
            text = os.path.join(glob.escape(text), "*")
        paths = sorted(p for p in glob.glob(text, recursive=True) if os.path.isfile(p))
        if not paths:
            raise SourceError(f"no files match {os.fspath(pattern)!r}")
        return cls([factory(Path(p)) for p in paths], namespace_ids=namespace_ids)

    @property
    def sources(self) -> tuple[ItemSource, ...]:
        """The sources, in reading order."""
        return tuple(self._sources)

    def __repr__(self) -> str:
        return f"MultiSource({self._sources!r})"

    def identity(self) -> JSONObject:
        """The list of the sources' identities, in order (plus the id namespaces)."""
        return {
            "kind": "multi",
            "namespace_ids": self._namespace_ids,
            "namespaces": self._namespaces,
            "sources": [source.identity() for source in self._sources],
        }

    def read_slices(
        self, checkpoint: JSONObject | None, *, slice_size: int
    ) -> Iterator[SourceSlice]:
        """Yield each source's slices in turn, starting after ``checkpoint``."""
        check_slice_size(slice_size)
        index, inner = self._read_checkpoint(checkpoint)
        for source in self._sources[index:]:
            check = getattr(source, "check", None)
            if callable(check):
                check()
        for i in range(index, len(self._sources)):
            start = inner if i == index else None
            for part in self._sources[i].read_slices(start, slice_size=slice_size):
                yield self._wrap(i, part)

    def _read_checkpoint(self, checkpoint: JSONObject | None) -> tuple[int, JSONObject | None]:
        if checkpoint is None:
            return 0, None
        index, inner = checkpoint.get("index"), checkpoint.get("inner")
        if (
            isinstance(index, int)
            and not isinstance(index, bool)
            and 0 <= index < len(self._sources)
            and (inner is None or isinstance(inner, dict))
        ):
            return index, inner
        raise SourceError(
            f"checkpoint {checkpoint!r} does not fit this MultiSource of "
            f"{len(self._sources)} sources; was the list of files changed?"
        )

    def _wrap(self, index: int, part: SourceSlice) -> SourceSlice:
        checkpoint: JSONObject = {"index": index, "inner": part.checkpoint}
        if self._namespaces is None:
            return SourceSlice(
                items=part.items,
                checkpoint=checkpoint,
                rejected=part.rejected,
                locations=part.locations,
            )
        prefix = self._namespaces[index] + "/"
        return SourceSlice(
            items=tuple(
                BatchItem(item_id=prefix + it.item_id, payload=it.payload, metadata=it.metadata)
                for it in part.items
            ),
            checkpoint=checkpoint,
            rejected=tuple(
                RejectedRow(item_id=prefix + r.item_id, error=r.error, raw=r.raw)
                for r in part.rejected
            ),
            locations=part.locations,
        )


def _namespaces(sources: list[ItemSource]) -> list[str]:
    stems: list[str] = []
    for source in sources:
        path = getattr(source, "path", None)
        if not isinstance(path, str | os.PathLike):
            break
        stems.append(Path(path).stem)
    if len(stems) == len(sources) and all(stems) and len(set(stems)) == len(stems):
        return stems
    return [str(i) for i in range(len(sources))]
