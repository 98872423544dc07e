"""The stored-schema check used where the output model cannot be imported."""

from __future__ import annotations

from typing import Any

import pytest

from batchor_core.providers.openai.requests import output_schema
from batchor_core.schemacheck import schema_errors
from tests.integration.review_model import Review

SCHEMA = output_schema(Review)[1]
VALID: dict[str, Any] = {
    "sentiment": "positive",
    "summary": "fine",
    "complaint": None,
    "aspects": [{"name": "price", "score": 3}],
}


def test_what_the_model_accepts_passes() -> None:
    assert Review.model_validate(VALID)
    assert schema_errors(VALID, SCHEMA) == []
    assert schema_errors({**VALID, "complaint": "slow", "aspects": []}, SCHEMA) == []


@pytest.mark.parametrize(
    ("change", "where"),
    [
        ({"sentiment": "furious"}, "<root>.sentiment"),
        ({"complaint": 3}, "<root>.complaint"),
        ({"aspects": [{"name": "price", "score": "high"}]}, "<root>.aspects[0].score"),
        ({"aspects": [{"name": "price", "score": True}]}, "<root>.aspects[0].score"),
        ({"extra": 1}, "<root>.extra"),
    ],
)
def test_what_the_model_rejects_fails_naming_the_field(change: dict[str, Any], where: str) -> None:
    value = {**VALID, **change}
    errors = schema_errors(value, SCHEMA)
    assert errors and errors[0].startswith(where), errors


def test_a_missing_field_and_a_non_object_root_fail() -> None:
    assert schema_errors({k: v for k, v in VALID.items() if k != "summary"}, SCHEMA) == [
        "<root>.summary: field required"
    ]
    assert schema_errors([VALID], SCHEMA)
