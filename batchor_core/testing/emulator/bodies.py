"""Rendering of one output-file or error-file line per request.

:class:`LineRenderer` works in two steps so a pass stays fast and its memory flat:
:meth:`LineRenderer.prepare` reduces a parsed request body to a small tuple right after
parsing (the parsed dicts are freed at once), and :meth:`LineRenderer.render` later turns
that tuple into the JSON line OpenAI writes: a ``/v1/chat/completions`` or ``/v1/responses``
body on success, an error response for scripted line faults, or a ``batch_expired`` error.

Answers are deterministic in the emulator seed and the request content (never the
``custom_id``), so a retried request gets the same answer. Plain requests get
``"Echo: <last user text>"``; structured-output requests get one of a seeded pool of values
conforming to their JSON schema. Success lines are rendered through templates derived from
the same dict builders the fault paths serialize with ``json.dumps``.
"""

from __future__ import annotations

import json
import zlib
from json.encoder import encode_basestring_ascii as _quote
from typing import Final

from .faults import LineFaultRule
from .generation import Variants, generator_for
from .wire import SERVER_ERROR_MESSAGE, JSONObject, JSONValue

CHAT_ENDPOINT: Final = "/v1/chat/completions"
RESPONSES_ENDPOINT: Final = "/v1/responses"
SUPPORTED_ENDPOINTS: Final = (CHAT_ENDPOINT, RESPONSES_ENDPOINT)

REFUSAL_TEXT: Final = "I'm sorry, I can't help with that."
EXPIRED_MESSAGE: Final = "This request could not be executed before the completion window expired."
_ECHO_LIMIT = 200
_PROMPT_OVERHEAD_TOKENS = 7

Prepared = tuple[str, str, int, int, Variants | None, bool, str | None]
"""``(model, last_user_text, prompt_tokens, content_digest, schema_variants, json_mode,
instructions)`` -- everything :meth:`LineRenderer.render` needs from a request body."""

Rendered = tuple[bool, str, int, int]
"""``(is_error_line, json_line, prompt_tokens, completion_tokens)``."""


