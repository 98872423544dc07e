"""JSON encoding and decoding on the hot paths (ingest, result parsing).

orjson is several times faster than the standard library for the millions of small
documents a large run encodes and parses; anything orjson refuses (a non-dict mapping,
an integer wider than 64 bits) falls back to the standard library, so behaviour never
depends on which one ran.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

__all__ = ["dumps", "dumps_text", "loads"]

_STD = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
JSONDecodeError = (orjson.JSONDecodeError, ValueError)


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON bytes."""
    try:
        return orjson.dumps(value)
    except TypeError:
        return _STD.encode(_plain(value)).encode()


def dumps_text(value: Any) -> str:
    """Compact JSON text."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return dumps(value).decode()


def loads(data: bytes | str) -> Any:
    """Parse JSON; raises ``ValueError`` on invalid input."""
    return orjson.loads(data)


def _plain(value: Any) -> Any:
    """Turn mappings that are not dicts into dicts so the standard encoder accepts them."""
    from collections.abc import Mapping

    if isinstance(value, Mapping) and not isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
