"""Structured-output schemas and request-body shaping: no sockets."""

from __future__ import annotations

import json
from enum import Enum
from typing import Any, Generic, TypeVar

import jsonschema
import pytest
from pydantic import BaseModel

from batchor_core.errors import ConfigurationError
from batchor_core.ports import RequestSpec
from batchor_core.providers import OpenAIBatchProvider, OpenAIProviderConfig

CHAT = "/v1/chat/completions"
RESPONSES = "/v1/responses"


class Sentiment(Enum):
    POSITIVE = "positive"
    NEGATIVE = "negative"


class Address(BaseModel):
    city: str
    zip_code: str | None


class Person(BaseModel):
    name: str
    nickname: str | None
    address: Address
    mood: Sentiment
    tags: list[str]
    previous: list[Address]


T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    items: list[T]


@pytest.fixture
def provider() -> OpenAIBatchProvider:
    return OpenAIBatchProvider(OpenAIProviderConfig(api_key="sk-test"))


def spec(
    endpoint: str = CHAT,
    *,
    options: dict[str, Any] | None = None,
    schema: dict[str, Any] | None = None,
    name: str | None = None,
) -> RequestSpec:
    return RequestSpec(
        model="gpt-test",
        endpoint=endpoint,
        request_options=options or {},
        output_schema=schema,
        output_name=name,
    )


# --------------------------------------------------------------------------- output_schema


def test_output_schema_is_strict_and_covers_optional_nested_enum_list(
    provider: OpenAIBatchProvider,
) -> None:
    name, schema = provider.output_schema(Person)
    assert name == "Person"
    assert schema["type"] == "object"
    assert schema["additionalProperties"] is False
    # Strict mode: every property is required, optional ones are nullable.
    assert set(schema["required"]) == set(Person.model_fields)
    assert {"type": "null"} in schema["properties"]["nickname"]["anyOf"]
    assert schema["$defs"]["Address"]["additionalProperties"] is False
    assert schema["$defs"]["Sentiment"]["enum"] == ["positive", "negative"]
    assert schema["properties"]["tags"] == {
        "items": {"type": "string"},
        "title": "Tags",
        "type": "array",
    }
    json.dumps(schema)  # plain JSON, no SDK objects

    good = {
        "name": "Ada",
        "nickname": None,
        "address": {"city": "London", "zip_code": None},
        "mood": "positive",
        "tags": ["math"],
        "previous": [{"city": "Paris", "zip_code": "75001"}],
    }
    jsonschema.validate(good, schema)
    Person.model_validate(good)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**good, "mood": "meh"}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**good, "extra": 1}, schema)


def test_output_schema_name_is_made_safe_for_the_api(provider: OpenAIBatchProvider) -> None:
    name, _ = provider.output_schema(Page[Address])
    assert name == "Page_Address_"


@pytest.mark.parametrize("bad", [dict, int, "Person"])
def test_output_schema_rejects_non_models(provider: OpenAIBatchProvider, bad: Any) -> None:
    with pytest.raises(ConfigurationError, match="pydantic"):
        provider.output_schema(bad)


# --------------------------------------------------------------------------- chat


def test_chat_body_without_output_model(provider: OpenAIBatchProvider) -> None:
    body = {"messages": [{"role": "user", "content": "hi"}]}
    shaped = provider.shape_body(spec(options={"temperature": 0.2}), body)
    assert shaped == {
        "messages": [{"role": "user", "content": "hi"}],
        "temperature": 0.2,
        "model": "gpt-test",
    }
    assert shaped is not body
    assert body == {"messages": [{"role": "user", "content": "hi"}]}


def test_chat_body_with_output_model(provider: OpenAIBatchProvider) -> None:
    name, schema = provider.output_schema(Person)
    body = {"messages": [{"role": "user", "content": "hi"}], "response_format": {"type": "text"}}
    shaped = provider.shape_body(spec(schema=schema, name=name), body)
    assert shaped["response_format"] == {
        "type": "json_schema",
        "json_schema": {"name": "Person", "schema": schema, "strict": True},
    }
    assert body["response_format"] == {"type": "text"}  # input untouched


def test_item_body_overrides_options_but_not_the_model(provider: OpenAIBatchProvider) -> None:
    shaped = provider.shape_body(
        spec(options={"temperature": 0.0, "max_tokens": 10, "model": "other"}),
        {"messages": [], "temperature": 1.0, "model": "item-model"},
    )
    assert shaped["temperature"] == 1.0
    assert shaped["max_tokens"] == 10
    assert shaped["model"] == "gpt-test"


