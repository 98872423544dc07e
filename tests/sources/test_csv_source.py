"""CsvSource: values, checkpoints and seeking, quoting, bad rows, bad files."""

from __future__ import annotations

import random
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pytest

from batchor_core.errors import ConfigurationError, SourceError
from batchor_core.sources import CsvSource
from tests.sources.helpers import assert_resumes_exactly, read_all


def write(path: Path, data: bytes | str) -> Path:
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


@pytest.fixture
def simple(tmp_path: Path) -> Path:
    rows = "".join(f"{i:05d},text {i},cat{i % 3}\n" for i in range(25))
    return write(tmp_path / "items.csv", "id,text,category\n" + rows)


# --------------------------------------------------------------------------- values


def test_values_are_strings_exactly_as_written(tmp_path: Path) -> None:
    path = write(
        tmp_path / "v.csv",
        'id,n,flag,empty,nul,date\n00123,007,true,,NULL,2024-01-01\n"9",1e3,"",,NA,x\n',
    )
    got = read_all(CsvSource(path))
    assert got.ids == ["00123", "9"]
    assert got.payloads == [
        {
            "id": "00123",
            "n": "007",
            "flag": "true",
            "empty": "",
            "nul": "NULL",
            "date": "2024-01-01",
        },
        {"id": "9", "n": "1e3", "flag": "", "empty": "", "nul": "NA", "date": "x"},
    ]
    assert got.metadata == [None, None]
    assert got.locations == [f"{path}:2", f"{path}:3"]


def test_payload_and_metadata_selection(simple: Path) -> None:
    got = read_all(CsvSource(simple, payload_columns=["text"], metadata_columns=["category"]))
    assert got.ids[:2] == ["00000", "00001"]
    assert got.payloads[1] == {"text": "text 1"}
    assert got.metadata[1] == {"category": "cat1"}


def test_other_id_column_and_id_fn(tmp_path: Path) -> None:
    path = write(tmp_path / "k.csv", "key,a,b\nk1,x,y\nk2,z,w\n")
    assert read_all(CsvSource(path, id_column="key")).ids == ["k1", "k2"]
    got = read_all(CsvSource(path, id_fn=lambda row: f"{row['key']}-{row['a']}"))
    assert got.ids == ["k1-x", "k2-z"]
    assert got.payloads[0] == {"key": "k1", "a": "x", "b": "y"}


