"""Stored result rows become public results: the fast builders give the public classes."""

from __future__ import annotations

import copy
import dataclasses
import pickle

import pytest

from batchor_core.models import ItemError, ItemResult, ItemStatus, Usage
from batchor_core.records import ResultRow
from batchor_core.result_rows import item_results, new_item_error, new_item_result, new_usage


def test_built_objects_are_the_public_frozen_classes() -> None:
    """Equality, hash, repr, immutability, copies and dataclass helpers all behave as
    for objects from the public constructors (they are instances of those classes)."""
    built = new_item_result(
        "a", ItemStatus.FAILED, None, new_item_error("x", "y"), 2, new_usage(3, 4, 1, 0), None, 9
    )
    public = ItemResult(
        "a", ItemStatus.FAILED, None, ItemError("x", "y"), 2, Usage(3, 4, 1, 0), None, 9
    )
    assert type(built) is ItemResult and type(built.usage) is Usage
    assert type(built.error) is ItemError
    assert built == public and hash(built) == hash(public) and repr(built) == repr(public)
    assert built.usage is not None and built.usage.total_tokens == 7
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.attempts = 3  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.usage.input_tokens = 0  # type: ignore[misc]
    assert pickle.loads(pickle.dumps(built)) == public and copy.deepcopy(built) == public
    assert dataclasses.replace(built, attempts=5) == dataclasses.replace(public, attempts=5)
    assert dataclasses.asdict(built) == dataclasses.asdict(public)
    assert built != dataclasses.replace(public, cursor=10)


def _row(status: str, **kw: object) -> ResultRow:
    base = dict.fromkeys(ResultRow._fields)
    base.update(item_id="i", status=status, attempts=1, finished_seq=4)
    base.update(kw)
    return ResultRow(**base)  # type: ignore[arg-type]


def test_rows_become_results_like_the_public_constructor_makes_them() -> None:
    rows = [
        _row("completed", output_json='{"a": 1}', input_tokens=5, output_tokens=2),
        _row("failed", error_code="refusal", error_message=None, metadata_json='{"k": 1}'),
        _row("pending", error_code="http_500", error_message="x", finished_seq=0),
        _row("cancelled", output_json='"ignored"', input_tokens=None, cached_input_tokens=3),
        _row("completed", error_code="stale", output_tokens=1),  # an old error: not shown
    ]
    got = list(item_results(rows, lambda text: ("parsed", text)))
    assert got == [
        ItemResult(
            "i", ItemStatus.COMPLETED, ("parsed", '{"a": 1}'), None, 1, Usage(5, 2), None, 4
        ),
        ItemResult("i", ItemStatus.FAILED, None, ItemError("refusal", ""), 1, None, {"k": 1}, 4),
        ItemResult("i", ItemStatus.PENDING, None, ItemError("http_500", "x"), 1, None, None, 0),
        ItemResult("i", ItemStatus.CANCELLED, None, None, 1, None, None, 4),
        ItemResult("i", ItemStatus.COMPLETED, None, None, 1, Usage(0, 1), None, 4),
    ]
    assert all(type(r.status) is ItemStatus for r in got)
