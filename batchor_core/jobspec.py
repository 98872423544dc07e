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
from types import CodeType
from typing import Any

from pydantic import BaseModel

from batchor_core.models import BatchJob, ChunkPolicy, JSONObject, RetryPolicy
from batchor_core.ports import BatchProvider, RequestSpec

__all__ = ["describe_job_change", "job_spec", "request_spec", "resolve_output_model"]


def _code_digest(fn: Callable[..., Any] | None) -> str | None:
    """A digest of what a builder does: its code, and the plain values it closes over or
    holds (a prompt template in a closure, or in a callable object's attributes), so a
    changed template is a changed job even when the code is the same."""
    if fn is None:
        return None
    digest = hashlib.sha256()
    code = getattr(fn, "__code__", None)
    if isinstance(code, CodeType):
        _feed_code(digest, code)
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
        _feed_code(digest, call_code)
    for name, value in sorted(vars(fn).items()) if hasattr(fn, "__dict__") else ():
        digest.update(name.encode())
        _feed_value(digest, value)
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


def _feed_code(digest: Any, code: CodeType) -> None:
    digest.update(code.co_code)
    digest.update(repr(code.co_names).encode())
    for const in code.co_consts:
        if isinstance(const, CodeType):
            _feed_code(digest, const)
        else:
            digest.update(repr(const).encode())


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
                changed.append("the request builder's code")
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