class LineRenderer:
    """Renders output and error lines for the requests of one batch.

    Args:
        endpoint: The batch endpoint (one of :data:`SUPPORTED_ENDPOINTS`).
        seed: The emulator seed (drives generated answers).
        batch_seed: Seed for this batch's line and response ids.
        created: Unix timestamp to stamp on response bodies.
    """

    def __init__(self, endpoint: str, *, seed: int, batch_seed: int, created: int) -> None:
        self._chat = endpoint == CHAT_ENDPOINT
        self._seed = seed
        self._template = _CHAT_TEMPLATE if self._chat else _RESPONSES_TEMPLATE
        # Ids are a per-batch random prefix plus a counter: unique, deterministic, cheap.
        self._prefix = f"{batch_seed & 0xFFFFFFFFFFFF:012x}"
        self._counter = 0
        self._created = created
        self._last_schema: JSONValue = None
        self._last_variants: Variants | None = None

    def prepare(self, body: JSONObject, model: str) -> Prepared:
        """Extract what rendering needs from a validated request body."""
        if self._chat:
            texts, last_user, schema, json_mode = _chat_request(body)
            instructions = None
        else:
            texts, last_user, schema, json_mode = _responses_request(body)
            raw_instructions = body.get("instructions")
            instructions = raw_instructions if isinstance(raw_instructions, str) else None
        prompt = "\n".join(texts) if len(texts) != 1 else texts[0]
        digest = zlib.crc32(prompt.encode("utf-8", "surrogatepass"), zlib.crc32(model.encode()))
        variants = None
        if schema is not None:
            # Lines of one batch nearly always share a schema: compare before hashing it.
            variants = self._last_variants
            if variants is None or schema != self._last_schema:
                variants = generator_for(schema).variants(self._seed)
                self._last_variants, self._last_schema = variants, schema
        tokens = len(prompt) // 4 + _PROMPT_OVERHEAD_TOKENS
        return model, last_user, tokens, digest, variants, json_mode, instructions

    def render(
        self, custom_id: str, prepared: Prepared, fault: LineFaultRule | None = None
    ) -> Rendered:
        """Render the line of one executed request.

        Args:
            custom_id: The request's ``custom_id``.
            prepared: The output of :meth:`prepare` for the request.
            fault: The line fault that fired for this request, if any.
        """
        self._counter += 1
        ids = f"{self._prefix}{self._counter:010x}"
        model, last_user, prompt_tokens, digest, variants, json_mode, instructions = prepared
        value: JSONValue = None
        if variants is not None:
            value, text = variants.values[digest % len(variants.values)]
        elif json_mode:
            value = {"echo": last_user[:_ECHO_LIMIT]}
            text = json.dumps(value)
        else:
            text = "Echo: " + last_user[:_ECHO_LIMIT]
        if fault is None:
            completion_tokens = len(text) // 4 + 1
            cached, reasoning = _usage_details(digest, prompt_tokens, completion_tokens)
            line = self._template % {
                "ids": ids,
                "custom_id": _quote(custom_id),
                "created": self._created,
                "model": _quote(model),
                "text": _quote(text),
                "instructions": "null" if instructions is None else _quote(instructions),
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
                "cached_tokens": cached,
                "reasoning_tokens": reasoning,
            }
            return False, line, prompt_tokens, completion_tokens
        kind = fault.kind
        if kind in ("error", "server_error"):
            return True, json.dumps(_error_line(ids, custom_id, fault)), 0, 0
        if kind == "invalid_json":
            structured = variants is not None or json_mode
            text = _truncate_json(text if structured else json.dumps({"answer": text}))
        elif kind == "schema_mismatch":
            broken = _violate(value, variants.required) if variants is not None else None
            text = json.dumps(broken if broken is not None else {"unexpected": True})
        elif kind == "length":
            text = text[: max(1, len(text) // 2)]
        completion_tokens = len(text) // 4 + 1
        usage = (
            prompt_tokens,
            completion_tokens,
            *_usage_details(digest, prompt_tokens, completion_tokens),
        )
        if self._chat:
            body = _chat_body(ids, self._created, model, text, kind, usage)
        else:
            body = _responses_body(ids, self._created, model, text, kind, usage, instructions)
        line = json.dumps(_line(ids, custom_id, body))
        return False, line, prompt_tokens, completion_tokens

    def expired(self, custom_id: str) -> str:
        """Render the error-file line of a request left unfinished by an expired batch."""
        self._counter += 1
        line = {
            "id": f"batch_req_{self._prefix}{self._counter:010x}",
            "custom_id": custom_id,
            "response": None,
            "error": {"code": "batch_expired", "message": EXPIRED_MESSAGE},
        }
        return json.dumps(line)


# -- body builders (used directly for fault paths, and to derive the templates) -------------


def _usage_details(digest: int, prompt_tokens: int, completion_tokens: int) -> tuple[int, int]:
    """``(cached input tokens, reasoning tokens)`` of a request, deterministic in its
    content: half the prompt comes from the cache for every other prompt, and a part of
    the output (included in the completion tokens, as OpenAI counts it) is reasoning."""
    cached = prompt_tokens // 2 if digest % 2 == 0 else 0
    reasoning = (digest >> 1) % (completion_tokens + 1)
    return cached, reasoning


def _line(ids: str, custom_id: str, body: JSONObject) -> JSONObject:
    return {
        "id": f"batch_req_{ids}",
        "custom_id": custom_id,
        "response": {"status_code": 200, "request_id": f"req_{ids}", "body": body},
        "error": None,
    }


def _chat_body(
    ids: str,
    created: int,
    model: str,
    text: str,
    kind: str | None,
    usage: tuple[int, int, int, int],
) -> JSONObject:
    refused = kind == "refusal"
    return {
        "id": f"chatcmpl-{ids}",
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": None if refused else text,
                    "refusal": REFUSAL_TEXT if refused else None,
                },
                "logprobs": None,
                "finish_reason": "length" if kind == "length" else "stop",
            }
        ],
        "usage": {
            "prompt_tokens": usage[0],
            "completion_tokens": usage[1],
            "total_tokens": usage[0] + usage[1],
            "prompt_tokens_details": {"cached_tokens": usage[2], "audio_tokens": 0},
            "completion_tokens_details": {
                "reasoning_tokens": usage[3],
                "audio_tokens": 0,
                "accepted_prediction_tokens": 0,
                "rejected_prediction_tokens": 0,
            },
        },
    }


