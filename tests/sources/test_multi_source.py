"""MultiSource: order, namespaced ids, resuming across files, globbing, checks up front."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from batchor_core.errors import ConfigurationError, SourceError
from batchor_core.ports import ItemSource
from batchor_core.sources import CsvSource, JsonlSource, MultiSource, ParquetSource
from tests.sources.helpers import assert_resumes_exactly, read_all


@pytest.fixture
def files(tmp_path: Path) -> list[Path]:
    """Three files of different formats; ids 1-3 repeat in a.csv and c.parquet."""
    a = tmp_path / "a.csv"
    a.write_text("id,text\n1,a1\n2,a2\n3,a3\n")
    b = tmp_path / "b.jsonl"
    b.write_text('{"id": "4", "text": "b4"}\n{"id": 5}\n{"id": "6", "text": "b6"}\n')
    c = tmp_path / "c.parquet"
    pq.write_table(pa.table({"id": ["1", "2", "3"], "text": ["c1", "c2", "c3"]}), c)
    return [a, b, c]


def _sources(files: list[Path]) -> list[ItemSource]:
    a, b, c = files
    return [CsvSource(a), JsonlSource(b, payload_fields=["text"]), ParquetSource(c)]


def test_concatenates_in_order(files: list[Path]) -> None:
    got = read_all(MultiSource(_sources(files)), slice_size=100)
    assert got.ids == ["1", "2", "3", "4", "6", "1", "2", "3"]
    assert [len(s.items) + len(s.rejected) for s in got.slices] == [3, 3, 3]  # never mixed
    assert got.locations[3] == f"{files[1]}:1"
    assert got.rejected[0].error == f"{files[1]}:2: no payload field 'text'"
    assert got.checkpoints[0] == {"index": 0, "inner": {"offset": 23, "line": 5}}


def test_namespaced_ids_use_file_stems(files: list[Path]) -> None:
    got = read_all(MultiSource(_sources(files), namespace_ids=True))
    assert got.ids == ["a/1", "a/2", "a/3", "b/4", "b/6", "c/1", "c/2", "c/3"]
    assert got.rejected[0].item_id == "b/5"
    assert got.payloads[0] == {"id": "1", "text": "a1"}  # the payload keeps the file's id


def test_namespaced_ids_fall_back_to_indexes(files: list[Path]) -> None:
    a = files[0]
    got = read_all(MultiSource([CsvSource(a), CsvSource(a)], namespace_ids=True))
    assert got.ids == ["0/1", "0/2", "0/3", "1/1", "1/2", "1/3"]


@pytest.mark.parametrize("slice_size", [1, 2, 5])
def test_resume_from_every_checkpoint_across_files(files: list[Path], slice_size: int) -> None:
    got = assert_resumes_exactly(MultiSource(_sources(files)), slice_size=slice_size)
    assert len(got.ids) == 8


def test_resume_at_the_end_of_a_file_moves_on(files: list[Path]) -> None:
    source = MultiSource(_sources(files))
    end_of_a = read_all(source).checkpoints[0]
    assert read_all(source, end_of_a).ids == ["4", "6", "1", "2", "3"]
    last = read_all(source).checkpoints[-1]
    assert read_all(source, last).slices == []


def test_bad_checkpoints_are_refused(files: list[Path]) -> None:
    for bad in ({"index": 3, "inner": None}, {"index": "0"}, {"index": 0, "inner": 5}):
        with pytest.raises(SourceError, match="does not fit"):
            read_all(MultiSource(_sources(files)), bad)


def test_every_file_is_checked_before_the_first_item(files: list[Path], tmp_path: Path) -> None:
    (tmp_path / "d.csv").write_text("key,text\n1,a\n")
    sources = [*_sources(files), CsvSource(tmp_path / "d.csv"), CsvSource(tmp_path / "e.csv")]
    slices = MultiSource(sources).read_slices(None, slice_size=10)
    with pytest.raises(SourceError, match=r"d\.csv:1: no id column 'id'"):
        next(slices)


def test_from_glob_is_sorted_and_complete(tmp_path: Path) -> None:
    for name in ["b.csv", "a.csv", "c.csv", "notes.txt"]:
        (tmp_path / name).write_text(f"id\n{name[0]}\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.csv").write_text("id\nd\n")
    seen: list[Path] = []

    def factory(path: Path) -> CsvSource:
        seen.append(path)
        return CsvSource(path)

    got = read_all(MultiSource.from_glob(tmp_path / "*.csv", factory=factory))
    assert got.ids == ["a", "b", "c"]
    assert [p.name for p in seen] == ["a.csv", "b.csv", "c.csv"]
    deep = MultiSource.from_glob(f"{tmp_path}/**/*.csv", factory=CsvSource, namespace_ids=True)
    assert read_all(deep).ids == ["a/a", "b/b", "c/c", "d/d"]
    whole_dir = MultiSource.from_glob(tmp_path, factory=CsvSource)
    assert len(whole_dir.sources) == 4  # notes.txt too: a directory means every file in it


def test_from_glob_with_no_match_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"no files match '.*\*\.csv'"):
        MultiSource.from_glob(tmp_path / "*.csv", factory=CsvSource)
    with pytest.raises(ConfigurationError):
        MultiSource([])
