"""Arrow columns to JSON-serialisable Python values.

Rules (the same whatever the column's physical type):

* strings, integers, booleans and nulls as they are;
* floats as they are, except NaN and infinities, which become ``None`` (JSON has neither);
* decimals as strings (``"12.50"``), so no precision is lost;
* dates, times and timestamps as ISO 8601 strings (``"2024-05-01T12:00:00+00:00"``);
* durations as seconds (a float);
* binary values as base64 strings;
* lists, structs and maps recursively (map keys become strings).
"""

from __future__ import annotations

import base64
import math
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import pyarrow as pa  # type: ignore[import-untyped]

from batchor_core.models import JSONValue

__all__ = ["column_values", "is_id_type", "json_value"]

_NS_PER_UNIT = {"s": 1_000_000_000, "ms": 1_000_000, "us": 1_000, "ns": 1}


def is_id_type(arrow_type: Any) -> bool:
    """Whether a column of this type can hold item ids (strings or integers)."""
    types = pa.types
    if types.is_dictionary(arrow_type):
        return is_id_type(arrow_type.value_type)
    is_view = getattr(types, "is_string_view", None)
    return bool(
        types.is_string(arrow_type)
        or types.is_large_string(arrow_type)
        or (is_view is not None and is_view(arrow_type))
        or types.is_integer(arrow_type)
    )


def column_values(array: Any) -> tuple[list[JSONValue], dict[int, str]]:
    """One Arrow array as a list of JSON-safe values, and the rows that could not be read.

    A value that cannot be read (invalid UTF-8 in a string) is ``None`` in the list and
    its row index maps to what is wrong.
    """
    try:
        return _convert(array), {}
    except UnicodeDecodeError:
        pass
    values: list[JSONValue] = []
    bad: dict[int, str] = {}
    for index in range(len(array)):
        try:
            values.append(_convert(array.slice(index, 1))[0])
        except UnicodeDecodeError:
            values.append(None)
            bad[index] = "invalid UTF-8"
    return values, bad


def _convert(array: Any) -> list[JSONValue]:
    types = pa.types
    t = array.type
    if types.is_dictionary(t):
        return _convert(array.cast(t.value_type))
    if (
        types.is_string(t)
        or types.is_large_string(t)
        or types.is_integer(t)
        or types.is_boolean(t)
        or types.is_null(t)
    ):
        return list(array.to_pylist())
    if types.is_floating(t):
        return [_finite(v) for v in array.to_pylist()]
    if types.is_timestamp(t) or types.is_date(t) or types.is_time(t):
        try:
            return [None if v is None else v.isoformat() for v in array.to_pylist()]
        except ValueError:  # nanoseconds that a datetime cannot hold: value by value
            return [_temporal(array, i) for i in range(len(array))]
    if types.is_duration(t):
        scale = _NS_PER_UNIT[t.unit]
        ints = array.cast(pa.int64()).to_pylist()
        return [None if v is None else v * scale / 1e9 for v in ints]
    if types.is_binary(t) or types.is_large_binary(t) or types.is_fixed_size_binary(t):
        return [
            None if v is None else base64.b64encode(v).decode("ascii") for v in array.to_pylist()
        ]
    return [json_value(v) for v in array.to_pylist(maps_as_pydicts="lossy")]


def _temporal(array: Any, index: int) -> str | None:
    try:
        value = array[index].as_py()
        return None if value is None else str(value.isoformat())
    except ValueError:  # keep every digit: Arrow's own text, ISO-shaped
        return str(array.slice(index, 1).cast(pa.string())[0].as_py()).replace(" ", "T", 1)


def json_value(value: Any) -> JSONValue:
    """A Python value from Arrow (or a row dict) made JSON-safe, recursively."""
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        return _finite(value)
    if isinstance(value, dict):
        return {str(k): json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_value(v) for v in value]
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    return str(value)


def _finite(value: float | None) -> float | None:
    return value if value is None or math.isfinite(value) else None
