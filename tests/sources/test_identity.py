"""Identities by content: moving or touching keeps them, editing or re-optioning changes them."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchor_core.ports import ItemSource
from batchor_core.sources import (
    CsvSource,
    JsonlSource,
    MultiSource,
    ParquetSource,
    describe_identity_change,
)

Factory = Callable[..., ItemSource]


def _csv(path: Path) -> Path:
    path.write_text("id,text,cat\n1,a,x\n2,b,y\n")
    return path


def _jsonl(path: Path) -> Path:
    path.write_text('{"id": "1", "text": "a"}\n{"id": "2", "text": "b"}\n')
    return path


def _parquet(path: Path) -> Path:
    pq.write_table(pa.table({"id": ["1", "2"], "text": ["a", "b"]}), path)
    return path


FORMATS = [
    pytest.param(CsvSource, _csv, "csv", {"id_column": "text"}, id="csv"),
    pytest.param(JsonlSource, _jsonl, "jsonl", {"id_field": "text"}, id="jsonl"),
    pytest.param(ParquetSource, _parquet, "parquet", {"id_column": "text"}, id="parquet"),
]


@pytest.mark.parametrize(("factory", "make", "kind", "other_id"), FORMATS)
def test_identity_follows_content_not_path(
    tmp_path: Path,
    factory: Factory,
    make: Callable[[Path], Path],
    kind: str,
    other_id: dict[str, str],
) -> None:
    path = make(tmp_path / f"a.{kind}")
    before = factory(path).identity()
    assert before["kind"] == kind
    assert before["size"] == path.stat().st_size
    assert len(before["sha256"]) == 64
    assert str(path) not in json.dumps(before) and "a." not in json.dumps(before)
    assert json.loads(json.dumps(before)) == before  # survives the store's JSON round trip

    moved = tmp_path / "elsewhere" / f"b.{kind}"
    moved.parent.mkdir()
    shutil.copy(path, moved)
    path.unlink()
    os.utime(moved, (1_000_000, 1_000_000))
    assert factory(moved).identity() == before
    assert factory(str(moved)).identity() == before

    data = bytearray(moved.read_bytes())
    data[-2] ^= 0x01  # one byte, same size
    moved.write_bytes(bytes(data))
    edited = factory(moved).identity()
    assert edited != before
    assert describe_identity_change(before, edited).startswith(
        f"file content changed (same size {before['size']}, sha256 "
    )

    assert factory(moved, **other_id).identity()["options"] != edited["options"]


def test_identity_is_hashed_once_per_instance(tmp_path: Path) -> None:
    path = _csv(tmp_path / "a.csv")
    source = CsvSource(path)
    first = source.identity()
    path.write_text("id,text,cat\n1,a,x\n")
    assert source.identity() == first
    assert CsvSource(path).identity() != first


def test_options_that_shape_items_are_in_the_identity(tmp_path: Path) -> None:
    path = _csv(tmp_path / "a.csv")
    base = CsvSource(path).identity()
    changed = [
        CsvSource(path, id_column="text"),
        CsvSource(path, payload_columns=["text"]),
        CsvSource(path, metadata_columns=["cat"]),
        CsvSource(path, delimiter=";"),
        CsvSource(path, id_fn=len),
    ]
    assert all(s.identity() != base for s in changed)
    same = [CsvSource(path, on_bad_row="raise"), CsvSource(path, block_bytes=4096)]
    assert all(s.identity() == base for s in same)


def test_describe_identity_change(tmp_path: Path) -> None:
    path = _csv(tmp_path / "a.csv")
    old = CsvSource(path).identity()
    assert describe_identity_change(old, old) == "no change"
    assert (
        describe_identity_change(old, CsvSource(path, id_column="text").identity())
        == "id column changed 'id' -> 'text'"
    )
    assert (
        describe_identity_change(old, CsvSource(path, payload_columns=["text"]).identity())
        == "payload columns changed None -> ['text']"
    )
    path.write_text("id,text,cat\n1,a,x\n2,b,y\n3,c,z\n")
    new = CsvSource(path, metadata_columns=["cat"]).identity()
    assert describe_identity_change(old, new) == (
        f"file content changed (size {old['size']} -> {new['size']}); "
        "metadata columns changed None -> ['cat']"
    )
    jsonl = JsonlSource(_jsonl(tmp_path / "a.jsonl")).identity()
    assert describe_identity_change(old, jsonl) == "source kind changed 'csv' -> 'jsonl'"
    assert "\n" not in describe_identity_change({"kind": "iterable"}, old)


def test_describe_multi_identity_change(tmp_path: Path) -> None:
    a, b = _csv(tmp_path / "a.csv"), _csv(tmp_path / "b.csv")
    old = MultiSource([CsvSource(a), CsvSource(b)]).identity()
    b.write_text("id,text,cat\n9,z,z\n")
    new = MultiSource([CsvSource(a), CsvSource(b)]).identity()
    assert describe_identity_change(old, new).startswith(
        "source #2 of 2: file content changed (size"
    )
    three = MultiSource([CsvSource(a), CsvSource(b), CsvSource(a)]).identity()
    assert describe_identity_change(new, three) == "number of files changed 2 -> 3"
    spaced = MultiSource([CsvSource(a), CsvSource(b)], namespace_ids=True).identity()
    assert describe_identity_change(new, spaced).startswith("namespace_ids changed False -> True")
