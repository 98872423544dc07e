"""ParquetSource: JSON-safe values, row-group checkpoints and seeking, bad rows, bad files."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchor_core.errors import ConfigurationError, SourceError
from batchor_core.sources import ParquetSource
from tests.sources.helpers import assert_resumes_exactly, read_all


def write(path: Path, table: pa.Table, *, row_group_size: int | None = None) -> Path:
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


@pytest.fixture
def grouped(tmp_path: Path) -> Path:
    """25 rows in row groups of 10, 10 and 5."""
    table = pa.table(
        {
            "id": [f"{i:04d}" for i in range(25)],
            "text": [f"t{i}" for i in range(25)],
            "n": list(range(25)),
        }
    )
    return write(tmp_path / "items.parquet", table, row_group_size=10)


# --------------------------------------------------------------------------- values


def test_values_become_json_safe(tmp_path: Path) -> None:
    utc = dt.UTC
    table = pa.table(
        {
            "id": pa.array([1, 2], pa.int64()),
            "s": ["a", None],
            "f": [1.5, float("nan")],
            "b": [True, False],
            "d": [dt.date(2024, 5, 1), None],
            "ts": pa.array(
                [dt.datetime(2024, 5, 1, 12, 30, tzinfo=utc), None], pa.timestamp("us", "UTC")
            ),
            "ns": pa.array([1_700_000_000_123_456_789, 0], pa.timestamp("ns")),
            "t": [dt.time(1, 2, 3), None],
            "dur": pa.array([1_500, None], pa.duration("ms")),
            "dec": pa.array([Decimal("12.50"), None], pa.decimal128(6, 2)),
            "bin": [b"\x00\xff", None],
            "cat": pa.array(["x", "y"]).dictionary_encode(),
            "list": [[1, 2], []],
            "struct": [{"k": dt.date(2020, 1, 2), "v": b"hi"}, None],
            "map": pa.array([[("a", 1)], None], pa.map_(pa.string(), pa.int64())),
        }
    )
    path = write(tmp_path / "v.parquet", table)
    got = read_all(ParquetSource(path))
    assert got.ids == ["1", "2"]
    assert got.payloads == [
        {
            "id": 1,
            "s": "a",
            "f": 1.5,
            "b": True,
            "d": "2024-05-01",
            "ts": "2024-05-01T12:30:00+00:00",
            "ns": "2023-11-14T22:13:20.123456789",
            "t": "01:02:03",
            "dur": 1.5,
            "dec": "12.50",
            "bin": "AP8=",
            "cat": "x",
            "list": [1, 2],
            "struct": {"k": "2020-01-02", "v": "aGk="},
            "map": {"a": 1},
        },
        {
            "id": 2,
            "s": None,
            "f": None,
            "b": False,
            "d": None,
            "ts": None,
            "ns": "1970-01-01T00:00:00",
            "t": None,
            "dur": None,
            "dec": None,
            "bin": None,
            "cat": "y",
            "list": [],
            "struct": None,
            "map": None,
        },
    ]
    assert got.locations == [f"{path}:1", f"{path}:2"]


def test_payload_metadata_and_id_fn(grouped: Path) -> None:
    got = read_all(ParquetSource(grouped, payload_columns=["text"], metadata_columns=["n"]))
    assert got.ids[:2] == ["0000", "0001"]
    assert got.payloads[12] == {"text": "t12"}
    assert got.metadata[12] == {"n": 12}
    got = read_all(ParquetSource(grouped, id_fn=lambda row: f"{row['text']}-{row['n']}"))
    assert got.ids[:2] == ["t0-0", "t1-1"]


def test_options_are_checked() -> None:
    with pytest.raises(ConfigurationError):
        ParquetSource("x.parquet", id_column="id", id_fn=lambda row: "x")
    with pytest.raises(ConfigurationError):
        ParquetSource("x.parquet", batch_rows=0)


# --------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize(("slice_size", "batch_rows"), [(1, 3), (4, 3), (10, 8192), (7, 2)])
def test_resume_from_every_checkpoint(grouped: Path, slice_size: int, batch_rows: int) -> None:
    got = assert_resumes_exactly(
        ParquetSource(grouped, batch_rows=batch_rows), slice_size=slice_size
    )
    assert got.ids == [f"{i:04d}" for i in range(25)]
    assert got.locations == [f"{grouped}:{i}" for i in range(1, 26)]


def test_checkpoints_name_row_group_and_row(grouped: Path) -> None:
    got = read_all(ParquetSource(grouped), slice_size=4)
    assert got.checkpoints == [
        {"row_group": 0, "row": 4},
        {"row_group": 0, "row": 8},
        {"row_group": 1, "row": 2},
        {"row_group": 1, "row": 6},
        {"row_group": 2, "row": 0},
        {"row_group": 2, "row": 4},
        {"row_group": 3, "row": 0},
    ]
    assert read_all(ParquetSource(grouped), {"row_group": 3, "row": 0}).slices == []
    middle = read_all(ParquetSource(grouped), {"row_group": 1, "row": 3})
    assert middle.ids == [f"{i:04d}" for i in range(13, 25)]


def test_resume_never_reads_earlier_row_groups(grouped: Path) -> None:
    meta = pq.ParquetFile(grouped).metadata
    data = bytearray(grouped.read_bytes())
    group = meta.row_group(0)
    for c in range(group.num_columns):
        column = group.column(c)
        start = column.dictionary_page_offset or column.data_page_offset
        data[start : start + column.total_compressed_size] = b"\x00" * column.total_compressed_size
    grouped.write_bytes(bytes(data))
    with pytest.raises(SourceError, match="cannot read row group 0"):
        read_all(ParquetSource(grouped))
    resumed = read_all(ParquetSource(grouped), {"row_group": 1, "row": 0})
    assert resumed.ids == [f"{i:04d}" for i in range(10, 25)]


def test_checkpoint_that_does_not_fit_is_refused(grouped: Path) -> None:
    for bad in ({"row_group": 4, "row": 0}, {"row_group": 0, "row": 11}, {"offset": 0}):
        with pytest.raises(SourceError, match="does not fit"):
            read_all(ParquetSource(grouped), bad)


# --------------------------------------------------------------------------- bad rows


def _bad_table() -> pa.Table:
    bad_text = pa.array([b"ok", b"\xff", b"ok", b"ok", b"ok"], pa.binary()).view(pa.string())
    return pa.table({"id": ["a", "b", None, "", "e"], "text": bad_text})


def test_bad_rows_are_recorded(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.parquet", _bad_table(), row_group_size=2)
    got = read_all(ParquetSource(path))
    assert got.ids == ["a", "e"]
    assert got.locations == [f"{path}:1", f"{path}:5"]
    assert [(r.item_id, r.error) for r in got.rejected] == [
        ("b", f"{path}:2: invalid UTF-8 in column 'text'"),
        (f"{path}:3", f"{path}:3: null id"),
        (f"{path}:4", f"{path}:4: empty id"),
    ]
    assert got.rejected[1].raw == {"row": {"id": None, "text": "ok"}}
    assert_resumes_exactly(ParquetSource(path), slice_size=1)


@pytest.mark.parametrize(
    ("row", "message"),
    [(1, "invalid UTF-8 in column 'text'"), (2, "null id"), (3, "empty id")],
)
def test_bad_rows_raise_when_asked(tmp_path: Path, row: int, message: str) -> None:
    path = write(tmp_path / "bad.parquet", _bad_table().slice(row, 1))
    with pytest.raises(SourceError) as info:
        read_all(ParquetSource(path, on_bad_row="raise"))
    assert str(info.value).startswith(f"{path}:1: {message}")


# --------------------------------------------------------------------------- bad files


def test_file_level_problems_raise_before_any_item(tmp_path: Path) -> None:
    cases = {
        "empty.parquet": (b"", r"file is empty \(0 bytes\)"),
        "text.parquet": (b"id,text\n1,a\n", "not a readable Parquet file"),
    }
    for name, (data, message) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(SourceError, match=message):
            next(ParquetSource(tmp_path / name).read_slices(None, slice_size=10))
    no_rows = write(tmp_path / "none.parquet", pa.table({"id": pa.array([], pa.string())}))
    no_id = write(tmp_path / "noid.parquet", pa.table({"key": ["a"]}))
    float_id = write(tmp_path / "float.parquet", pa.table({"id": [1.5]}))
    for path, message in [
        (no_rows, "has no rows"),
        (no_id, "no id column 'id' in the schema; columns are 'key'"),
        (float_id, "id column 'id' has type double; it must hold strings or integers"),
    ]:
        with pytest.raises(SourceError, match=message) as info:
            next(ParquetSource(path).read_slices(None, slice_size=10))
        assert str(path) in str(info.value)
        with pytest.raises(SourceError, match=message):
            ParquetSource(path).check()
    with pytest.raises(SourceError, match="no payload column 'body'"):
        ParquetSource(no_id, id_column="key", payload_columns=["body"]).check()
    with pytest.raises(SourceError, match="file not found"):
        ParquetSource(tmp_path / "nope.parquet").check()