def _responses_body(
    ids: str,
    created: int,
    model: str,
    text: str,
    kind: str | None,
    usage: tuple[int, int, int, int],
    instructions: str | None,
) -> JSONObject:
    incomplete = kind == "length"
    content: JSONObject = (
        {"type": "refusal", "refusal": REFUSAL_TEXT}
        if kind == "refusal"
        else {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    )
    return {
        "id": f"resp_{ids}",
        "object": "response",
        "created_at": created,
        "status": "incomplete" if incomplete else "completed",
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None,
        "instructions": instructions,
        "model": model,
        "output": [
            {
                "type": "message",
                "id": f"msg_{ids}",
                "status": "incomplete" if incomplete else "completed",
                "role": "assistant",
                "content": [content],
            }
        ],
        "parallel_tool_calls": True,
        "tool_choice": "auto",
        "tools": [],
        "metadata": {},
        "temperature": 1.0,
        "top_p": 1.0,
        "usage": {
            "input_tokens": usage[0],
            "input_tokens_details": {"cached_tokens": usage[2], "cache_write_tokens": 0},
            "output_tokens": usage[1],
            "output_tokens_details": {"reasoning_tokens": usage[3]},
            "total_tokens": usage[0] + usage[1],
        },
    }


def _error_line(ids: str, custom_id: str, fault: LineFaultRule) -> JSONObject:
    server = fault.kind == "server_error"
    error = {
        "message": fault.message
        or (SERVER_ERROR_MESSAGE if server else "Invalid request (emulated line fault)."),
        "type": "server_error" if server else "invalid_request_error",
        "param": None,
        "code": None,
    }
    line = _line(ids, custom_id, {"error": error})
    line["response"]["status_code"] = fault.status_code or (500 if server else 400)
    return line


# Sentinels that the builders place where per-line values go; numbers that cannot occur
# anywhere else in a template.
_CREATED, _PROMPT, _COMPLETION = -1_000_000_001, -1_000_000_002, -1_000_000_003
_CACHED, _REASONING = -1_000_000_004, -1_000_000_006
_SENTINEL_USAGE = (_PROMPT, _COMPLETION, _CACHED, _REASONING)


def _template(body: JSONObject) -> str:
    """Turn a body built from sentinels into a ``%``-format template for :meth:`render`."""
    text = json.dumps(_line("@@ids@@", "@@custom_id@@", body)).replace("%", "%%")
    for name in ("custom_id", "model", "text", "instructions"):
        text = text.replace(f'"@@{name}@@"', f"%({name})s")
    for name, number in (
        ("created", _CREATED),
        ("prompt_tokens", _PROMPT),
        ("completion_tokens", _COMPLETION),
        ("total_tokens", _PROMPT + _COMPLETION),
        ("cached_tokens", _CACHED),
        ("reasoning_tokens", _REASONING),
    ):
        text = text.replace(str(number), f"%({name})d")
    return text.replace("@@ids@@", "%(ids)s")


_CHAT_TEMPLATE: Final = _template(
    _chat_body("@@ids@@", _CREATED, "@@model@@", "@@text@@", None, _SENTINEL_USAGE)
)
_RESPONSES_TEMPLATE: Final = _template(
    _responses_body(
        "@@ids@@", _CREATED, "@@model@@", "@@text@@", None, _SENTINEL_USAGE, "@@instructions@@"
    )
)


# -- request analysis ------------------------------------------------------------------------


def _content_text(content: JSONValue) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


RequestView = tuple[list[str], str, JSONValue, bool]
"""``(prompt_texts, last_user_text, json_schema_or_None, json_object_mode)``."""


def _chat_request(body: JSONObject) -> RequestView:
    texts: list[str] = []
    last_user = ""
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in messages:
            if isinstance(message, dict):
                text = _content_text(message.get("content"))
                texts.append(text)
                if message.get("role") == "user":
                    last_user = text
    schema: JSONValue = None
    json_mode = False
    response_format = body.get("response_format")
    if isinstance(response_format, dict):
        kind = response_format.get("type")
        if kind == "json_schema":
            spec = response_format.get("json_schema")
            schema = spec.get("schema", {}) if isinstance(spec, dict) else {}
        json_mode = kind == "json_object"
    return texts, last_user, schema, json_mode


def _responses_request(body: JSONObject) -> RequestView:
    texts: list[str] = []
    last_user = ""
    instructions = body.get("instructions")
    if isinstance(instructions, str):
        texts.append(instructions)
    items = body.get("input")
    if isinstance(items, str):
        texts.append(items)
        last_user = items
    elif isinstance(items, list):
        for item in items:
            if isinstance(item, dict):
                text = _content_text(item.get("content"))
                texts.append(text)
                if item.get("role", "user") == "user":
                    last_user = text
    schema: JSONValue = None
    json_mode = False
    text_config = body.get("text")
    fmt = text_config.get("format") if isinstance(text_config, dict) else None
    if isinstance(fmt, dict):
        kind = fmt.get("type")
        if kind == "json_schema":
            schema = fmt.get("schema", {})
        json_mode = kind == "json_object"
    return texts, last_user, schema, json_mode


def _truncate_json(text: str) -> str:
    # A strict prefix of a JSON object or array is never valid JSON.
    if len(text) >= 2 and text[0] in "{[":
        return text[: max(1, len(text) // 2)]
    return '{"answer": ' + text[: len(text) // 2]


def _violate(value: JSONValue, required: tuple[str, ...]) -> JSONValue:
    """Return a JSON value that breaks the schema ``value`` was generated for."""
    if not isinstance(value, dict):
        return {"unexpected": value}
    broken = dict(value)
    if required and required[0] in broken:
        del broken[required[0]]  # a missing required field
    elif broken:
        first = next(iter(broken))
        broken[first] = 12345 if isinstance(broken[first], str) else "not-the-right-type"
    else:
        broken = {"unexpected": True}
    return broken