def test_id_fn_failures_are_bad_rows(tmp_path: Path) -> None:
    path = write(tmp_path / "k.csv", "a\n1\n0\n")
    got = read_all(CsvSource(path, id_fn=lambda row: 10 // int(row["a"])))
    assert got.ids == ["10"]
    assert "id_fn raised ZeroDivisionError" in got.rejected[0].error


def test_other_delimiter_and_quote(tmp_path: Path) -> None:
    path = write(tmp_path / "t.tsv", "id\ttext\n1\t'a\tb'\n2\tc\n")
    got = read_all(CsvSource(path, delimiter="\t", quote_char="'"))
    assert got.payloads == [{"id": "1", "text": "a\tb"}, {"id": "2", "text": "c"}]


def test_options_are_checked() -> None:
    with pytest.raises(ConfigurationError):
        CsvSource("x.csv", id_column="id", id_fn=lambda row: "x")
    with pytest.raises(ConfigurationError):
        CsvSource("x.csv", on_bad_row="ignore")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError):
        CsvSource("x.csv", delimiter=",,")
    with pytest.raises(ConfigurationError):
        CsvSource("x.csv", payload_columns="text")
    with pytest.raises(ConfigurationError):
        CsvSource("x.csv", payload_columns=["a", "a"])


# --------------------------------------------------------------------------- format details


def test_quoted_delimiters_quotes_and_newlines(tmp_path: Path) -> None:
    data = (
        'id,text\n1,"a, b"\n2,"say ""hi"""\n3,"line one\nline two\n\nline four"\n'
        '4,plain\n5,"cr\r\nlf"\n6,5\'11"\n'
    )
    path = write(tmp_path / "q.csv", data)
    got = read_all(CsvSource(path), slice_size=2)
    assert [p["text"] for p in got.payloads] == [
        "a, b",
        'say "hi"',
        "line one\nline two\n\nline four",
        "plain",
        "cr\r\nlf",
        "5'11\"",
    ]
    assert got.locations == [f"{path}:{n}" for n in (2, 3, 4, 8, 9, 11)]
    assert_resumes_exactly(CsvSource(path), slice_size=1)


def test_crlf_line_endings_and_bom(tmp_path: Path) -> None:
    path = write(tmp_path / "w.csv", b'\xef\xbb\xbfid,text\r\n1,a\r\n2,"b\r\nc"\r\n\r\n3,d\r\n')
    got = read_all(CsvSource(path))
    assert got.ids == ["1", "2", "3"]
    assert got.payloads[0] == {"id": "1", "text": "a"}  # no BOM in the first column name
    assert got.payloads[1]["text"] == "b\r\nc"
    assert got.locations == [f"{path}:2", f"{path}:3", f"{path}:6"]
    assert_resumes_exactly(CsvSource(path), slice_size=1)


def test_blank_lines_are_skipped_and_no_final_newline(tmp_path: Path) -> None:
    path = write(tmp_path / "b.csv", "\n\nid,text\n\n1,a\n\n\n2,b")
    got = read_all(CsvSource(path))
    assert got.ids == ["1", "2"]
    assert got.locations == [f"{path}:5", f"{path}:8"]
    assert got.checkpoints[-1]["offset"] == path.stat().st_size


def test_records_crossing_block_boundaries(tmp_path: Path) -> None:
    rng = random.Random(7)
    lines = ["id,text"]
    for i in range(120):
        size = rng.randrange(0, 900) if i % 20 else 3000  # some records outgrow a block
        text = "".join(rng.choice("ab ,\n") for _ in range(size))
        lines.append(f'{i},"{text}"')
    path = write(tmp_path / "big.csv", "\r\n".join(lines) + "\r\n")
    source = CsvSource(path, block_bytes=1024)
    got = assert_resumes_exactly(source, slice_size=23)
    assert got.ids == [str(i) for i in range(120)]
    assert read_all(CsvSource(path)).payloads == got.payloads


def test_a_quote_left_open_stops_with_a_clear_error(tmp_path: Path) -> None:
    path = write(tmp_path / "open.csv", 'id,text\n1,ok\n2,"never closed\n' + "3,x\n" * 2000)
    source = CsvSource(path, block_bytes=1024, max_record_bytes=4096)
    with pytest.raises(SourceError, match=r"open\.csv:3: record is longer than 4096 bytes"):
        read_all(source)


# --------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("slice_size", [1, 2, 7, 25, 1000])
def test_resume_from_every_checkpoint(simple: Path, slice_size: int) -> None:
    got = assert_resumes_exactly(CsvSource(simple), slice_size=slice_size)
    assert len(got.ids) == 25


def test_checkpoint_is_the_byte_offset_and_line_of_the_next_record(simple: Path) -> None:
    data = simple.read_bytes()
    got = read_all(CsvSource(simple), slice_size=10)
    first = got.checkpoints[0]
    assert data[first["offset"] :].startswith(b"00010,text 10,")
    assert data[: first["offset"]].count(b"\n") == first["line"] - 1 == 11
    assert got.checkpoints[-1] == {"offset": len(data), "line": 27}
    assert read_all(CsvSource(simple), got.checkpoints[-1]).slices == []


def test_resume_seeks_instead_of_rereading(simple: Path) -> None:
    got = read_all(CsvSource(simple), slice_size=10)
    checkpoint = got.checkpoints[1]
    data = bytearray(simple.read_bytes())
    header_end = data.index(b"\n") + 1
    # Garbage (no line breaks, wrong field count) over every record before the checkpoint:
    # a reader that rescanned would reject it; a seeking reader never sees it.
    data[header_end : checkpoint["offset"]] = b"x" * (checkpoint["offset"] - header_end)
    simple.write_bytes(bytes(data))
    resumed = read_all(CsvSource(simple), checkpoint, slice_size=10)
    assert resumed.ids == got.ids[20:]
    assert resumed.rejected == []
    assert resumed.locations == got.locations[20:]


def test_checkpoint_that_does_not_fit_is_refused(simple: Path) -> None:
    for bad in ({"offset": 10**9, "line": 3}, {"offset": 2, "line": 1}, {"row": 1}):
        with pytest.raises(SourceError, match="does not fit"):
            read_all(CsvSource(simple), bad)


# --------------------------------------------------------------------------- bad rows


BAD_ROWS = (
    b"id,text,category\n"
    b"1,ok,a\n"
    b"2,too,many,fields\n"
    b"3,too few\n"
    b",empty id,c\n"
    b"5,\xff\xfe bad utf8,d\n"
    b"6,ok,e\n"
)


def test_bad_rows_are_recorded(tmp_path: Path) -> None:
    path = write(tmp_path / "bad.csv", BAD_ROWS)
    got = read_all(CsvSource(path), slice_size=2)
    assert got.ids == ["1", "6"]
    assert got.locations == [f"{path}:2", f"{path}:7"]
    errors = [(r.item_id, r.error, r.raw) for r in got.rejected]
    assert errors == [
        (f"{path}:3", f"{path}:3: expected 3 fields, got 4", {"line": "2,too,many,fields"}),
        (f"{path}:4", f"{path}:4: expected 3 fields, got 2", {"line": "3,too few"}),
        (f"{path}:5", f"{path}:5: empty id", {"line": ",empty id,c"}),
        (
            "5",
            f"{path}:6: invalid UTF-8 in column 'text'",
            {"line": "5,\ufffd\ufffd bad utf8,d"},
        ),
    ]
    assert_resumes_exactly(CsvSource(path), slice_size=1)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (3, "expected 3 fields, got 4"),
        (4, "expected 3 fields, got 2"),
        (5, "empty id"),
        (6, "invalid UTF-8 in column 'text'"),
    ],
)
def test_bad_rows_raise_when_asked(tmp_path: Path, line: int, message: str) -> None:
    lines = BAD_ROWS.splitlines(keepends=True)
    data = b"".join([*lines[:2], lines[line - 1], *lines[6:]])
    path = write(tmp_path / "bad.csv", data)
    with pytest.raises(SourceError) as info:
        read_all(CsvSource(path, on_bad_row="raise"))
    assert str(info.value).startswith(f"{path}:3: {message}")
    assert "\n" not in str(info.value)


