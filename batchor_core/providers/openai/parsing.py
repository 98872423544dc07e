"""Parsing one line of a batch output or error file.

Runs once per line of files with up to 50,000 lines, so it decodes JSON once, walks
plain dicts and builds no pydantic or SDK objects. Whether the text is valid against the
output model is the runner's business; this only extracts it.

Error codes of :class:`~batchor_core.models.ItemError` produced here:

- the line's ``error`` object's own code (``batch_expired``, ``batch_cancelled``, ...),
  or ``provider_error`` when it has none;
- ``http_<status>`` when the request got a non-200 answer. The status, not the body's
  error code, is the machine-readable part because it is always present and tells
  transient (429, 5xx) from permanent (4xx) failures; the body's code and message
  and the request id go into the message;
- ``refusal``, ``length`` (output truncated at the token limit), ``content_filter``,
  ``incomplete`` (a responses call stopped for another reason), ``response_failed``
  (a responses call with status ``failed``), ``empty_output`` (no text at all);
- ``provider_error`` for a line that has a ``custom_id`` but no ``response``.

A line that is not a JSON object or has no ``custom_id`` cannot be attributed to an item
and raises :class:`~batchor_core.errors.ProviderError`: the file is corrupt.
"""

from __future__ import annotations

import orjson

from batchor_core.errors import ConfigurationError, ProviderError
from batchor_core.models import Endpoint, ItemError, JSONObject, Usage
from batchor_core.ports import ParsedLine

__all__ = ["parse_line"]

# jsoncodec.loads without its Python frame (one call per line).
_loads = orjson.loads
# ParsedLine(...) without the named tuple's Python-level __new__ (one per line).
_new_tuple = tuple.__new__
_CHAT = Endpoint.CHAT_COMPLETIONS.value
_RESPONSES = Endpoint.RESPONSES.value
_SNIPPET = 200


def parse_line(endpoint: str, line: bytes) -> ParsedLine:
    """Parse one line of an output or error file of a batch on ``endpoint``.

    Args:
        endpoint: The batch's endpoint (``/v1/chat/completions`` or ``/v1/responses``).
        line: One JSONL line, with or without its trailing newline.

    Returns:
        The custom id with either the output text or an error, and usage when reported.

    Raises:
        ProviderError: The line is not a JSON object or has no ``custom_id``.
        ConfigurationError: ``endpoint`` is not one this provider parses.
    """
    if endpoint != _CHAT and endpoint != _RESPONSES:
        raise ConfigurationError(f"Cannot parse results of unsupported endpoint {endpoint!r}")
    try:
        obj = _loads(line)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ProviderError(
            f"Batch result line is not valid JSON ({exc}): {_snippet(line)}", retryable=False
        ) from exc
    if type(obj) is not dict:
        raise ProviderError(
            f"Batch result line is not a JSON object: {_snippet(line)}", retryable=False
        )
    custom_id = obj.get("custom_id")
    if type(custom_id) is not str or not custom_id:
        raise ProviderError(
            f"Batch result line has no custom_id: {_snippet(line)}", retryable=False
        )

    error = obj.get("error")
    if error:
        return ParsedLine(custom_id, None, _line_error(error), None)

    response = obj.get("response")
    if type(response) is not dict:
        return ParsedLine(
            custom_id,
            None,
            ItemError("provider_error", "result line has neither a response nor an error"),
            None,
        )
    body = response.get("body")
    if type(body) is not dict:
        body = {}
    status = response.get("status_code")
    if status != 200:
        return ParsedLine(custom_id, None, _http_error(status, body, response), None)
    if endpoint == _CHAT:
        return _chat(custom_id, body)
    return _responses(custom_id, body)


def _chat(custom_id: str, body: JSONObject) -> ParsedLine:
    usage = _usage(body.get("usage"), _CHAT_USAGE)
    choices = body.get("choices")
    if not choices or type(choices) is not list or type(choices[0]) is not dict:
        return ParsedLine(
            custom_id, None, ItemError("empty_output", "response has no choices"), usage
        )
    choice: JSONObject = choices[0]
    message = choice.get("message")
    if type(message) is not dict:
        message = {}
    refusal = message.get("refusal")
    if refusal:
        return ParsedLine(custom_id, None, ItemError("refusal", str(refusal)), usage)
    finish = choice.get("finish_reason")
    if finish == "length":
        return ParsedLine(
            custom_id, None, ItemError("length", "output truncated at max tokens"), usage
        )
    if finish == "content_filter":
        return ParsedLine(
            custom_id,
            None,
            ItemError("content_filter", "output stopped by the provider's content filter"),
            usage,
        )
    content = message.get("content")
    if type(content) is not str:
        return ParsedLine(
            custom_id,
            None,
            ItemError("empty_output", f"response has no message content (finish_reason={finish})"),
            usage,
        )
    return _new_tuple(ParsedLine, (custom_id, content, None, usage))


