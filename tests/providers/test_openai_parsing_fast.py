"""The per-line shortcuts give exactly what the plain constructors give.

parse_line shares one frozen ``Usage`` between lines with equal counts and builds its
``ParsedLine`` with ``tuple.__new__``; ``LineSorter`` builds its success ``ItemOutcome``
and ingest its ``NewItem`` rows the same way. These tests pin that the results are equal
to, and of the same type as, what the named tuples' and dataclass's own constructors
build, over a spread of lines, and that adding a field to one of those tuples fails here
rather than silently shifting columns.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import BaseModel

from batchor_core.collect import LineSorter
from batchor_core.models import ItemError, ItemStatus, Usage
from batchor_core.providers.openai import parsing
from batchor_core.records import ItemOutcome, NewItem, ParsedLine

CHAT = "/v1/chat/completions"
RESPONSES = "/v1/responses"


class Label(BaseModel):
    label: str
    score: int


def _line(custom_id: str, response: Any = None, error: Any = None) -> bytes:
    obj = {"id": "batch_req_1", "custom_id": custom_id, "response": response, "error": error}
    return json.dumps(obj).encode() + b"\n"


def _chat(
    content: Any = '{"label": "a", "score": 1}',
    *,
    usage: Any = None,
    finish: str = "stop",
    refusal: Any = None,
    status: int = 200,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": content, "refusal": refusal}
    message.update(extra or {})
    body: dict[str, Any] = {"choices": [{"index": 0, "message": message, "finish_reason": finish}]}
    if usage is not None:
        body["usage"] = usage
    return {"status_code": status, "request_id": "req_1", "body": body}


USAGES: list[tuple[Any, Usage | None]] = [
    (None, None),
    ("not a dict", None),
    ({}, Usage(0, 0, 0, 0)),
    ({"prompt_tokens": 12, "completion_tokens": 9}, Usage(12, 9, 0, 0)),
    ({"prompt_tokens": 1, "completion_tokens": 1}, Usage(1, 1, 0, 0)),
    # True == 1 and hashes like it: a bool must not find the Usage(1, 1, ...) just made.
    ({"prompt_tokens": True, "completion_tokens": 1}, Usage(0, 1, 0, 0)),
    ({"prompt_tokens": 1.0, "completion_tokens": "1"}, Usage(0, 0, 0, 0)),
    ({"prompt_tokens": -1, "completion_tokens": 2**31}, Usage(0, 0, 0, 0)),
    (
        {
            "prompt_tokens": 30,
            "completion_tokens": 7,
            "prompt_tokens_details": {"cached_tokens": 16},
            "completion_tokens_details": {"reasoning_tokens": 3},
        },
        Usage(30, 7, 16, 3),
    ),
    (
        {
            "prompt_tokens": 30,
            "completion_tokens": 7,
            "prompt_tokens_details": None,
            "completion_tokens_details": {"reasoning_tokens": None},
        },
        Usage(30, 7, 0, 0),
    ),
]

LINES: list[tuple[str, bytes, ParsedLine]] = [
    (
        "success",
        _line("i1s1", _chat(usage={"prompt_tokens": 12, "completion_tokens": 9})),
        ParsedLine("i1s1", '{"label": "a", "score": 1}', None, Usage(12, 9, 0, 0)),
    ),
    (
        "success without usage",
        _line("i2s1", _chat()),
        ParsedLine("i2s1", '{"label": "a", "score": 1}', None, None),
    ),
    (
        "refusal",
        _line("i3s1", _chat(None, refusal="I can't", usage={"prompt_tokens": 4})),
        ParsedLine("i3s1", None, ItemError("refusal", "I can't"), Usage(4, 0, 0, 0)),
    ),
    (
        "tool call, no content",
        _line("i4s1", _chat(None, finish="tool_calls", extra={"tool_calls": [{"id": "c"}]})),
        ParsedLine(
            "i4s1",
            None,
            ItemError("empty_output", "response has no message content (finish_reason=tool_calls)"),
            None,
        ),
    ),
    (
        "content filter",
        _line("i5s1", _chat("partial", finish="content_filter")),
        ParsedLine(
            "i5s1",
            None,
            ItemError("content_filter", "output stopped by the provider's content filter"),
            None,
        ),
    ),
    (
        "truncated output",
        _line("i6s1", _chat('{"label": "a", "sco', finish="length")),
        ParsedLine("i6s1", None, ItemError("length", "output truncated at max tokens"), None),
    ),
    (
        "non-200",
        _line("i7s1", {"status_code": 429, "request_id": "r9", "body": {}}),
        ParsedLine(
            "i7s1", None, ItemError("http_429", "HTTP 429: no error details [request r9]"), None
        ),
    ),
    (
        "error line",
        _line("i8s1", None, {"code": "batch_expired", "message": "expired"}),
        ParsedLine("i8s1", None, ItemError("batch_expired", "expired"), None),
    ),
    (
        "no choices",
        _line("i9s1", {"status_code": 200, "body": {"choices": []}}),
        ParsedLine("i9s1", None, ItemError("empty_output", "response has no choices"), None),
    ),
]


@pytest.mark.parametrize(("raw", "expected"), USAGES)
def test_shared_usage_equals_a_fresh_one(raw: Any, expected: Usage | None) -> None:
    for _ in range(2):  # the second parse finds the first one's Usage
        parsed = parsing.parse_line(CHAT, _line("i1s1", _chat(usage=raw)))
        assert parsed.usage == expected
        assert type(parsed.usage) is type(expected)
        assert parsed == ParsedLine("i1s1", '{"label": "a", "score": 1}', None, expected)


def test_usage_sharing_is_bounded_and_every_line_keeps_its_counts() -> None:
    kept = parsing._USAGES_KEPT
    for n in range(kept + 500):
        raw = {"input_tokens": n, "output_tokens": n % 7}
        body = {"status": "completed", "usage": raw, "output": []}
        parsed = parsing.parse_line(RESPONSES, _line("i1s1", {"status_code": 200, "body": body}))
        assert parsed.usage == Usage(n, n % 7, 0, 0)
        assert len(parsing._USAGES) <= kept


@pytest.mark.parametrize(("name", "raw", "expected"), LINES, ids=[c[0] for c in LINES])
def test_parsed_lines_equal_the_named_tuple(name: str, raw: bytes, expected: ParsedLine) -> None:
    parsed = parsing.parse_line(CHAT, raw)
    assert type(parsed) is ParsedLine
    assert parsed == expected
    assert parsed._asdict() == expected._asdict()


def test_sorted_lines_equal_the_plain_constructors() -> None:
    sorter = LineSorter(
        parse=lambda raw: parsing.parse_line(CHAT, raw), output_model=Label, output_schema=None
    )
    for _name, raw, _expected in LINES:
        sorter.add(raw)
    sorter.add(_line("i10s2", _chat('{"label": 1}')))  # invalid output
    sorter.add(b'{"custom_id": "i11s1", "response": {"status_co')  # truncated JSON
    successes, failures = sorter.take()
    usage = Usage(12, 9, 0, 0)
    text = '{"label": "a", "score": 1}'
    plain = [
        ItemOutcome(1, 1, ItemStatus.COMPLETED, text, None, usage),
        ItemOutcome(2, 1, ItemStatus.COMPLETED, text),
    ]
    assert successes == plain
    for outcome, built in zip(successes, plain, strict=True):
        assert type(outcome) is ItemOutcome
        assert outcome._asdict() == built._asdict()
    by_seq = {f[0]: f for f in failures}
    assert sorted(by_seq) == [3, 4, 5, 6, 7, 8, 9, 10, 11]
    for _name, _raw, expected in LINES[2:]:
        seq = int(expected.custom_id[1:].split("s")[0])
        assert by_seq[seq] == (seq, 1, expected.error, expected.usage)
    assert by_seq[10][2].code == "schema_mismatch"
    assert by_seq[11][2].code == "invalid_line"


def _mixed_lines() -> list[bytes]:
    """Every kind of line a sorter meets: valid, failed, invalid, corrupt, blank,
    foreign and repeated."""
    lines = [raw for _name, raw, _expected in LINES]
    lines += [
        _line("i10s2", _chat('{"label": 1}')),  # invalid output
        b'{"custom_id": "i11s1", "response": {"status_co',  # truncated JSON
        b"\n",
        b"   \n",
        _line("foreign-7", _chat()),
        _line("i1s1", _chat('{"label": "b", "score": 2}')),  # repeated: the first counts
        _line("i12s3", _chat('{"label": "c", "score": 3}')),
        _line("i13s1", _chat("not json")),
    ]
    return lines


@pytest.mark.parametrize("size", [1, 2, 5, 1000])
def test_sorting_a_file_in_parts_gives_what_adding_each_line_gives(size: int) -> None:
    def sorter() -> LineSorter:
        return LineSorter(
            parse=lambda raw: parsing.parse_line(CHAT, raw), output_model=Label, output_schema=None
        )

    # A part is taken before a line is added once `size` lines are pending (a line
    # repeated in a later part is sorted again: the store ignores it).
    one_by_one = sorter()
    expected_parts = []
    for raw in _mixed_lines():
        if one_by_one.pending >= size:
            expected_parts.append(one_by_one.take())
        one_by_one.add(raw)
    expected_parts.append(one_by_one.take())
    expected_successes = [o for s, _f in expected_parts for o in s]
    expected_failures = [f for _s, fs in expected_parts for f in fs]

    in_parts = sorter()
    parts = list(in_parts.parts(_mixed_lines(), size=size))
    rest = in_parts.take()
    assert [(s, f) for s, f in [*parts, rest]] == expected_parts
    assert all(len(s) + len(f) == size for s, f in parts)
    successes = [o for s, _f in [*parts, rest] for o in s]
    failures = [f for _s, fs in [*parts, rest] for f in fs]
    assert successes == expected_successes
    assert [o._asdict() for o in successes] == [o._asdict() for o in expected_successes]
    assert all(type(o) is ItemOutcome for o in successes)
    assert failures == expected_failures
    assert (in_parts.lines, in_parts.corrupt_lines) == (one_by_one.lines, one_by_one.corrupt_lines)
    assert in_parts.last_corrupt == one_by_one.last_corrupt


class _Lenient(BaseModel):
    """A model with its own model_validate_json (it takes any text)."""

    label: str

    @classmethod
    def model_validate_json(cls, json_data: str | bytes | bytearray, **_kw: Any) -> _Lenient:
        return cls(label=str(json_data))


def test_a_model_that_overrides_model_validate_json_keeps_it_in_parts() -> None:
    sorter = LineSorter(
        parse=lambda raw: parsing.parse_line(CHAT, raw), output_model=_Lenient, output_schema=None
    )
    parts = list(sorter.parts([_line("i1s1", _chat("not json"))], size=10))
    successes, failures = sorter.take()
    assert not parts and not failures
    assert [(o.seq, o.output_json) for o in successes] == [(1, "not json")]


def test_the_tuples_built_field_by_field_still_have_these_fields() -> None:
    # tuple.__new__ sites (parsing.parse_line, LineSorter.add, ingest's _RowBuilder.rows)
    # spell out every field: a field added here must be added there too.
    assert ParsedLine._fields == ("custom_id", "text", "error", "usage")
    assert ItemOutcome._fields == (
        "seq",
        "submission",
        "status",
        "output_json",
        "error",
        "usage",
        "spend_attempt",
        "retry_not_before",
    )
    assert ItemOutcome._field_defaults == {
        "output_json": None,
        "error": None,
        "usage": None,
        "spend_attempt": True,
        "retry_not_before": None,
    }
    assert NewItem._fields == (
        "seq",
        "item_id",
        "payload_json",
        "metadata_json",
        "chunk_id",
        "status",
        "error",
    )
    assert NewItem._field_defaults == {"status": ItemStatus.PENDING, "error": None}
