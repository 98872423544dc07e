"""Helpers for the emulator tests: request lines, uploads, raw HTTP, output reading."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterable
from typing import Any

from openai import OpenAI
from openai.types import Batch, FileObject

from batchor_core.testing import OpenAIEmulator

CHAT = "/v1/chat/completions"
RESPONSES = "/v1/responses"
MODEL = "gpt-4o-mini"


def chat_line(
    custom_id: str,
    text: str,
    *,
    model: str = MODEL,
    response_format: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One ``/v1/chat/completions`` batch request."""
    body: dict[str, Any] = {
        "model": model,
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": text},
        ],
    }
    if response_format is not None:
        body["response_format"] = response_format
    return {"custom_id": custom_id, "method": "POST", "url": CHAT, "body": body}


def responses_line(
    custom_id: str,
    text: str,
    *,
    model: str = MODEL,
    text_format: dict[str, Any] | None = None,
    as_messages: bool = False,
) -> dict[str, Any]:
    """One ``/v1/responses`` batch request (``input`` as a string or as messages)."""
    body: dict[str, Any] = {"model": model}
    if as_messages:
        body["input"] = [{"role": "user", "content": [{"type": "input_text", "text": text}]}]
    else:
        body["input"] = text
    if text_format is not None:
        body["text"] = {"format": text_format}
    return {"custom_id": custom_id, "method": "POST", "url": RESPONSES, "body": body}


def jsonl(lines: Iterable[dict[str, Any] | str]) -> bytes:
    """Encode lines (dicts are JSON-encoded, strings are used verbatim) as JSONL bytes."""
    return "".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines).encode()


def upload(client: OpenAI, data: bytes, *, purpose: str = "batch") -> FileObject:
    """Upload JSONL bytes as a file."""
    return client.files.create(file=("input.jsonl", data), purpose=purpose)  # type: ignore[arg-type]


def create_batch(
    client: OpenAI, lines: Iterable[dict[str, Any] | str], *, endpoint: str = CHAT
) -> Batch:
    """Upload ``lines`` and create a batch over them (returns the create response)."""
    file = upload(client, jsonl(lines))
    return client.batches.create(
        input_file_id=file.id,
        endpoint=endpoint,  # type: ignore[arg-type]
        completion_window="24h",
    )


def run_batch(
    client: OpenAI, lines: Iterable[dict[str, Any] | str], *, endpoint: str = CHAT
) -> Batch:
    """Create a batch and retrieve it once (terminal in instant mode)."""
    created = create_batch(client, lines, endpoint=endpoint)
    return client.batches.retrieve(created.id)


def read_lines(client: OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    """Download a JSONL file through the SDK and decode its lines."""
    if file_id is None:
        return []
    text = client.files.content(file_id).text
    return [json.loads(line) for line in text.splitlines() if line]


def by_custom_id(lines: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Index output/error lines by ``custom_id``."""
    return {line["custom_id"]: line for line in lines}


def message_text(line: dict[str, Any]) -> str | None:
    """The assistant text of a chat or responses output line."""
    body = line["response"]["body"]
    if body.get("object") == "chat.completion":
        content: str | None = body["choices"][0]["message"]["content"]
        return content
    item: dict[str, str] = body["output"][0]["content"][0]
    return item.get("text")


def raw_request(
    emu: OpenAIEmulator,
    method: str,
    path: str,
    *,
    body: dict[str, Any] | None = None,
    token: str | None = "sk-test",
) -> tuple[int, dict[str, str], Any]:
    """Make one HTTP request with the stdlib; return ``(status, headers, decoded JSON)``."""
    url = emu.base_url.removesuffix("/v1") + path
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, dict(exc.headers), json.loads(exc.read())