def _responses(custom_id: str, body: JSONObject) -> ParsedLine:
    usage = _usage(body.get("usage"), _RESPONSES_USAGE)
    status = body.get("status")
    error = body.get("error")
    if status == "failed" or error:
        detail = _code_and_message(error) if type(error) is dict else "no error details"
        return ParsedLine(
            custom_id, None, ItemError("response_failed", f"response failed: {detail}"), usage
        )

    parts: list[str] = []
    output = body.get("output")
    for entry in output if type(output) is list else ():
        if type(entry) is not dict or entry.get("type") != "message":
            continue  # reasoning items, tool calls: not part of the text
        content = entry.get("content")
        for part in content if type(content) is list else ():
            if type(part) is not dict:
                continue
            kind = part.get("type")
            if kind == "output_text":
                text = part.get("text")
                if type(text) is str:
                    parts.append(text)
            elif kind == "refusal":
                return ParsedLine(
                    custom_id, None, ItemError("refusal", str(part.get("refusal") or "")), usage
                )

    if status == "incomplete":
        details = body.get("incomplete_details")
        reason = details.get("reason") if type(details) is dict else None
        if reason == "max_output_tokens":
            err = ItemError("length", "output truncated at max_output_tokens")
        elif reason == "content_filter":
            err = ItemError("content_filter", "output stopped by the provider's content filter")
        else:
            err = ItemError("incomplete", f"response incomplete (reason: {reason})")
        return ParsedLine(custom_id, None, err, usage)
    if status is not None and status != "completed":
        return ParsedLine(
            custom_id, None, ItemError("incomplete", f"response status is {status!r}"), usage
        )
    if not parts:
        return ParsedLine(
            custom_id, None, ItemError("empty_output", "response has no output_text"), usage
        )
    return ParsedLine(custom_id, "".join(parts), None, usage)


def _line_error(error: object) -> ItemError:
    if type(error) is dict:
        code = error.get("code")
        message = error.get("message")
        return ItemError(
            str(code) if code else "provider_error", str(message) if message else str(error)
        )
    return ItemError("provider_error", str(error))


def _http_error(status: object, body: JSONObject, response: JSONObject) -> ItemError:
    error = body.get("error")
    detail = _code_and_message(error) if type(error) is dict else "no error details"
    request_id = response.get("request_id")
    suffix = f" [request {request_id}]" if request_id else ""
    return ItemError(f"http_{status}", f"HTTP {status}: {detail}{suffix}")


def _code_and_message(error: JSONObject) -> str:
    code = error.get("code")
    message = error.get("message") or "no message"
    return f"{code}: {message}" if code else str(message)


_MAX_COUNT = 2**31


# The usage keys of each endpoint: input, output, input details, output details.
_CHAT_USAGE = (
    "prompt_tokens",
    "completion_tokens",
    "prompt_tokens_details",
    "completion_tokens_details",
)
_RESPONSES_USAGE = (
    "input_tokens",
    "output_tokens",
    "input_tokens_details",
    "output_tokens_details",
)


def _usage(raw: object, keys: tuple[str, str, str, str]) -> Usage | None:
    """Usage from a chat (``prompt_tokens``, ``*_tokens_details``) or responses body.

    A count reads as 0 unless it is a plausible one (an int, not a bool, in
    ``[0, 2**31)``): negative counts would lower a run's totals and cost; counts past
    2**31 (no request comes near that) would not fit the per-item columns, and recording
    the batch would then fail on every step, so the run could never go on. The rule is
    written out for each count rather than called: this runs for every line.
    """
    if type(raw) is not dict:
        return None
    inp = raw.get(keys[0])
    out = raw.get(keys[1])
    cached = raw.get(keys[2])
    cached = cached.get("cached_tokens") if type(cached) is dict else None
    reasoning = raw.get(keys[3])
    reasoning = reasoning.get("reasoning_tokens") if type(reasoning) is dict else None
    counts = (
        inp if type(inp) is int and 0 <= inp < _MAX_COUNT else 0,
        out if type(out) is int and 0 <= out < _MAX_COUNT else 0,
        cached if type(cached) is int and 0 <= cached < _MAX_COUNT else 0,
        reasoning if type(reasoning) is int and 0 <= reasoning < _MAX_COUNT else 0,
    )
    usage = _USAGES.get(counts)
    if usage is None:
        if len(_USAGES) >= _USAGES_KEPT:
            _USAGES.clear()
        usage = _USAGES[counts] = Usage(*counts)
    return usage


# Usage is frozen, so lines with the same counts can share one: building a frozen
# dataclass costs about five times a dict lookup, and the lines of one run repeat their
# counts (similar prompts, short structured outputs). Bounded: cleared when full.
_USAGES: dict[tuple[int, int, int, int], Usage] = {}
_USAGES_KEPT = 4096


def _snippet(line: bytes) -> str:
    text = line[:_SNIPPET].decode("utf-8", errors="replace").rstrip()
    return repr(text + ("..." if len(line) > _SNIPPET else ""))
