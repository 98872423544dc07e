"""Validation of ``POST /v1/batches`` parameters, with OpenAI's 400 error shapes."""

from __future__ import annotations

from dataclasses import dataclass

from .bodies import SUPPORTED_ENDPOINTS
from .wire import ApiError, JSONObject, JSONValue, bad_request

SPEC_ENDPOINTS = (
    "/v1/responses",
    "/v1/chat/completions",
    "/v1/embeddings",
    "/v1/completions",
    "/v1/moderations",
    "/v1/images/generations",
    "/v1/images/edits",
    "/v1/videos",
)
METADATA_MAX_PAIRS = 16
METADATA_MAX_KEY = 64
METADATA_MAX_VALUE = 512


@dataclass(frozen=True)
class CreateBatchParams:
    """The validated parameters of a batch create request."""

    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None


def parse_create_batch(body: JSONObject) -> CreateBatchParams:
    """Validate a ``POST /v1/batches`` body (the input file's existence is checked later).

    Raises:
        ApiError: 400 for a missing or invalid parameter.
    """
    input_file_id = body.get("input_file_id")
    if not isinstance(input_file_id, str) or not input_file_id:
        raise _missing("input_file_id")
    endpoint = body.get("endpoint")
    if not isinstance(endpoint, str):
        raise _missing("endpoint")
    if endpoint not in SPEC_ENDPOINTS:
        raise bad_request(
            f"Invalid value for 'endpoint': {endpoint!r}. Supported values are: "
            + ", ".join(SPEC_ENDPOINTS),
            param="endpoint",
            code="invalid_value",
        )
    if endpoint not in SUPPORTED_ENDPOINTS:
        raise bad_request(
            f"The emulator only supports {' and '.join(SUPPORTED_ENDPOINTS)}, not {endpoint}.",
            param="endpoint",
            code="invalid_value",
        )
    window = body.get("completion_window")
    if window is None:
        raise _missing("completion_window")
    if window != "24h":
        raise bad_request(
            f"Invalid value for 'completion_window': {window!r}. Supported values are: '24h'.",
            param="completion_window",
            code="invalid_value",
        )
    metadata = _metadata(body.get("metadata"))
    _check_output_expiry(body.get("output_expires_after"))
    return CreateBatchParams(input_file_id, endpoint, window, metadata)


def _missing(param: str) -> ApiError:
    return bad_request(
        f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter"
    )


def _metadata(value: JSONValue) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise bad_request("Invalid type for 'metadata': expected an object.", param="metadata")
    if len(value) > METADATA_MAX_PAIRS:
        raise bad_request(
            f"Invalid 'metadata': too many properties. Expected at most {METADATA_MAX_PAIRS}.",
            param="metadata",
        )
    for key, item in value.items():
        if len(key) > METADATA_MAX_KEY:
            raise bad_request(
                f"Invalid 'metadata': key {key[:20]!r}... is longer than {METADATA_MAX_KEY}.",
                param="metadata",
            )
        if not isinstance(item, str):
            raise bad_request(
                f"Invalid type for 'metadata.{key}': expected a string.", param="metadata"
            )
        if len(item) > METADATA_MAX_VALUE:
            raise bad_request(
                f"Invalid 'metadata.{key}': string too long. "
                f"Expected at most {METADATA_MAX_VALUE}.",
                param="metadata",
            )
    return {str(k): str(v) for k, v in value.items()}


def _check_output_expiry(value: JSONValue) -> None:
    if value is None:
        return
    seconds = value.get("seconds") if isinstance(value, dict) else None
    if (
        not isinstance(value, dict)
        or value.get("anchor") != "created_at"
        or not isinstance(seconds, int)
        or not 3600 <= seconds <= 2_592_000
    ):
        raise bad_request(
            "Invalid 'output_expires_after': expected {'anchor': 'created_at', 'seconds': "
            "3600..2592000}.",
            param="output_expires_after",
        )
