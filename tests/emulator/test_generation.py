"""Schema-conforming value generation (pure, no sockets)."""

from __future__ import annotations

import json
import re
from typing import Any

import jsonschema
import pytest

from batchor_core.testing.emulator.generation import (
    VARIANT_COUNT,
    Rng,
    SchemaGenerator,
    generator_for,
)

FORMATS = jsonschema.FormatChecker()


def _check_all(schema: dict[str, Any], *, seeds: range = range(40)) -> list[Any]:
    generator = SchemaGenerator(schema)
    values = [generator.generate(Rng(seed)) for seed in seeds]
    for value in values:
        jsonschema.validate(value, schema, format_checker=FORMATS)
    return values


def test_scalars_respect_bounds_and_enums() -> None:
    schema = {
        "type": "object",
        "properties": {
            "kind": {"enum": ["a", "b", "c"]},
            "fixed": {"const": {"x": 1}},
            "short": {"type": "string", "minLength": 30, "maxLength": 31},
            "tiny": {"type": "string", "maxLength": 3},
            "age": {"type": "integer", "minimum": 18, "maximum": 20},
            "odd": {"type": "integer", "exclusiveMinimum": 0, "exclusiveMaximum": 3},
            "step": {"type": "integer", "minimum": 1, "maximum": 50, "multipleOf": 7},
            "negative": {"type": "integer", "maximum": -5},
            "ratio": {"type": "number", "minimum": 0.5, "maximum": 0.75},
            "open": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 0.02},
            "flag": {"type": "boolean"},
            "nothing": {"type": "null"},
        },
        "required": ["kind", "fixed", "short", "tiny", "age", "odd", "step", "negative"],
        "additionalProperties": False,
    }
    values = _check_all(schema)
    assert {v["kind"] for v in values} == {"a", "b", "c"}
    assert {v["flag"] for v in values} == {True, False}


def test_formats() -> None:
    names = ["date", "date-time", "time", "email", "uuid", "uri", "hostname", "ipv4"]
    schema = {
        "type": "object",
        "properties": {name: {"type": "string", "format": name} for name in names},
        "required": names,
    }
    for value in _check_all(schema):
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z", value["date-time"])
        assert value["uri"].startswith("https://")


def test_arrays() -> None:
    schema = {
        "type": "object",
        "properties": {
            "default": {"type": "array", "items": {"type": "integer"}},
            "bounded": {"type": "array", "items": {"type": "string"}, "minItems": 3, "maxItems": 4},
            "empty_ok": {"type": "array", "items": {"type": "string"}, "maxItems": 0},
            "unique": {
                "type": "array",
                "items": {"enum": ["x", "y", "z"]},
                "minItems": 3,
                "uniqueItems": True,
            },
            "tuple": {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "string"}]},
        },
        "required": ["default", "bounded", "empty_ok", "unique", "tuple"],
    }
    values = _check_all(schema)
    assert {len(v["default"]) for v in values} == {1, 2}


def test_unions_refs_and_type_lists() -> None:
    schema = {
        "$defs": {
            "Pet": {
                "type": "object",
                "properties": {"name": {"type": "string"}},
                "required": ["name"],
                "additionalProperties": False,
            },
            "Base": {"type": "object", "properties": {"name": {"type": "string"}}},
        },
        "definitions": {"Id": {"type": "integer", "minimum": 1}},
        "type": "object",
        "properties": {
            "maybe": {"anyOf": [{"type": "string"}, {"type": "null"}]},
            "pet": {"$ref": "#/$defs/Pet"},
            "id": {"$ref": "#/definitions/Id"},
            "either": {"oneOf": [{"type": "integer"}, {"type": "boolean"}]},
            "listed": {"type": ["integer", "null"]},
            "merged": {
                "allOf": [
                    {"$ref": "#/$defs/Base"},
                    {"properties": {"age": {"type": "integer"}}, "required": ["age", "name"]},
                ]
            },
        },
        "required": ["maybe", "pet", "id", "either", "listed", "merged"],
        "additionalProperties": False,
    }
    values = _check_all(schema, seeds=range(80))
    assert any(v["maybe"] is None for v in values)
    assert any(isinstance(v["maybe"], str) for v in values)
    assert any(isinstance(v["either"], bool) for v in values)


def test_recursive_schemas_terminate() -> None:
    schema = {
        "$defs": {
            "Node": {
                "type": "object",
                "properties": {
                    "label": {"type": "string"},
                    "children": {"type": "array", "items": {"$ref": "#/$defs/Node"}},
                    "parent": {"anyOf": [{"$ref": "#/$defs/Node"}, {"type": "null"}]},
                },
                "required": ["label", "children", "parent"],
                "additionalProperties": False,
            }
        },
        "$ref": "#/$defs/Node",
    }
    for value in _check_all(schema, seeds=range(10)):
        assert len(json.dumps(value)) < 2_000_000


def test_empty_and_unknown_schemas() -> None:
    for schema in ({}, {"type": "string"}, {"description": "anything"}):
        _check_all(schema, seeds=range(3))


def test_variants_are_deterministic_per_seed_and_cached() -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    first = generator_for(schema).variants(1)
    assert generator_for(json.loads(json.dumps(schema))) is generator_for(schema)
    assert generator_for(schema).variants(1) is first
    assert len(first.values) == VARIANT_COUNT
    assert first.required == ("a",)
    assert [v for v, _ in first.values] != [v for v, _ in generator_for(schema).variants(2).values]
    for value, text in first.values:
        assert json.loads(text) == value
        jsonschema.validate(value, schema)


@pytest.mark.parametrize("bound", [1, 7, 1000])
def test_rng_below_stays_in_range(bound: int) -> None:
    rng = Rng(123)
    draws = {rng.below(bound) for _ in range(500)}
    assert min(draws) >= 0 and max(draws) < bound
    assert len(draws) == min(bound, len(draws)) and len(draws) > min(bound, 5) - 1
