"""The digest that ties an iterable's checkpoint to its items, across batchor versions."""

from __future__ import annotations

import hashlib
import json

import pytest

from batchor_core import BatchItem, SourceChangedError
from batchor_core.ingest import IterableSource


def _items(word: str = "same") -> list[BatchItem]:
    return [
        BatchItem(item_id=f"r{i}", payload={"b": word, "a": [i, 2**70]}, metadata={"k": i})
        for i in range(4)
    ]


def _old_checkpoint(items: list[BatchItem]) -> dict[str, object]:
    """A checkpoint as the release before ``digest_codec`` wrote it (standard json)."""
    digest = hashlib.sha256()
    for item in items:
        canonical = json.dumps(
            [item.item_id, dict(item.payload), item.metadata],
            sort_keys=True,
            separators=(",", ":"),
            default=repr,
        )
        digest.update(canonical.encode() + b"\n")
    return {"consumed": len(items), "digest": digest.hexdigest()}


def test_a_checkpoint_of_the_previous_release_still_resumes_and_still_detects_changes() -> None:
    old = _old_checkpoint(_items()[:2])
    (rest,) = IterableSource(_items()).read_slices(old, slice_size=10)
    assert [it.item_id for it in rest.items] == ["r2", "r3"]
    assert rest.checkpoint["digest_codec"] == "json"  # the run keeps its codec
    with pytest.raises(SourceChangedError, match="first 2 items differ"):
        list(IterableSource(_items("other")).read_slices(old, slice_size=10))
    IterableSource(_items()).check_complete(rest.checkpoint)


def test_new_checkpoints_detect_changed_items_including_wide_integers() -> None:
    first, _rest = IterableSource(_items()).read_slices(None, slice_size=2)
    assert first.checkpoint["digest_codec"] == "orjson"
    changed = _items()
    changed[1] = BatchItem(
        item_id="r1", payload={"b": "same", "a": [1, 2**70 + 1]}, metadata={"k": 1}
    )
    with pytest.raises(SourceChangedError, match="first 2 items differ"):
        list(IterableSource(changed).read_slices(first.checkpoint, slice_size=2))
    resumed = list(IterableSource(_items()).read_slices(first.checkpoint, slice_size=2))
    assert [it.item_id for it in resumed[0].items] == ["r2", "r3"]
