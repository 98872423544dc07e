"""Which output models OpenAI's strict structured outputs can express.

The service rejects a strict schema that has an object open to unnamed keys
(``dict[str, int]``, ``extra="allow"``), a value of any type (``Any``, a bare ``list``) or
a root that is not an object (``RootModel[list[int]]``), and it rejects it for every line of
a batch, hours after submission. :func:`strict_schema_problem` finds these in the model's
own JSON schema, so :class:`~batchor_core.models.BatchJob` refuses them up front. Pure
(no I/O, no provider SDK), so the models layer can use it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel

__all__ = ["strict_schema_problem"]

# A schema naming one of these says what its values are; one naming none accepts anything.
_TYPED_KEYS = frozenset({"type", "$ref", "anyOf", "allOf", "oneOf", "enum", "const"})


def strict_schema_problem(model: type[BaseModel]) -> str | None:
    """Why ``model`` cannot be a strict structured-output schema, or None if it can.

    The answer names the field (``Outer.items[].tags``) so the user knows what to change.
    """
    try:
        schema: dict[str, Any] = model.model_json_schema()
    except Exception as exc:  # pydantic raises several types for unschematisable fields
        return f"{model.__name__} has no JSON schema: {exc}"
    defs = schema.get("$defs", {})
    root = _resolve(schema, defs)
    if root.get("type") != "object":
        return (
            f"{model.__name__}'s schema root is {root.get('type') or 'not typed'}, not an "
            "object; wrap the value in a model with a named field"
        )
    return _walk(schema, defs, model.__name__, set())


def _resolve(schema: Mapping[str, object], defs: Mapping[str, object]) -> Mapping[str, object]:
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        target = defs.get(ref.removeprefix("#/$defs/"))
        if isinstance(target, Mapping):
            return target
    return schema


def _walk(
    schema: Mapping[str, object], defs: Mapping[str, object], where: str, seen: set[str]
) -> str | None:
    ref = schema.get("$ref")
    if isinstance(ref, str):
        if ref in seen:  # recursive models: each definition is checked once
            return None
        seen = seen | {ref}
        schema = _resolve(schema, defs)
    if not _TYPED_KEYS & schema.keys():
        return f"field {where} accepts any value (Any or an untyped container); give it a type"
    if schema.get("type") == "object" or "properties" in schema:
        extra = schema.get("additionalProperties", False)
        if extra is not False:
            what = "a dict with free-form keys" if isinstance(extra, Mapping) else "extra keys"
            return (
                f"field {where} allows {what}; strict structured outputs need every key "
                "named (use a model with fields, or a list of key/value models; no extra='allow')"
            )
        properties = schema.get("properties", {})
        if isinstance(properties, Mapping):
            for name, sub in properties.items():
                if isinstance(sub, Mapping):
                    found = _walk(sub, defs, f"{where}.{name}", seen)
                    if found:
                        return found
    for key in ("anyOf", "allOf", "oneOf", "prefixItems"):
        options = schema.get(key)
        if isinstance(options, list):
            for sub in options:
                if isinstance(sub, Mapping):
                    found = _walk(sub, defs, where, seen)
                    if found:
                        return found
    items = schema.get("items")
    if isinstance(items, Mapping):
        return _walk(items, defs, f"{where}[]", seen)
    return None
