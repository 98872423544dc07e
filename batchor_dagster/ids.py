"""Durable run ids for Dagster assets: deterministic, and safe to use as Dagster tags.

Dagster accepts only ``[A-Za-z0-9_.-]`` (at most 63 characters) in event tag values, and
a durable run id is shown as a tag on every materialization and collect run. Ids built
here are always tag-safe; ids given by users or started outside Dagster may not be, so
:func:`tag_value` renders any id as a tag-safe value (itself when it already is one).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import orjson

from batchor_core import BatchItem

__all__ = [
    "asset_slug",
    "content_run_id",
    "is_tag_safe",
    "items_digest",
    "partition_run_id",
    "source_digest",
    "tag_value",
]

MAX_TAG_LENGTH = 63
_SAFE = re.compile(r"[A-Za-z0-9_.\-]+")
_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9_.\-]+")


def is_tag_safe(value: str) -> bool:
    """Whether ``value`` can be a Dagster tag value as it is."""
    return 0 < len(value) <= MAX_TAG_LENGTH and _SAFE.fullmatch(value) is not None


def _digest(*parts: str) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode())
        h.update(b"\x00")
    return h.hexdigest()


def _readable(text: str) -> str:
    return _UNSAFE_CHARS.sub("-", text).strip("-.") or "x"


def tag_value(run_id: str) -> str:
    """``run_id`` itself if it is tag-safe, else a readable prefix plus a hash of it.

    Different ids never share a tag value unless their hashes collide (12 hex digits).
    """
    if is_tag_safe(run_id):
        return run_id
    return f"{_readable(run_id)[: MAX_TAG_LENGTH - 13]}-{_digest(run_id)[:12]}"


def asset_slug(asset_key_path: Iterable[str]) -> str:
    """An asset key as a short readable id part (``a/b`` -> ``a.b``)."""
    return ".".join(_readable(p) for p in asset_key_path)


def partition_run_id(asset_key_path: Iterable[str], partition_key: str) -> str:
    """The durable run id of one partition of an asset: ``<asset>.<partition>``.

    Stays the same for the partition whatever its inputs (a changed job or source is
    refused by the runner instead of silently starting over).
    """
    path = list(asset_key_path)
    plain = f"{asset_slug(path)}.{partition_key}"
    if is_tag_safe(plain) and plain.count(".") == len(path):
        return plain
    suffix = _digest("partition", *path, partition_key)[:12]
    head = f"{asset_slug(path)[:24]}.{_readable(partition_key)}"
    return f"{head[: MAX_TAG_LENGTH - 13]}-{suffix}"


def content_run_id(asset_key_path: Iterable[str], job_fingerprint: str, source_id: str) -> str:
    """The durable run id of an unpartitioned asset: its key plus a digest of the job and
    the items, so the same inputs resume the same run and changed inputs start a new one.
    """
    path = list(asset_key_path)
    suffix = _digest("content", *path, job_fingerprint, source_id)[:16]
    return f"{asset_slug(path)[: MAX_TAG_LENGTH - 17]}-{suffix}"


def source_digest(identity: Mapping[str, Any]) -> str:
    """A digest of an item source's identity (its content, for file sources)."""
    return _digest(orjson.dumps(dict(identity), option=orjson.OPT_SORT_KEYS).decode())


def items_digest(items: Iterable[BatchItem]) -> tuple[list[BatchItem], str]:
    """Materialise in-memory items and digest their ids, payloads and metadata."""
    kept = list(items)
    h = hashlib.sha256()
    for item in _checked(kept):
        h.update(
            orjson.dumps(
                [item.item_id, _plain(item.payload), item.metadata and _plain(item.metadata)],
                option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS,
                default=_stable_str,
            )
        )
        h.update(b"\n")
    return kept, h.hexdigest()


def _plain(value: Any) -> Any:
    # A payload that is not a mapping is digested as it is (the run fails that item).
    return dict(value) if isinstance(value, Mapping) else value


def _stable_str(value: object) -> str:
    """A value JSON cannot hold: its text, or its type when the text holds an address
    (``<Row object at 0x...>``), which would name a new run in every process."""
    text = str(value)
    if " at 0x" in text:
        return f"<{type(value).__module__}.{type(value).__qualname__}>"
    return text


def _checked(items: list[BatchItem]) -> Iterator[BatchItem]:
    for position, item in enumerate(items):
        if not isinstance(item, BatchItem):
            raise TypeError(
                f"build_items must return BatchItem objects or an item source; got "
                f"{type(item).__name__} at position {position}"
            )
        yield item
