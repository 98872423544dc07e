"""Helpers shared by the source tests: read everything, compare resumed reads."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from batchor_core.ports import ItemSource, SourceSlice


@dataclass(frozen=True)
class Read:
    """Everything a source yielded, flattened, plus the slices themselves."""

    slices: list[SourceSlice]

    @property
    def ids(self) -> list[str]:
        return [item.item_id for s in self.slices for item in s.items]

    @property
    def payloads(self) -> list[Any]:
        return [dict(item.payload) for s in self.slices for item in s.items]

    @property
    def metadata(self) -> list[Any]:
        return [item.metadata for s in self.slices for item in s.items]

    @property
    def locations(self) -> list[str]:
        return [loc for s in self.slices for loc in s.locations]

    @property
    def rejected(self) -> list[Any]:
        return [r for s in self.slices for r in s.rejected]

    @property
    def checkpoints(self) -> list[dict[str, Any]]:
        return [dict(s.checkpoint) for s in self.slices]


def read_all(
    source: ItemSource, checkpoint: dict[str, Any] | None = None, *, slice_size: int = 1000
) -> Read:
    """Read a source to the end (checkpoints go through JSON, as the runner stores them)."""
    if checkpoint is not None:
        checkpoint = json.loads(json.dumps(checkpoint))
    slices = list(source.read_slices(checkpoint, slice_size=slice_size))
    for s in slices:
        assert len(s.items) + len(s.rejected) <= slice_size
        assert len(s.items) + len(s.rejected) > 0
        assert len(s.locations) == len(s.items)
        json.dumps(s.checkpoint)
        for item in s.items:
            json.dumps(item.payload)
            json.dumps(item.metadata)
        for r in s.rejected:
            json.dumps(r.raw)
    return Read(slices)


def _slice_key(s: SourceSlice) -> tuple[Any, ...]:
    return (tuple(s.items), tuple(s.rejected), tuple(s.locations), json.dumps(s.checkpoint))


def assert_resumes_exactly(source: ItemSource, *, slice_size: int) -> Read:
    """Resuming from every yielded checkpoint yields exactly the slices that followed it."""
    full = read_all(source, slice_size=slice_size)
    assert full.slices, "the source yielded nothing"
    for index, part in enumerate(full.slices):
        rest = read_all(source, dict(part.checkpoint), slice_size=slice_size)
        assert [_slice_key(s) for s in rest.slices] == [
            _slice_key(s) for s in full.slices[index + 1 :]
        ], f"resume after slice {index} ({part.checkpoint}) differs"
    # another slice size from the middle: same rows, regrouped
    middle = full.slices[len(full.slices) // 2]
    after = full.slices[len(full.slices) // 2 + 1 :]
    regrouped = read_all(source, dict(middle.checkpoint), slice_size=max(1, slice_size // 2 + 1))
    assert regrouped.ids == [i.item_id for s in after for i in s.items]
    assert regrouped.rejected == [r for s in after for r in s.rejected]
    return full
