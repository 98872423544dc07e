"""JsonlSource: values, checkpoints and seeking, bad lines, bad files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from batchor_core.errors import ConfigurationError, SourceError
from batchor_core.sources import JsonlSource
from tests.sources.helpers import assert_resumes_exactly, read_all


def write(path: Path, data: bytes | str) -> Path:
    path.write_bytes(data.encode() if isinstance(data, str) else data)
    return path


@pytest.fixture
def simple(tmp_path: Path) -> Path:
    lines = (json.dumps({"id": f"{i:04d}", "text": f"t{i}", "n": i}) for i in range(25))
    return write(tmp_path / "items.jsonl", "\n".join(lines) + "\n")


# --------------------------------------------------------------------------- values


def test_values_and_types_are_kept(tmp_path: Path) -> None:
    objs = [
        {"id": "a", "n": 1.5, "flag": True, "none": None, "list": [1, {"x": "y"}]},
        {"id": 7, "text": "é ünïcödé \u2028"},
    ]
    path = write(tmp_path / "v.jsonl", "\n".join(json.dumps(o, ensure_ascii=False) for o in objs))
    got = read_all(JsonlSource(path))
    assert got.ids == ["a", "7"]
    assert got.payloads == objs
    assert got.metadata == [None, None]
    assert got.locations == [f"{path}:1", f"{path}:2"]


def test_payload_and_metadata_selection(simple: Path) -> None:
    got = read_all(JsonlSource(simple, payload_fields=["text"], metadata_fields=["n", "gone"]))
    assert got.payloads[3] == {"text": "t3"}
    assert got.metadata[3] == {"n": 3, "gone": None}  # a missing metadata field is null


def test_id_field_and_id_fn(tmp_path: Path) -> None:
    path = write(tmp_path / "k.jsonl", '{"key": "k1", "a": 1}\n{"key": "k2", "a": 2}\n')
    assert read_all(JsonlSource(path, id_field="key")).ids == ["k1", "k2"]
    assert read_all(JsonlSource(path, id_fn=lambda o: f"{o['key']}.{o['a']}")).ids == [
        "k1.1",
        "k2.2",
    ]


def test_options_are_checked() -> None:
    with pytest.raises(ConfigurationError):
        JsonlSource("x.jsonl", id_field="id", id_fn=lambda o: "x")
    with pytest.raises(ConfigurationError):
        JsonlSource("x.jsonl", id_field="")
    with pytest.raises(ConfigurationError):
        JsonlSource("x.jsonl", on_bad_row="skip")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- format details


def test_blank_lines_crlf_bom_and_no_final_newline(tmp_path: Path) -> None:
    data = b'\xef\xbb\xbf{"id": "1"}\r\n\r\n   \n\t\n{"id": "2"}\r\n\n{"id": "3"}'
    path = write(tmp_path / "w.jsonl", data)
    got = read_all(JsonlSource(path))
    assert got.ids == ["1", "2", "3"]
    assert got.payloads[0] == {"id": "1"}
    assert got.locations == [f"{path}:1", f"{path}:5", f"{path}:7"]
    assert got.checkpoints[-1] == {"offset": len(data), "line": 8}
    assert_resumes_exactly(JsonlSource(path), slice_size=1)


def test_long_file_spans_many_blocks(tmp_path: Path) -> None:
    text = "x" * 5000
    lines = [json.dumps({"id": str(i), "text": text}) for i in range(600)]  # ~3 MB
    path = write(tmp_path / "long.jsonl", "\n".join(lines) + "\n")
    got = read_all(JsonlSource(path), slice_size=250)
    assert got.ids == [str(i) for i in range(600)]
    assert got.locations[-1] == f"{path}:600"
    data = path.read_bytes()
    for checkpoint in got.checkpoints[:-1]:
        assert data[checkpoint["offset"] :].startswith(
            f'{{"id": "{checkpoint["line"] - 1}"'.encode()
        )
        rest = read_all(JsonlSource(path), checkpoint, slice_size=250)
        assert rest.ids == got.ids[checkpoint["line"] - 1 :]


# --------------------------------------------------------------------------- checkpoints


@pytest.mark.parametrize("slice_size", [1, 3, 25, 100])
def test_resume_from_every_checkpoint(simple: Path, slice_size: int) -> None:
    got = assert_resumes_exactly(JsonlSource(simple), slice_size=slice_size)
    assert len(got.ids) == 25


def test_checkpoint_is_the_byte_offset_and_line_of_the_next_line(simple: Path) -> None:
    data = simple.read_bytes()
    got = read_all(JsonlSource(simple), slice_size=10)
    first = got.checkpoints[0]
    assert data[first["offset"] :].startswith(b'{"id": "0010"')
    assert data[: first["offset"]].count(b"\n") == first["line"] - 1 == 10
    assert got.checkpoints[-1] == {"offset": len(data), "line": 26}
    assert read_all(JsonlSource(simple), got.checkpoints[-1]).slices == []


def test_resume_seeks_instead_of_rereading(simple: Path) -> None:
    got = read_all(JsonlSource(simple), slice_size=10)
    checkpoint = got.checkpoints[1]
    data = bytearray(simple.read_bytes())
    data[: checkpoint["offset"]] = b"#" * checkpoint["offset"]  # not JSON: would be rejected
    simple.write_bytes(bytes(data))
    resumed = read_all(JsonlSource(simple), checkpoint, slice_size=10)
    assert resumed.ids == got.ids[20:]
    assert resumed.rejected == []
    assert resumed.locations == got.locations[20:]


def test_checkpoint_that_does_not_fit_is_refused(simple: Path) -> None:
    for bad in ({"offset": 10**9, "line": 3}, {"offset": -1, "line": 1}, {"offset": "0"}):
        with pytest.raises(SourceError, match="does not fit"):
            read_all(JsonlSource(simple), bad)


# --------------------------------------------------------------------------- bad lines

BAD_LINES: list[tuple[bytes, str, str | None]] = [
    (b'{"id": "x"', "not valid JSON (Expecting ',' delimiter at column 11)", None),
    (b'{"id": "x"} {"id": "y"}', "not valid JSON (Extra data at column 13)", None),
    (b"[1, 2]", "expected a JSON object, got an array", None),
    (b'"text"', "expected a JSON object, got a string", None),
    (b"42", "expected a JSON object, got a number", None),
    (b'{"id": NaN}', "not valid JSON (NaN is not valid JSON)", None),
    (b'{"id": "\xff\xfe"}', "invalid UTF-8 at byte 9", None),
    (b'{"text": "no id"}', "no id field 'id'", None),
    (b'{"id": null}', "null id", None),
    (b'{"id": ""}', "empty id", None),
    (b'{"id": true}', "id must be a string or an integer, got bool True", None),
    (b'{"id": 1.5}', "id must be a string or an integer, got float 1.5", None),
    (b'{"id": {"a": 1}}', "id must be a string or an integer, got dict", None),
]


@pytest.mark.parametrize(("line", "message", "item_id"), BAD_LINES)
def test_bad_lines_are_recorded(
    tmp_path: Path, line: bytes, message: str, item_id: str | None
) -> None:
    path = write(tmp_path / "bad.jsonl", b'{"id": "a"}\n\n' + line + b'\n{"id": "b"}\n')
    got = read_all(JsonlSource(path))
    assert got.ids == ["a", "b"]
    assert got.locations == [f"{path}:1", f"{path}:4"]
    (rejected,) = got.rejected
    assert rejected.error.startswith(f"{path}:3: {message}")
    assert rejected.item_id == (item_id or f"{path}:3")
    assert rejected.raw == {"line": line.decode("utf-8", "replace")}
    assert_resumes_exactly(JsonlSource(path), slice_size=1)


@pytest.mark.parametrize(("line", "message", "item_id"), BAD_LINES)
def test_bad_lines_raise_when_asked(
    tmp_path: Path, line: bytes, message: str, item_id: str | None
) -> None:
    path = write(tmp_path / "bad.jsonl", b'{"id": "a"}\n\n' + line + b'\n{"id": "b"}\n')
    with pytest.raises(SourceError) as info:
        read_all(JsonlSource(path, on_bad_row="raise"))
    assert str(info.value).startswith(f"{path}:3: {message}")
    assert "\n" not in str(info.value)


def test_missing_payload_field_is_a_bad_line_keeping_the_id(tmp_path: Path) -> None:
    path = write(tmp_path / "p.jsonl", '{"id": "a", "text": "t"}\n{"id": "b"}\n')
    got = read_all(JsonlSource(path, payload_fields=["text"]))
    assert got.ids == ["a"]
    assert got.rejected[0].item_id == "b"
    assert got.rejected[0].error == f"{path}:2: no payload field 'text'"


def test_a_block_with_invalid_utf8_still_reads_its_good_lines(tmp_path: Path) -> None:
    lines = [json.dumps({"id": str(i)}).encode() for i in range(50)]
    lines[25] = b'{"id": "\xc3"}'
    path = write(tmp_path / "u.jsonl", b"\n".join(lines))
    got = read_all(JsonlSource(path))
    assert got.ids == [str(i) for i in range(50) if i != 25]
    assert got.rejected[0].error == f"{path}:26: invalid UTF-8 at byte 9"


# --------------------------------------------------------------------------- bad files


@pytest.mark.parametrize(
    ("data", "message"),
    [(b"", r"file is empty \(0 bytes\)"), (b"\n \r\n\t\n", "has no JSON lines")],
)
def test_file_level_problems_raise_before_any_item(
    tmp_path: Path, data: bytes, message: str
) -> None:
    path = write(tmp_path / "f.jsonl", data)
    with pytest.raises(SourceError, match=message) as info:
        next(JsonlSource(path).read_slices(None, slice_size=10))
    assert str(path) in str(info.value)
    with pytest.raises(SourceError, match=message):
        JsonlSource(path).check()


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"nope\.jsonl: file not found"):
        read_all(JsonlSource(tmp_path / "nope.jsonl"))
