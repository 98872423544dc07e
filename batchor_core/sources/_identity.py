"""Source identities by content, checkpoints, and a one-line description of a change.

An identity names what a source yields, never where it lives: a file's size and sha256 plus
the options that change which items come out. Moving, copying or touching the file keeps it;
editing one byte or changing an option does not.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from typing import ClassVar

from batchor_core.errors import SourceError
from batchor_core.models import JSONObject, JSONValue
from batchor_core.sources._common import (
    IdFn,
    check_columns,
    check_id_options,
    check_policy,
    fn_name,
)

__all__ = [
    "FileSource",
    "describe_identity_change",
    "file_identity",
    "offset_checkpoint",
    "read_offset_checkpoint",
]

_HASH_BLOCK = 1 << 20

_LABELS = {
    "id_column": "id column",
    "id_field": "id field",
    "id_fn": "id function",
    "payload_columns": "payload columns",
    "payload_fields": "payload fields",
    "metadata_columns": "metadata columns",
    "metadata_fields": "metadata fields",
    "delimiter": "delimiter",
    "quote_char": "quote character",
}


def file_identity(kind: str, path: str, options: JSONObject) -> JSONObject:
    """``{"kind", "size", "sha256", "options"}`` of the file at ``path``, hashed in 1 MiB blocks."""
    digest = hashlib.sha256()
    size = 0
    try:
        with open(path, "rb") as f:
            while block := f.read(_HASH_BLOCK):
                digest.update(block)
                size += len(block)
    except FileNotFoundError:
        raise SourceError(f"{path}: file not found") from None
    except OSError as exc:
        raise SourceError(f"{path}: cannot read file ({exc.strerror or exc})") from exc
    return {"kind": kind, "size": size, "sha256": digest.hexdigest(), "options": options}


def offset_checkpoint(position: tuple[int, int]) -> JSONObject:
    """The checkpoint of a line-based file: the next unread byte and its 1-based line number."""
    return {"offset": position[0], "line": position[1]}


def read_offset_checkpoint(
    checkpoint: JSONObject, *, path: str, size: int, start: int
) -> tuple[int, int]:
    """Validate an ``{"offset", "line"}`` checkpoint against a file of ``size`` bytes."""
    offset = checkpoint.get("offset") if isinstance(checkpoint, dict) else None
    line = checkpoint.get("line") if isinstance(checkpoint, dict) else None
    if (
        not isinstance(offset, int)
        or not isinstance(line, int)
        or isinstance(offset, bool)
        or isinstance(line, bool)
        or not start <= offset <= size
        or line < 1
    ):
        raise SourceError(
            f"{path}: checkpoint {checkpoint!r} does not fit this file ({size} bytes); "
            "was the file replaced?"
        )
    return offset, line


def describe_identity_change(old: JSONObject, new: JSONObject) -> str:
    """Say in one line how a source's identity changed.

    Args:
        old: The identity the run was started with.
        new: The identity of the source passed in now.

    Returns:
        For example ``"file content changed (size 123 -> 130)"`` or
        ``"id column changed 'id' -> 'key'"``; several changes are joined with ``"; "``.
    """
    return "; ".join(_changes(old, new)) or "no change"


def _changes(old: JSONValue, new: JSONValue) -> list[str]:
    if old == new:
        return []
    if not isinstance(old, dict) or not isinstance(new, dict):
        return [f"identity changed {_short(old)} -> {_short(new)}"]
    if old.get("kind") != new.get("kind"):
        return [f"source kind changed {old.get('kind')!r} -> {new.get('kind')!r}"]
    if old.get("kind") == "multi":
        return _multi_changes(old, new)
    changes: list[str] = []
    if old.get("size") != new.get("size"):
        changes.append(f"file content changed (size {old.get('size')} -> {new.get('size')})")
    elif old.get("sha256") != new.get("sha256"):
        changes.append(
            f"file content changed (same size {old.get('size')}, sha256 "
            f"{str(old.get('sha256'))[:12]} -> {str(new.get('sha256'))[:12]})"
        )
    old_opts, new_opts = old.get("options") or {}, new.get("options") or {}
    if isinstance(old_opts, dict) and isinstance(new_opts, dict):
        for key in sorted(set(old_opts) | set(new_opts), key=_option_order):
            if old_opts.get(key) != new_opts.get(key):
                label = _LABELS.get(key, key.replace("_", " "))
                changes.append(
                    f"{label} changed {_short(old_opts.get(key))} -> {_short(new_opts.get(key))}"
                )
    elif old_opts != new_opts:
        changes.append(f"options changed {_short(old_opts)} -> {_short(new_opts)}")
    for key in sorted((set(old) | set(new)) - {"kind", "size", "sha256", "options"}):
        if old.get(key) != new.get(key):
            changes.append(f"{key} changed {_short(old.get(key))} -> {_short(new.get(key))}")
    return changes


def _multi_changes(old: JSONObject, new: JSONObject) -> list[str]:
    changes: list[str] = []
    if old.get("namespace_ids") != new.get("namespace_ids"):
        changes.append(
            f"namespace_ids changed {old.get('namespace_ids')!r} -> {new.get('namespace_ids')!r}"
        )
    if old.get("namespaces") != new.get("namespaces") and old.get("namespace_ids"):
        changes.append(
            f"id namespaces changed {_short(old.get('namespaces'))} -> "
            f"{_short(new.get('namespaces'))}"
        )
    old_src, new_src = old.get("sources") or [], new.get("sources") or []
    if len(old_src) != len(new_src):
        changes.append(f"number of files changed {len(old_src)} -> {len(new_src)}")
        return changes
    for index, (a, b) in enumerate(zip(old_src, new_src, strict=True)):
        for change in _changes(a, b):
            changes.append(f"source #{index + 1} of {len(old_src)}: {change}")
    return changes


def _option_order(key: str) -> tuple[int, str]:
    order = list(_LABELS)
    return (order.index(key), key) if key in order else (len(order), key)


def _short(value: JSONValue, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class FileSource:
    """What every single-file source shares: path, id/payload/metadata options, identity.

    Subclasses set ``kind`` and ``key_name`` (``"column"`` or ``"field"``), call
    :meth:`_setup` from ``__init__``, and may extend :meth:`_identity_options`.
    """

    kind: ClassVar[str]
    key_name: ClassVar[str] = "column"
    _path: str
    _identity: JSONObject | None

    def _setup(
        self,
        path: str | os.PathLike[str],
        *,
        id_key: str | None,
        id_fn: IdFn | None,
        payload: Iterable[str] | None,
        metadata: Iterable[str] | None,
        on_bad_row: str,
    ) -> None:
        """Validate and keep the options every file source takes."""
        n = self.key_name
        self._path = os.fspath(path)
        self._id_key = check_id_options(id_key, id_fn, what=f"id_{n}")
        self._id_fn = id_fn
        self._payload = check_columns(payload, what=f"payload_{n}s")
        self._metadata = check_columns(metadata, what=f"metadata_{n}s")
        self._policy = check_policy(on_bad_row)
        self._identity = None

    @property
    def path(self) -> str:
        """The file's path, as given."""
        return self._path

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._path!r})"

    def identity(self) -> JSONObject:
        """Size, sha256 and item-shaping options; not the path. Hashed once per instance."""
        if self._identity is None:
            self._identity = file_identity(self.kind, self._path, self._identity_options())
        return self._identity

    def _identity_options(self) -> JSONObject:
        n = self.key_name
        return {
            f"id_{n}": self._id_key,
            "id_fn": fn_name(self._id_fn) if self._id_fn is not None else None,
            f"payload_{n}s": self._payload,
            f"metadata_{n}s": self._metadata,
        }