def test_chat_body_without_messages_is_a_configuration_error(
    provider: OpenAIBatchProvider,
) -> None:
    with pytest.raises(ConfigurationError, match="needs 'messages'"):
        provider.shape_body(spec(), {"input": "hi"})


# --------------------------------------------------------------------------- responses


def test_responses_body_without_output_model(provider: OpenAIBatchProvider) -> None:
    shaped = provider.shape_body(spec(RESPONSES, options={"store": False}), {"input": "hi"})
    assert shaped == {"input": "hi", "store": False, "model": "gpt-test"}
    assert "text" not in shaped


def test_responses_body_with_output_model_keeps_other_text_settings(
    provider: OpenAIBatchProvider,
) -> None:
    name, schema = provider.output_schema(Person)
    body = {"input": "hi", "text": {"verbosity": "low", "format": {"type": "text"}}}
    shaped = provider.shape_body(spec(RESPONSES, schema=schema, name=name), body)
    assert shaped["text"] == {
        "verbosity": "low",
        "format": {"type": "json_schema", "name": "Person", "schema": schema, "strict": True},
    }
    assert "response_format" not in shaped
    assert body["text"] == {"verbosity": "low", "format": {"type": "text"}}


def test_responses_text_option_is_used_when_the_body_has_none(
    provider: OpenAIBatchProvider,
) -> None:
    shaped = provider.shape_body(
        spec(RESPONSES, options={"text": {"verbosity": "high"}}, schema={"type": "object"}),
        {"input": "hi"},
    )
    assert shaped["text"]["verbosity"] == "high"
    assert shaped["text"]["format"]["name"] == "output"  # default name when none stored


def test_responses_body_without_input_is_a_configuration_error(
    provider: OpenAIBatchProvider,
) -> None:
    with pytest.raises(ConfigurationError, match="needs 'input'"):
        provider.shape_body(spec(RESPONSES), {"messages": []})


def test_responses_text_must_be_an_object(provider: OpenAIBatchProvider) -> None:
    with pytest.raises(ConfigurationError, match="'text'"):
        provider.shape_body(spec(RESPONSES, schema={"type": "object"}), {"input": "x", "text": 3})


def test_unknown_endpoint_is_a_configuration_error(provider: OpenAIBatchProvider) -> None:
    with pytest.raises(ConfigurationError, match="not supported"):
        provider.shape_body(spec("/v1/embeddings"), {"input": "x"})


# --------------------------------------------------------------------------- body_encoder

_SCHEMA = {"type": "object", "properties": {"label": {"type": "string"}}, "required": ["label"]}
_SPECS = [
    spec(CHAT),
    spec(CHAT, schema=_SCHEMA, name="Label"),
    spec(CHAT, options={"temperature": 0.5, "seed": 7}, schema=_SCHEMA),
    spec(CHAT, options={"model": "from-options", "response_format": {"type": "text"}}),
    spec(RESPONSES),
    spec(RESPONSES, schema=_SCHEMA, name="Label"),
    spec(RESPONSES, options={"text": {"verbosity": "low"}}, schema=_SCHEMA),
    spec(RESPONSES, options={"max_output_tokens": 20}, schema=_SCHEMA),
]
_BODIES: list[Any] = [
    {"messages": [{"role": "user", "content": "héllo \u2028"}], "input": "x"},
    {"messages": [], "model": "mine", "temperature": 1},  # batchor's keys in the body
    {"messages": [], "response_format": {"type": "json_object"}},
    {"input": [{"role": "user", "content": "x"}], "text": {"verbosity": "high"}},
    {"input": "wide", "messages": [2**70]},  # orjson refuses: the standard library encodes
    {"seed": 1},  # neither messages nor input
]


@pytest.mark.parametrize("request_spec", _SPECS)
def test_body_encoder_gives_the_bytes_and_errors_of_shape_body(
    provider: OpenAIBatchProvider, request_spec: RequestSpec
) -> None:
    from types import MappingProxyType

    from batchor_core import jsoncodec

    encode = provider.body_encoder(request_spec)
    for body in [*_BODIES, MappingProxyType({"messages": [1], "input": "proxy"})]:
        try:
            expected = jsoncodec.dumps(provider.shape_body(request_spec, body))
        except ConfigurationError as exc:
            with pytest.raises(ConfigurationError, match=str(exc)[:40]):
                encode(body)
            continue
        assert encode(body) == expected, body


def test_body_encoder_of_an_unknown_endpoint_raises_like_shape_body(
    provider: OpenAIBatchProvider,
) -> None:
    with pytest.raises(ConfigurationError, match="not supported"):
        provider.body_encoder(spec("/v1/embeddings"))({"input": "x"})
