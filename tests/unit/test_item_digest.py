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


def test_the_orjson_digest_is_the_per_item_digest_runs_were_started_with() -> None:
    """Slices are digested whole; the result must stay the per-item sha256 that
    checkpoints already in stores were written with (else their runs would not resume)."""
    from types import MappingProxyType

    import orjson

    items = [
        BatchItem(item_id="a", payload={"z": 1, "y": "é"}, metadata=None),
        BatchItem(item_id="b", payload=MappingProxyType({"x": [1.5, None]}), metadata={"m": 1}),
        BatchItem(item_id="c", payload={"wide": 2**70}),  # orjson refuses: standard library
        BatchItem(item_id="d", payload={}, metadata={"k": "v"}),
        BatchItem(item_id="e", payload={"n": {"b": 2, "a": 1}}),
    ]
    digest = hashlib.sha256()
    for item in items:  # what the previous release did, item by item
        try:
            line = orjson.dumps(
                [item.item_id, dict(item.payload), item.metadata],
                option=orjson.OPT_SORT_KEYS,
                default=repr,
            )
        except TypeError:
            line = json.dumps(
                [item.item_id, dict(item.payload), item.metadata],
                sort_keys=True,
                separators=(",", ":"),
                default=repr,
            ).encode()
        digest.update(line + b"\n")
    slices = list(IterableSource(items).read_slices(None, slice_size=2))
    assert slices[-1].checkpoint == {
        "consumed": 5,
        "digest": digest.hexdigest(),
        "digest_codec": "orjson",
    }
    IterableSource(items).check_complete(slices[-1].checkpoint)
    (rest,) = IterableSource(items).read_slices(slices[1].checkpoint, slice_size=10)
    assert rest.checkpoint == slices[-1].checkpoint