def test_too_long_id_is_a_bad_row(tmp_path: Path) -> None:
    path = write(tmp_path / "long.csv", f"id\n{'x' * 513}\nok\n")
    got = read_all(CsvSource(path))
    assert got.ids == ["ok"]
    assert "513 characters" in got.rejected[0].error


# --------------------------------------------------------------------------- bad files


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", r"file is empty \(0 bytes\)"),
        (b"\n\n", "has no header line"),
        (b"id,text\n", "has a header line but no data rows"),
        (b"id,text\r\n\r\n\r\n", "has a header line but no data rows"),
        (b"key,text\n1,a\n", r"1: no id column 'id' in the header; columns are 'key', 'text'"),
        (b"id,id\n1,a\n", "column 'id' appears twice"),
        (b"\xffid,text\n1,a\n", "header line is not valid UTF-8"),
    ],
)
def test_file_level_problems_raise_before_any_item(
    tmp_path: Path, data: bytes, message: str
) -> None:
    path = write(tmp_path / "f.csv", data)
    source = CsvSource(path)
    with pytest.raises(SourceError, match=message) as info:
        next(source.read_slices(None, slice_size=10))
    assert str(path) in str(info.value)
    with pytest.raises(SourceError, match=message):
        source.check()


def test_missing_selected_columns(simple: Path) -> None:
    with pytest.raises(SourceError, match="no payload column 'body'"):
        read_all(CsvSource(simple, payload_columns=["body"]))
    with pytest.raises(SourceError, match="no metadata column 'm'"):
        read_all(CsvSource(simple, metadata_columns=["m"]))


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"nope\.csv: file not found"):
        read_all(CsvSource(tmp_path / "nope.csv"))
    with pytest.raises(SourceError, match="not a regular file"):
        read_all(CsvSource(tmp_path))
    with pytest.raises(SourceError, match="file not found"):
        CsvSource(tmp_path / "nope.csv").identity()


