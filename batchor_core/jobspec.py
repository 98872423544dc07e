"""A job's stored form: what is persisted with a run, and how a change is detected.

A run keeps a JSON spec of its job (model, endpoint, options, output schema, policies)
and a fingerprint that also covers the request builder's code, so resuming a run with a
different job is refused with a message naming what changed.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from collections.abc import Callable
from dataclasses import asdict
from types import CodeType, FunctionType
from typing import Any

from pydantic import BaseModel

from batchor_core.models import BatchJob, ChunkPolicy, JSONObject, RetryPolicy
from batchor_core.ports import BatchProvider, RequestSpec

__all__ = [
    "content_fingerprint",
    "describe_job_change",
    "job_spec",
    "request_spec",
    "resolve_output_model",
    "same_job",
]

# Where the output model is defined (``module:qualname``): stored, so a process without
# the job can import the model, but not what the job does (the schema says that).
_WHERE_DEFINED = "output_model_ref"


def _code_digest(fn: Callable[..., Any] | None) -> str | None:
    """A digest of what a builder does: its code, and the plain values it closes over or
    holds (a prompt template in a closure, or in a callable object's attributes), so a
    changed template is a changed job even when the code is the same."""
    if fn is None:
        return None
    digest = hashlib.sha256()
    code = getattr(fn, "__code__", None)
    if isinstance(code, CodeType):
        _feed_code(digest, code, getattr(fn, "__globals__", None))
        for cell in getattr(fn, "__closure__", None) or ():
            try:
                value = cell.cell_contents
            except ValueError:  # an empty cell
                continue
            _feed_value(digest, value)
        return digest.hexdigest()[:16]
    call_code = getattr(type(fn).__call__, "__code__", None)
    digest.update(f"{type(fn).__module__}.{type(fn).__qualname__}".encode())
    if isinstance(call_code, CodeType):
        _feed_code(digest, call_code, getattr(type(fn).__call__, "__globals__", None))
    for name, value in sorted(vars(fn).items()) if hasattr(fn, "__dict__") else ():
        digest.update(name.encode())
        _feed_value(digest, value)
    stated = getattr(fn, "fingerprint", None)
    if callable(stated):  # a builder may also state what its requests depend on
        digest.update(str(stated()).encode())
    return digest.hexdigest()[:16]


_PLAIN = (str, int, float, bool, bytes, type(None))


def _feed_value(digest: Any, value: object) -> None:
    """Feed plain data (and containers of it); anything else only by its type, so an
    object whose repr holds an address never makes two equal jobs differ."""
    if isinstance(value, _PLAIN):
        digest.update(repr(value).encode())
    elif isinstance(value, (list, tuple)):
        digest.update(b"[")
        for item in value:
            _feed_value(digest, item)
        digest.update(b"]")
    elif isinstance(value, dict):
        digest.update(b"{")
        for key in sorted(value, key=repr):
            _feed_value(digest, key)
            _feed_value(digest, value[key])
        digest.update(b"}")
    else:
        digest.update(f"<{type(value).__module__}.{type(value).__qualname__}>".encode())


def _feed_code(
    digest: Any,
    code: CodeType,
    module_globals: dict[str, Any] | None = None,
    seen: set[int] | None = None,
) -> None:
    """Feed a code object, its nested code, and what it reads from its module: plain
    globals (a ``SYSTEM_PROMPT`` constant) and the code of module functions it calls."""
    seen = set() if seen is None else seen
    if id(code) in seen:
        return
    seen.add(id(code))
    digest.update(code.co_code)
    digest.update(repr(code.co_names).encode())
    for const in code.co_consts:
        if isinstance(const, CodeType):
            _feed_code(digest, const, module_globals, seen)
        else:
            digest.update(repr(const).encode())
    if not module_globals:
        return
    for name in code.co_names:
        if name not in module_globals:
            continue
        value = module_globals[name]
        if isinstance(value, FunctionType) and value.__globals__ is module_globals:
            _feed_code(digest, value.__code__, module_globals, seen)
        elif isinstance(value, (*_PLAIN, list, tuple, dict)):
            digest.update(name.encode())
            _feed_value(digest, value)


def job_spec(job: BatchJob, provider: BatchProvider) -> tuple[JSONObject, str]:
    """The JSON spec stored with a run, and its fingerprint."""
    output_name: str | None = None
    output_schema: JSONObject | None = None
    output_ref: str | None = None
    if job.output_model is not None:
        output_name, output_schema = provider.output_schema(job.output_model)
        output_ref = f"{job.output_model.__module__}:{job.output_model.__qualname__}"
    spec: JSONObject = {
        "model": job.model,
        "endpoint": job.endpoint,
        "request_options": dict(job.request_options or {}),
        "output_name": output_name,
        "output_schema": output_schema,
        "output_model_ref": output_ref,
        "completion_window": job.completion_window,
        "chunk_policy": asdict(job.chunk_policy),
        "retry_policy": asdict(job.retry_policy),
        "builder": {
            "kind": "build_request" if job.build_request is not None else "build_prompt",
            "code": _code_digest(job.build_request or job.build_prompt),
        },
    }
    try:
        canonical = json.dumps(spec, sort_keys=True, separators=(",", ":"))
    except TypeError as exc:
        raise ValueError(f"BatchJob.request_options must be JSON-serialisable: {exc}") from exc
    return spec, hashlib.sha256(canonical.encode()).hexdigest()


def content_fingerprint(spec: JSONObject) -> str:
    """A spec's fingerprint without where its output model is defined: the same job
    whichever module defines the model (moved into a package, a renamed script)."""
    content = {k: v for k, v in spec.items() if k != _WHERE_DEFINED}
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def same_job(
    stored: JSONObject, stored_fingerprint: str, spec: JSONObject, fingerprint: str
) -> bool:
    """Whether a run's stored job and ``spec`` are the same job: equal fingerprints, or
    specs that differ only in where the output model is defined."""
    return stored_fingerprint == fingerprint or content_fingerprint(stored) == content_fingerprint(
        spec
    )


def request_spec(spec: JSONObject) -> RequestSpec:
    """The provider-facing part of a stored spec."""
    return RequestSpec(
        model=spec["model"],
        endpoint=spec["endpoint"],
        request_options=dict(spec.get("request_options") or {}),
        output_schema=spec.get("output_schema"),
        output_name=spec.get("output_name"),
    )


def chunk_policy(spec: JSONObject) -> ChunkPolicy:
    """The stored chunk policy."""
    return ChunkPolicy(**spec["chunk_policy"])


def retry_policy(spec: JSONObject) -> RetryPolicy:
    """The stored retry policy."""
    return RetryPolicy(**spec["retry_policy"])


def describe_job_change(old: JSONObject, new: JSONObject) -> str:
    """One line naming the fields that differ between two specs."""
    changed = []
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            if key == "builder":
                changed.append("the request builder (its code or parameters)")
            elif key == "output_schema":
                changed.append("the output model's schema")
            else:
                changed.append(f"{key} ({old.get(key)!r} -> {new.get(key)!r})")
    return ", ".join(changed) or "nothing visible (fingerprint differs)"


def resolve_output_model(spec: JSONObject) -> type[BaseModel] | None:
    """Import the output model named in the spec, if it is importable here."""
    ref = spec.get("output_model_ref")
    if not ref:
        return None
    module_name, _, qualname = str(ref).partition(":")
    if module_name == "__main__" or "<locals>" in qualname:
        return None
    try:
        obj: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError):
        return None
    if isinstance(obj, type) and issubclass(obj, BaseModel):
        return obj
    return None
