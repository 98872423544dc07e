"""Real emulator responses validate against the schemas of OpenAI's published OpenAPI spec.

``tests/data/openai_batch_file_schemas.json`` holds ``components.schemas`` entries copied
verbatim from OpenAI's ``openai-openapi.yaml``: Batch, BatchError, BatchRequestCounts,
OpenAIFile, ListBatchesResponse, ListFilesResponse, DeleteFileResponse, ErrorResponse,
Error, Metadata, CreateChatCompletionResponse and Response, plus everything they ``$ref``.
It was extracted with this script (run from the repository root)::

    import json, yaml
    spec = yaml.safe_load(open("openai-openapi.yaml"))
    schemas = spec["components"]["schemas"]
    roots = ["Batch", "BatchError", "BatchRequestCounts", "OpenAIFile",
             "ListBatchesResponse", "ListFilesResponse", "DeleteFileResponse",
             "ErrorResponse", "Error", "Metadata", "CreateChatCompletionResponse", "Response"]
    def refs(node):
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "$ref" and isinstance(value, str):
                    yield value.rsplit("/", 1)[-1]
                else:
                    yield from refs(value)
        elif isinstance(node, list):
            for value in node:
                yield from refs(value)
    picked, todo = {}, list(roots)
    while todo:
        name = todo.pop()
        if name not in picked:
            picked[name] = schemas[name]
            todo.extend(refs(schemas[name]))
    doc = {"$comment": "...", "components": {"schemas": dict(sorted(picked.items()))}}
    json.dump(doc, open("tests/data/openai_batch_file_schemas.json", "w"), indent=1)

Besides validating, the tests check that the emulator emits no property the schema does
not declare (the spec schemas allow extra properties, which would hide typos).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from openai import OpenAI

from batchor_core.testing import OpenAIEmulator

from .conftest import make_client
from .helpers import (
    RESPONSES,
    chat_line,
    create_batch,
    jsonl,
    raw_request,
    read_lines,
    responses_line,
    upload,
)

pytestmark = pytest.mark.integration

SCHEMA_FILE = Path(__file__).parents[1] / "data" / "openai_batch_file_schemas.json"


@cache
def _document() -> dict[str, Any]:
    document: dict[str, Any] = json.loads(SCHEMA_FILE.read_text())
    return document


def _validator(name: str) -> jsonschema.Draft202012Validator:
    root = {"components": _document()["components"], "$ref": f"#/components/schemas/{name}"}
    return jsonschema.Draft202012Validator(root)


def _resolve(schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = _document()["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def _undeclared(instance: Any, schema: dict[str, Any], where: str = "$") -> Iterator[str]:
    """Paths of object keys that ``schema`` does not declare (following $ref/properties/items)."""
    schema = _resolve(schema)
    if isinstance(instance, dict):
        branches = [_resolve(b) for b in schema.get("anyOf", []) if isinstance(b, dict)]
        objects = [b for b in branches if b.get("type") == "object"]
        if objects:
            schema = objects[0]
        properties = schema.get("properties")
        if properties is None:
            return
        for key, value in instance.items():
            if key not in properties:
                yield f"{where}.{key}"
            else:
                yield from _undeclared(value, properties[key], f"{where}.{key}")
    elif isinstance(instance, list) and isinstance(schema.get("items"), dict):
        for index, value in enumerate(instance):
            yield from _undeclared(value, schema["items"], f"{where}[{index}]")


def assert_conforms(name: str, instance: Any, *, strict_keys: bool = True) -> None:
    """Validate ``instance`` against spec schema ``name`` (and, by default, its keys)."""
    errors = sorted(_validator(name).iter_errors(instance), key=lambda e: list(e.path))
    assert not errors, f"{name}: " + "; ".join(f"{list(e.path)}: {e.message}" for e in errors[:5])
    if strict_keys:
        extra = list(_undeclared(instance, {"$ref": f"#/components/schemas/{name}"}))
        assert not extra, f"{name}: undeclared keys {extra}"


def _get_batch(emu: OpenAIEmulator, batch_id: str) -> dict[str, Any]:
    status, _, body = raw_request(emu, "GET", f"/v1/batches/{batch_id}")
    assert status == 200
    return dict(body)


def test_schema_file_is_the_spec_copy() -> None:
    schemas = _document()["components"]["schemas"]
    for name in ("Batch", "BatchError", "BatchRequestCounts", "OpenAIFile", "ErrorResponse"):
        assert name in schemas
    assert "batch_output" in schemas["OpenAIFile"]["properties"]["purpose"]["enum"]
    jsonschema.Draft202012Validator.check_schema(schemas["Batch"])


def test_negative_control_catches_violations() -> None:
    with pytest.raises(AssertionError):
        assert_conforms("Batch", {"id": "b", "object": "batch"})
    with pytest.raises(AssertionError):
        assert_conforms("Batch", {**_minimal_batch(), "status": "done"})
    with pytest.raises(AssertionError):
        assert_conforms("Batch", {**_minimal_batch(), "output_file_id": None})
    with pytest.raises(AssertionError):
        assert_conforms("Batch", {**_minimal_batch(), "surprise": 1})


def _minimal_batch() -> dict[str, Any]:
    return {
        "id": "batch_1",
        "object": "batch",
        "endpoint": "/v1/chat/completions",
        "input_file_id": "file-1",
        "completion_window": "24h",
        "status": "validating",
        "created_at": 1,
    }


def test_every_batch_status_conforms(client: OpenAI, emu: OpenAIEmulator) -> None:
    good = [chat_line(f"r{i}", f"q{i}") for i in range(6)]
    seen: dict[str, dict[str, Any]] = {}

    file = upload(client, jsonl(good))
    status, _, created = raw_request(
        emu,
        "POST",
        "/v1/batches",
        body={
            "input_file_id": file.id,
            "endpoint": "/v1/chat/completions",
            "completion_window": "24h",
            "metadata": {"k": "v"},
        },
    )
    assert status == 200
    seen[created["status"]] = created
    seen["completed"] = _get_batch(emu, created["id"])

    seen["failed"] = _get_batch(emu, create_batch(client, ["not json", good[0]]).id)
    emu.faults.fail_batch(code="token_limit_exceeded")
    faulted = _get_batch(emu, create_batch(client, good).id)
    emu.faults.expire_batch(completed_fraction=0.5)
    seen["expired"] = _get_batch(emu, create_batch(client, good).id)

    emu.faults.hold_batches(True)
    held = create_batch(client, good)
    seen["in_progress"] = _get_batch(emu, held.id)
    status, _, seen["cancelling"] = raw_request(emu, "POST", f"/v1/batches/{held.id}/cancel")
    seen["cancelled"] = _get_batch(emu, held.id)
    emu.release_batches()

    with OpenAIEmulator(processing="stepwise") as step_emu, make_client(step_emu) as step:
        batch_id = create_batch(step, good).id
        for _ in range(2):
            body = _get_batch(step_emu, batch_id)
        seen["finalizing"] = body

    expected = {
        "validating",
        "in_progress",
        "finalizing",
        "completed",
        "failed",
        "expired",
        "cancelling",
        "cancelled",
    }
    assert {name for name, body in seen.items() if body["status"] == name} == expected
    for body in [*seen.values(), faulted]:
        assert_conforms("Batch", body)
    assert seen["failed"]["errors"]["data"][0]["line"] == 1
    assert faulted["errors"]["data"][0]["code"] == "token_limit_exceeded"
    assert "output_file_id" in seen["expired"] and "error_file_id" in seen["expired"]


def test_file_objects_lists_and_delete_conform(client: OpenAI, emu: OpenAIEmulator) -> None:
    file = upload(client, jsonl([chat_line("a", "q")]))
    batch = client.batches.retrieve(create_batch(client, [chat_line("b", "q")]).id)
    for file_id in (file.id, batch.output_file_id):
        status, _, body = raw_request(emu, "GET", f"/v1/files/{file_id}")
        assert status == 200
        assert_conforms("OpenAIFile", body)
    status, _, listing = raw_request(emu, "GET", "/v1/files")
    assert status == 200 and len(listing["data"]) == 3
    assert_conforms("ListFilesResponse", listing)

    for _ in range(2):
        create_batch(client, [chat_line("c", "q")])
    status, _, page = raw_request(emu, "GET", "/v1/batches?limit=2")
    assert status == 200 and page["has_more"] is True
    assert_conforms("ListBatchesResponse", page)
    status, _, empty = raw_request(emu, "GET", f"/v1/batches?after={page['last_id']}&limit=100")
    status, _, empty = raw_request(emu, "GET", f"/v1/batches?after={empty['last_id']}")
    assert empty["data"] == [] and empty["has_more"] is False
    assert_conforms("ListBatchesResponse", empty)

    status, _, deleted = raw_request(emu, "DELETE", f"/v1/files/{file.id}")
    assert status == 200
    assert_conforms("DeleteFileResponse", deleted)


def test_error_responses_conform(client: OpenAI, emu: OpenAIEmulator) -> None:
    bodies: dict[int, Any] = {}
    bodies[401] = raw_request(emu, "GET", "/v1/batches", token=None)[2]
    bodies[404] = raw_request(emu, "GET", "/v1/batches/batch_missing")[2]
    bodies[400] = raw_request(emu, "POST", "/v1/batches", body={"endpoint": "x"})[2]
    emu.faults.http_error(method="GET", path="/v1/files", status=429)
    emu.faults.http_error(method="GET", path="/v1/files", status=500)
    emu.faults.http_error(method="GET", path="/v1/files", status=503)
    for expected in (429, 500, 503):
        status, _, bodies[expected] = raw_request(emu, "GET", "/v1/files")
        assert status == expected
    for body in bodies.values():
        assert_conforms("ErrorResponse", body)


def test_output_bodies_conform(client: OpenAI, emu: OpenAIEmulator) -> None:
    kinds = ["refusal", "length", "invalid_json", "schema_mismatch", "error", "server_error"]
    for kind in kinds:
        emu.faults.line_fault(contains=f"<{kind}>", kind=kind)  # type: ignore[arg-type]
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "string"}},
        "required": ["answer"],
        "additionalProperties": False,
    }
    chat_format = {"type": "json_schema", "json_schema": {"name": "A", "schema": schema}}
    text_format = {"type": "json_schema", "name": "A", "schema": schema, "strict": True}
    prompts = ["plain", *[f"<{kind}>" for kind in kinds]]
    chat = [chat_line(f"c-{p}", p, response_format=chat_format) for p in prompts]
    responses = [responses_line(f"r-{p}", p, text_format=text_format) for p in prompts]
    for lines, endpoint, body_schema in (
        (chat, "/v1/chat/completions", "CreateChatCompletionResponse"),
        (responses, RESPONSES, "Response"),
    ):
        batch = client.batches.retrieve(create_batch(client, lines, endpoint=endpoint).id)
        outputs = read_lines(client, batch.output_file_id)
        errors = read_lines(client, batch.error_file_id)
        assert (len(outputs), len(errors)) == (5, 2)
        for line in outputs:
            assert_conforms(body_schema, line["response"]["body"], strict_keys=False)
        for line in errors:
            assert_conforms("ErrorResponse", line["response"]["body"])