# --------------------------------------------------------------------------- fuzz


def _random_csv(rng: random.Random) -> tuple[bytes, list[list[str]], list[int]]:
    """A CSV with nasty values, the rows it holds and the line each row starts on."""
    newline = rng.choice(["\n", "\r\n"])
    pieces = ["a", "b", ",", '"', "\n", "\r\n", " ", "é", "x" * 50]
    out = [f"id,text,other{newline}"]
    rows: list[list[str]] = []
    lines: list[int] = []
    line = 2
    for i in range(rng.randrange(1, 120)):
        while rng.random() < 0.1:
            out.append(newline)
            line += 1
        text = "".join(rng.choice(pieces) for _ in range(rng.randrange(0, 12)))
        other = rng.choice(["", "plain", 'in"side', "x" * rng.randrange(0, 300)])
        quoted = '"' + text.replace('"', '""') + '"'
        out.append(f"{i},{quoted},{other}{newline}")
        rows.append([str(i), text, other])
        lines.append(line)
        line += quoted.count("\n") + 1
    if rng.random() < 0.5:
        out[-1] = out[-1].removesuffix(newline)
    return "".join(out).encode(), rows, lines


@pytest.mark.parametrize("seed", range(12))
def test_fuzz_against_a_one_shot_pyarrow_read(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    data, rows, lines = _random_csv(rng)
    path = write(tmp_path / "fuzz.csv", data)
    whole = pacsv.read_csv(
        pa.BufferReader(data),
        convert_options=pacsv.ConvertOptions(
            column_types={n: pa.string() for n in ("id", "text", "other")},
            strings_can_be_null=False,
        ),
        parse_options=pacsv.ParseOptions(newlines_in_values=True),
    ).to_pylist()
    assert [[r["id"], r["text"], r["other"]] for r in whole] == rows
    source = CsvSource(path, block_bytes=1024)
    got = assert_resumes_exactly(source, slice_size=rng.randrange(1, 40))
    assert [[p["id"], p["text"], p["other"]] for p in got.payloads] == rows
    assert got.locations == [f"{path}:{n}" for n in lines]
    assert got.rejected == []


@pytest.mark.parametrize("seed", range(12))
def test_fuzz_arbitrary_bytes_agree_with_pyarrow(tmp_path: Path, seed: int) -> None:
    """Unbalanced quotes, stray quotes, lone CRs, ragged rows: the same rows as pyarrow."""
    rng = random.Random(1000 + seed)
    alphabet = [b"a", b"b", b",", b'"', b'""', b"\n", b"\r\n", b"\r", b"x" * 40]
    body = b"".join(rng.choice(alphabet) for _ in range(rng.randrange(50, 600)))
    data = b"id,text\n" + b"1,a\n" + body
    path = write(tmp_path / "weird.csv", data)
    ragged: list[int] = []
    whole = pacsv.read_csv(
        pa.BufferReader(data),
        convert_options=pacsv.ConvertOptions(
            column_types={"id": pa.string(), "text": pa.string()}, strings_can_be_null=False
        ),
        parse_options=pacsv.ParseOptions(
            newlines_in_values=True, invalid_row_handler=lambda row: ragged.append(1) or "skip"
        ),
    ).to_pylist()
    got = assert_resumes_exactly(CsvSource(path, block_bytes=1024), slice_size=3)
    expected = [r for r in whole if r["id"]]
    assert got.payloads == expected
    assert len(got.rejected) == len(ragged) + (len(whole) - len(expected))
