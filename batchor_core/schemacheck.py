"""Checking a JSON value against a run's stored strict JSON schema, without its model.

A run stores the strict JSON schema the provider enforces for its output model. A
process that cannot import the model (an operator cancelling from a shell, a run whose
model lived in the starting script) still collects finished batches: outputs are
checked against that schema, which is what OpenAI's structured outputs guarantee, and
stored as JSON. Typed results are built from the stored JSON by whoever has the model.

Only the subset strict mode allows is understood: ``type`` (one or a list),
``properties``/``required``/``additionalProperties``, ``items``, ``enum``, ``const``,
``anyOf``, ``$ref`` into ``$defs``, and the simple bounds (``minimum``, ``maximum``,
``exclusiveMinimum``, ``exclusiveMaximum``, ``minItems``, ``maxItems``, ``minLength``,
``maxLength``, ``pattern``). Other keywords (``description``, ``format``, ...) are ignored.
"""

from __future__ import annotations

import re

from batchor_core.models import JSONObject, JSONValue

__all__ = ["schema_errors"]

_TYPES: dict[str, tuple[type, ...]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "null": (type(None),),
}
_MAX_REPORTED = 3


def schema_errors(value: JSONValue, schema: JSONObject) -> list[str]:
    """Where ``value`` breaks ``schema`` (``"<root>.field: reason"``); empty when valid."""
    errors: list[str] = []
    _check(value, schema, schema.get("$defs") or {}, "<root>", errors)
    return errors[:_MAX_REPORTED]


def _check(
    value: JSONValue, schema: JSONObject, defs: JSONObject, at: str, errors: list[str]
) -> None:
    if len(errors) >= _MAX_REPORTED:
        return
    ref = schema.get("$ref")
    if isinstance(ref, str):
        target = defs.get(ref.rsplit("/", 1)[-1]) if ref.startswith("#/$defs/") else None
        if not isinstance(target, dict):
            errors.append(f"{at}: unresolvable $ref {ref}")
            return
        _check(value, target, defs, at, errors)
        return
    options = schema.get("anyOf")
    if isinstance(options, list):
        if not any(not _errors_for(value, opt, defs, at) for opt in options):
            errors.append(f"{at}: matches none of the allowed shapes")
        return
    if not _type_ok(value, schema.get("type")):
        errors.append(f"{at}: expected {schema.get('type')}, got {type(value).__name__}")
        return
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{at}: {value!r} is not one of {schema['enum']!r}")
    if "const" in schema and value != schema["const"]:
        errors.append(f"{at}: must be {schema['const']!r}")
    _check_bounds(value, schema, at, errors)
    if isinstance(value, dict):
        _check_object(value, schema, defs, at, errors)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, element in enumerate(value):
            _check(element, schema["items"], defs, f"{at}[{index}]", errors)


def _errors_for(value: JSONValue, schema: JSONObject, defs: JSONObject, at: str) -> list[str]:
    found: list[str] = []
    _check(value, schema, defs, at, found)
    return found


def _type_ok(value: JSONValue, declared: object) -> bool:
    if declared is None:
        return True
    names = declared if isinstance(declared, list) else [declared]
    for name in names:
        kinds = _TYPES.get(str(name))
        if kinds is None:
            return True  # a type we do not know: do not reject on it
        if isinstance(value, bool) and bool not in kinds:
            continue  # JSON booleans are not numbers
        if isinstance(value, kinds):
            return True
    return False


def _check_object(
    value: dict[str, JSONValue], schema: JSONObject, defs: JSONObject, at: str, errors: list[str]
) -> None:
    properties = schema.get("properties") or {}
    for name in schema.get("required") or ():
        if name not in value:
            errors.append(f"{at}.{name}: field required")
    for name, element in value.items():
        sub = properties.get(name)
        if isinstance(sub, dict):
            _check(element, sub, defs, f"{at}.{name}", errors)
        elif schema.get("additionalProperties") is False:
            errors.append(f"{at}.{name}: extra field not permitted")


def _check_bounds(value: JSONValue, schema: JSONObject, at: str, errors: list[str]) -> None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        for key in ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"):
            bound = schema.get(key)
            if isinstance(bound, int | float) and not _within(value, key, bound):
                errors.append(f"{at}: {value!r} breaks {key} {bound!r}")
    if isinstance(value, str):
        _sized(len(value), schema, "minLength", "maxLength", at, errors)
        pattern = schema.get("pattern")
        if isinstance(pattern, str) and re.search(pattern, value) is None:
            errors.append(f"{at}: does not match pattern {pattern!r}")
    if isinstance(value, list):
        _sized(len(value), schema, "minItems", "maxItems", at, errors)


def _sized(size: int, schema: JSONObject, low: str, high: str, at: str, errors: list[str]) -> None:
    lo, hi = schema.get(low), schema.get(high)
    if isinstance(lo, int) and size < lo:
        errors.append(f"{at}: shorter than {low} {lo}")
    if isinstance(hi, int) and size > hi:
        errors.append(f"{at}: longer than {high} {hi}")


def _within(value: float, key: str, bound: float) -> bool:
    if key == "minimum":
        return value >= bound
    if key == "maximum":
        return value <= bound
    if key == "exclusiveMinimum":
        return value > bound
    return value < bound
