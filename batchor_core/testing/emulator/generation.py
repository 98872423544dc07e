"""Deterministic generation of values that conform to a JSON Schema.

A schema is compiled once into a tree of small closures (:class:`SchemaGenerator`), so
generating a value per output line costs a handful of function calls. Compiled generators
are cached by schema text (:func:`generator_for`); all lines of a batch usually share one.

Supported: ``type`` (single or list), ``properties``/``required``/``additionalProperties``,
``enum``, ``const``, ``anyOf``/``oneOf``/``allOf``, ``$ref`` into ``#/$defs`` or
``#/definitions`` (recursion is cut off by depth), ``items``/``prefixItems``/``minItems``/
``maxItems``/``uniqueItems``, ``minLength``/``maxLength``, ``format`` (date, date-time, time,
email, uuid, uri, hostname, ipv4) and numeric bounds including exclusive ones and
``multipleOf``. ``pattern`` is not honoured.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .wire import JSONObject, JSONValue

_MASK = (1 << 64) - 1
_SOFT_DEPTH = 6  # past this, optional branches (nulls, empty arrays) are preferred
_HARD_DEPTH = 24  # past this, give up on recursion entirely
_WORDS = (
    "alpha",
    "bravo",
    "cedar",
    "delta",
    "ember",
    "fjord",
    "garnet",
    "harbor",
    "indigo",
    "juniper",
    "kestrel",
    "lumen",
    "meadow",
    "nimbus",
    "orchid",
    "prairie",
)


class Rng:
    """A tiny splitmix64 generator: cheap to seed per line, unlike ``random.Random``.

    Args:
        seed: Any integer; only the low 64 bits are used.
    """

    __slots__ = ("_state",)

    def __init__(self, seed: int) -> None:
        self._state = seed & _MASK

    def next(self) -> int:
        """Return the next 64-bit value."""
        self._state = state = (self._state + 0x9E3779B97F4A7C15) & _MASK
        z = ((state ^ (state >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK
        return z ^ (z >> 31)

    def below(self, n: int) -> int:
        """Return an integer in ``[0, n)`` (``n`` must be positive)."""
        return self.next() % n


Generator = Callable[[Rng, int], JSONValue]
"""A compiled generator: ``(rng, depth) -> value``."""

VARIANT_COUNT = 64
"""Size of the pool of pre-generated values per schema and seed."""


@dataclass(frozen=True)
class Variants:
    """A seeded pool of values conforming to one schema, each with its JSON text.

    Attributes:
        values: ``(value, json_text)`` pairs.
        required: The root schema's required properties (to build violations).
    """

    values: tuple[tuple[JSONValue, str], ...]
    required: tuple[str, ...]


class SchemaGenerator:
    """A JSON Schema compiled into closures that produce conforming values.

    Args:
        schema: The root schema (``$ref`` pointers are resolved against it).
    """

    def __init__(self, schema: JSONValue) -> None:
        self._root = schema
        self._refs: dict[str, Generator] = {}
        self._variants: dict[int, Variants] = {}
        self._gen = self._compile(schema, "value")

    def generate(self, rng: Rng) -> JSONValue:
        """Return a value conforming to the schema, driven by ``rng``."""
        return self._gen(rng, 0)

    def variants(self, seed: int) -> Variants:
        """Return the pool of :data:`VARIANT_COUNT` values for ``seed`` (built once)."""
        pool = self._variants.get(seed)
        if pool is None:
            rng = Rng(seed ^ 0x243F6A8885A308D3)
            values = []
            for _ in range(VARIANT_COUNT):
                value = self._gen(rng, 0)
                values.append((value, json.dumps(value)))
            root = self._root
            if isinstance(root, dict) and "$ref" in root:
                root = self._lookup(str(root["$ref"]))
            required = root.get("required") if isinstance(root, dict) else None
            names = tuple(str(r) for r in required) if isinstance(required, list) else ()
            pool = self._variants[seed] = Variants(tuple(values), names)
        return pool

    # -- compilation -----------------------------------------------------------------

    def _compile(self, node: JSONValue, name: str) -> Generator:
        if not isinstance(node, dict):
            # ``true`` / ``{}`` accept anything; ``false`` accepts nothing (best effort).
            return _constant(name)
        if "$ref" in node:
            return self._ref(str(node["$ref"]), name)
        if "const" in node:
            const = node["const"]
            return lambda rng, depth: const
        if "enum" in node and isinstance(node["enum"], list) and node["enum"]:
            return _choice(list(node["enum"]))
        if "allOf" in node and isinstance(node["allOf"], list):
            return self._compile(self._merge_all_of(node), name)
        for key in ("anyOf", "oneOf"):
            if isinstance(node.get(key), list) and node[key]:
                return self._union([self._compile(b, name) for b in node[key]], node[key])
        kind = node.get("type")
        if isinstance(kind, list):
            branches = [dict(node, type=t) for t in kind]
            return self._union([self._compile(b, name) for b in branches], branches)
        if kind is None:
            kind = "object" if "properties" in node else "array" if "items" in node else "string"
        builder = _BUILDERS.get(str(kind))
        if builder is None:
            return _constant(name)
        return builder(self, node, name)

    def _ref(self, ref: str, name: str) -> Generator:
        # Resolved lazily so that recursive schemas compile in finite time.
        def gen(rng: Rng, depth: int) -> JSONValue:
            target = self._refs.get(ref)
            if target is None:
                target = self._refs[ref] = self._compile(self._lookup(ref), name)
            return target(rng, depth + 1)

        return gen

    def _lookup(self, ref: str) -> JSONValue:
        if not ref.startswith("#"):
            return {}
        node: JSONValue = self._root
        for part in ref[1:].split("/"):
            if not part:
                continue
            part = part.replace("~1", "/").replace("~0", "~")
            if isinstance(node, dict) and part in node:
                node = node[part]
            else:
                return {}
        return node

    def _merge_all_of(self, node: JSONObject) -> JSONObject:
        merged: JSONObject = {k: v for k, v in node.items() if k != "allOf"}
        for branch in node["allOf"]:
            if isinstance(branch, dict) and "$ref" in branch:
                branch = self._lookup(str(branch["$ref"]))
            if not isinstance(branch, dict):
                continue
            for key, value in branch.items():
                if key == "properties" and isinstance(value, dict):
                    merged["properties"] = {**merged.get("properties", {}), **value}
                elif key == "required" and isinstance(value, list):
                    merged["required"] = [*merged.get("required", []), *value]
                else:
                    merged.setdefault(key, value)
        return merged

    def _union(self, gens: list[Generator], branches: list[JSONValue]) -> Generator:
        nulls = [
            i for i, b in enumerate(branches) if isinstance(b, dict) and b.get("type") == "null"
        ]
        non_null = [i for i in range(len(gens)) if i not in nulls]
        first = gens[non_null[0]] if non_null else gens[0]
        null_gen = gens[nulls[0]] if nulls else None

        def gen(rng: Rng, depth: int) -> JSONValue:
            if null_gen is not None and depth >= _SOFT_DEPTH:
                return null_gen(rng, depth)
            # Mostly the first non-null branch; sometimes any branch (including null).
            pick = rng.below(8)
            if pick < 6:
                return first(rng, depth)
            return gens[pick % len(gens)](rng, depth)

        return gen


def _constant(name: str) -> Generator:
    value = f"{name}-value"
    return lambda rng, depth: value


def _choice(options: list[JSONValue]) -> Generator:
    count = len(options)
    return lambda rng, depth: options[rng.below(count)]


def _object(compiler: SchemaGenerator, node: JSONObject, name: str) -> Generator:
    props = node.get("properties")
    props = props if isinstance(props, dict) else {}
    required = set(node.get("required") or ())
    fields = [(key, compiler._compile(sub, key), key in required) for key, sub in props.items()]

    def gen(rng: Rng, depth: int) -> JSONValue:
        if depth > _HARD_DEPTH:
            return {}
        child = depth + 1
        if depth < _SOFT_DEPTH:
            return {key: g(rng, child) for key, g, _ in fields}
        return {key: g(rng, child) for key, g, req in fields if req}

    return gen


def _array(compiler: SchemaGenerator, node: JSONObject, name: str) -> Generator:
    items = node.get("items", {})
    item_gen = compiler._compile(items if isinstance(items, dict) else {}, name)
    prefix = node.get("prefixItems")
    prefix_gens = [compiler._compile(p, name) for p in prefix] if isinstance(prefix, list) else []
    low = int(node.get("minItems", 0))
    high = node.get("maxItems")
    if high is None:
        span_low, span_high = max(low, 1), max(low, 2)
    else:
        span_low, span_high = min(max(low, 1), int(high)), min(max(low, 2), int(high))
    unique = bool(node.get("uniqueItems"))

    def gen(rng: Rng, depth: int) -> JSONValue:
        if depth > _HARD_DEPTH:
            return []
        count = low if depth >= _SOFT_DEPTH else span_low + rng.below(span_high - span_low + 1)
        child = depth + 1
        out = [g(rng, child) for g in prefix_gens[:count]]
        if not unique:
            out.extend(item_gen(rng, child) for _ in range(count - len(out)))
            return out
        seen = {json.dumps(v, sort_keys=True) for v in out}
        for _ in range(count * 8):
            if len(out) >= count:
                break
            value = item_gen(rng, child)
            key = json.dumps(value, sort_keys=True)
            if key not in seen:
                seen.add(key)
                out.append(value)
        return out

    return gen


def _uuid(n: int) -> str:
    digits = f"{n:016x}{(n * 0x9E3779B97F4A7C15) & _MASK:016x}"
    return f"{digits[:8]}-{digits[8:12]}-4{digits[13:16]}-8{digits[17:20]}-{digits[20:32]}"


_FORMATS: dict[str, Callable[[int], str]] = {
    "date": lambda n: f"2024-{1 + n % 12:02d}-{1 + n % 28:02d}",
    "date-time": lambda n: f"2024-{1 + n % 12:02d}-{1 + n % 28:02d}T{n % 24:02d}:{n % 60:02d}:00Z",
    "time": lambda n: f"{n % 24:02d}:{n % 60:02d}:00",
    "email": lambda n: f"{_WORDS[n % len(_WORDS)]}{n % 1000}@example.com",
    "uuid": lambda n: _uuid(n),
    "uri": lambda n: f"https://example.com/{_WORDS[n % len(_WORDS)]}/{n % 1000}",
    "hostname": lambda n: f"{_WORDS[n % len(_WORDS)]}.example.com",
    "ipv4": lambda n: f"10.{n % 256}.{(n >> 8) % 256}.{(n >> 16) % 256}",
}


def _string(compiler: SchemaGenerator, node: JSONObject, name: str) -> Generator:
    low = int(node.get("minLength", 0))
    high = node.get("maxLength")
    fmt = _FORMATS.get(str(node.get("format")))
    words = len(_WORDS)

    def gen(rng: Rng, depth: int) -> JSONValue:
        n = rng.next()
        if fmt is not None:
            text = fmt(n)
        else:
            text = f"{name} {_WORDS[n % words]} {_WORDS[(n >> 8) % words]}"
        if len(text) < low:
            text = text + "x" * (low - len(text))
        if high is not None and len(text) > int(high):
            text = text[: int(high)]
        return text

    return gen


def _bounds(node: JSONObject, step: float) -> tuple[float, float]:
    low = node.get("minimum")
    high = node.get("maximum")
    if isinstance(node.get("exclusiveMinimum"), int | float):
        low = node["exclusiveMinimum"] + step
    if isinstance(node.get("exclusiveMaximum"), int | float):
        high = node["exclusiveMaximum"] - step
    if low is None:
        low = 0 if high is None or high >= 0 else high - 100
    if high is None:
        high = low + 100
    return float(low), float(max(high, low))


def _integer(compiler: SchemaGenerator, node: JSONObject, name: str) -> Generator:
    low_f, high_f = _bounds(node, 1)
    low, high = int(-(-low_f // 1)), int(high_f // 1)
    multiple = node.get("multipleOf")
    if isinstance(multiple, int) and multiple > 0:
        first = -(-low // multiple) * multiple
        steps = max((high - first) // multiple + 1, 1)
        return lambda rng, depth: first + multiple * rng.below(steps)
    span = max(high - low + 1, 1)
    return lambda rng, depth: low + rng.below(span)


def _number(compiler: SchemaGenerator, node: JSONObject, name: str) -> Generator:
    low, high = _bounds(node, 0.01)
    width = high - low

    def gen(rng: Rng, depth: int) -> JSONValue:
        value = round(low + width * (rng.below(10_001) / 10_000), 2)
        return min(max(value, low), high)

    return gen


def _boolean(compiler: SchemaGenerator, node: JSONObject, name: str) -> Generator:
    return lambda rng, depth: rng.below(2) == 1


def _null(compiler: SchemaGenerator, node: JSONObject, name: str) -> Generator:
    return lambda rng, depth: None


_BUILDERS: dict[str, Callable[[SchemaGenerator, JSONObject, str], Generator]] = {
    "object": _object,
    "array": _array,
    "string": _string,
    "integer": _integer,
    "number": _number,
    "boolean": _boolean,
    "null": _null,
}

_CACHE: dict[str, SchemaGenerator] = {}
_CACHE_LIMIT = 256
_CACHE_LOCK = threading.Lock()


def generator_for(schema: Any) -> SchemaGenerator:
    """Return the (cached) compiled generator for ``schema``.

    Args:
        schema: A JSON Schema, as decoded from a request.

    Returns:
        A generator shared by every caller that passes an equal schema.
    """
    key = json.dumps(schema, sort_keys=True)
    with _CACHE_LOCK:
        cached = _CACHE.get(key)
        if cached is not None:
            return cached
    compiled = SchemaGenerator(schema)
    with _CACHE_LOCK:
        if len(_CACHE) >= _CACHE_LIMIT:
            _CACHE.pop(next(iter(_CACHE)))
        return _CACHE.setdefault(key, compiled)
