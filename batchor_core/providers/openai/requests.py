"""Request bodies: structured-output schemas and completing user-built bodies.

Precedence when a body is shaped, lowest first:

1. ``spec.request_options`` (job-wide defaults such as ``temperature``);
2. the item's own body (so one item can override a default);
3. what batchor owns: ``model`` is always ``spec.model`` (a batch file must use one
   model), and with an output model the structured-output format
   (``response_format`` for chat, ``text.format`` for responses) always replaces any
   format given in 1 or 2; other keys of a responses ``text`` object are kept.

The merge is shallow: a key present in both the options and the body takes the body's
value whole. Nested values are shared with the inputs, never mutated.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import cast

import orjson
from openai.lib import type_to_response_format_param
from pydantic import BaseModel

from batchor_core import jsoncodec
from batchor_core.errors import ConfigurationError
from batchor_core.models import Endpoint, JSONObject
from batchor_core.ports import RequestSpec

__all__ = ["body_encoder", "output_schema", "shape_body"]

DEFAULT_SCHEMA_NAME = "output"
_SCHEMA_NAME_BAD_CHARS = re.compile(r"[^A-Za-z0-9_-]")
_SCHEMA_NAME_MAX = 64


def output_schema(output_model: type) -> tuple[str, JSONObject]:
    """The strict JSON schema OpenAI enforces for ``output_model``.

    Uses the SDK's own conversion, so optional fields, nested models, enums and lists
    follow exactly what the API accepts in strict mode.

    Args:
        output_model: A pydantic v2 model class.

    Returns:
        The schema name (the class name, made safe for the API) and the schema.

    Raises:
        ConfigurationError: The class is not a pydantic model or cannot be expressed
            as a strict schema.
    """
    if not (isinstance(output_model, type) and issubclass(output_model, BaseModel)):
        raise ConfigurationError(
            f"output_model must be a pydantic.BaseModel subclass, got {output_model!r}"
        )
    try:
        param = type_to_response_format_param(output_model)
        json_schema = cast(Mapping[str, object], cast(Mapping[str, object], param)["json_schema"])
        schema = cast(JSONObject, json_schema["schema"])
    except Exception as exc:  # the SDK raises TypeError / ValueError / pydantic errors here
        raise ConfigurationError(
            f"output_model {output_model.__name__} cannot be used as a strict OpenAI "
            f"structured-output schema: {exc}"
        ) from exc
    return _schema_name(str(json_schema.get("name") or output_model.__name__)), schema


def _schema_name(raw: str) -> str:
    # The API accepts names matching ^[a-zA-Z0-9_-]{1,64}$; generic models ("Page[Item]")
    # would otherwise be rejected for every line of the batch.
    name = _SCHEMA_NAME_BAD_CHARS.sub("_", raw)[:_SCHEMA_NAME_MAX]
    return name or DEFAULT_SCHEMA_NAME


def shape_body(spec: RequestSpec, body: Mapping[str, object]) -> JSONObject:
    """Complete a user-built request body for ``spec.endpoint``.

    See the module docstring for precedence.

    Args:
        spec: Model, endpoint, default options and output schema of the run.
        body: The item's body (``messages`` for chat, ``input`` for responses).

    Returns:
        A new dict, ready to be the ``body`` of one batch input line.

    Raises:
        ConfigurationError: Unknown endpoint, or the body lacks ``messages`` (chat) /
            ``input`` (responses), or a responses ``text`` option is not an object.
    """
    shaped: JSONObject = {**spec.request_options, **body}
    shaped["model"] = spec.model
    if spec.endpoint == Endpoint.CHAT_COMPLETIONS:
        if "messages" not in shaped:
            raise ConfigurationError(
                "A /v1/chat/completions request body needs 'messages': return "
                "{'messages': [...]} from build_request, or use build_prompt"
            )
        if spec.output_schema is not None:
            shaped["response_format"] = {
                "type": "json_schema",
                "json_schema": {
                    "name": spec.output_name or DEFAULT_SCHEMA_NAME,
                    "schema": spec.output_schema,
                    "strict": True,
                },
            }
    elif spec.endpoint == Endpoint.RESPONSES:
        if "input" not in shaped:
            raise ConfigurationError(
                "A /v1/responses request body needs 'input': return {'input': ...} "
                "from build_request, or use build_prompt"
            )
        if spec.output_schema is not None:
            text = shaped.get("text")
            if text is None:
                text = {}
            if not isinstance(text, Mapping):
                raise ConfigurationError(
                    "The 'text' field of a /v1/responses body must be an object, "
                    f"got {type(text).__name__}"
                )
            shaped["text"] = {
                **text,
                "format": {
                    "type": "json_schema",
                    "name": spec.output_name or DEFAULT_SCHEMA_NAME,
                    "schema": spec.output_schema,
                    "strict": True,
                },
            }
    else:
        known = ", ".join(e.value for e in Endpoint)
        raise ConfigurationError(
            f"Endpoint {spec.endpoint!r} is not supported by the OpenAI provider; use {known}"
        )
    return shaped


def body_encoder(spec: RequestSpec) -> Callable[[Mapping[str, object]], bytes]:
    """``jsoncodec.dumps(shape_body(spec, body))`` as one function of ``body``, for the
    many bodies of one run.

    The keys batchor appends to every body (``model``, and the structured-output format
    with its schema) are encoded once: a body's own JSON is spliced in front of them, so
    the bytes are exactly those of the shaped body. A body that already has one of those
    keys, lacks its ``messages`` / ``input``, or that orjson cannot encode goes through
    :func:`shape_body` itself (same bytes, same errors).
    """

    def shaped(body: Mapping[str, object]) -> bytes:
        return jsoncodec.dumps(shape_body(spec, body))

    try:
        owned = shape_body(spec, {"messages": [], "input": ""})
    except ConfigurationError:
        return shaped  # an unknown endpoint: every body raises the same error
    # What shape_body appends after the body's own keys, in its order.
    chat = spec.endpoint == Endpoint.CHAT_COMPLETIONS
    required = "messages" if chat else "input"
    output = "response_format" if chat else "text"
    owned = {key: owned[key] for key in ("model", output) if key in owned}
    try:
        tail = b"," + orjson.dumps(owned)[1:]
    except TypeError:
        return shaped
    options, dumps = spec.request_options, orjson.dumps

    def encode(body: Mapping[str, object]) -> bytes:
        merged = {**options, **body}
        if required not in merged or "model" in merged or output in merged:
            return shaped(body)
        try:
            head = dumps(merged)
        except TypeError:
            return shaped(body)
        return head[:-1] + tail

    return encode
