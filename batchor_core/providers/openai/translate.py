"""Translating SDK objects and exceptions into batchor's records and error tree.

This is the one place SDK exceptions are mapped; every mapping is listed here:

=====================================  ===============================================
SDK exception                          batchor error
=====================================  ===============================================
429 with code ``insufficient_quota``   ``ProviderError(retryable=False)``; the message
                                       starts with ``insufficient_quota`` so the runner
                                       can pause the run with that reason
other 429                              ``RateLimitedError`` with ``retry_after_seconds``
                                       from ``retry-after-ms`` / ``retry-after``
401, 403                               ``ProviderError(retryable=False)``, telling the
                                       user to check the key, organization and project
408, 409, 5xx                          ``ProviderError(retryable=True)``
other 4xx                              ``ProviderError(retryable=False)``
connection error, timeout, dropped     ``ProviderError(retryable=True)``; the message
stream                                 says the outcome is unknown
anything else from the SDK             ``ProviderError(retryable=False)``
an answer of the wrong shape (HTML)    ``ProviderError(retryable=False)``
                                       (:func:`unexpected_answer`)
=====================================  ===============================================

Messages never contain the API key: it is scrubbed from anything the server echoes.
"""

from __future__ import annotations

import email.utils
import math
import time
from collections.abc import Mapping
from datetime import UTC

import httpx2
import openai
from openai.types import Batch

from batchor_core.errors import ProviderError, RateLimitedError
from batchor_core.models import ItemError
from batchor_core.ports import ProviderBatch

__all__ = ["retry_after_seconds", "to_provider_batch", "translate_error", "unexpected_answer"]

_MAX_DETAIL = 500
_RETRYABLE_STATUSES = frozenset({408, 409})
QUOTA_CODE = "insufficient_quota"


def translate_error(
    exc: Exception,
    *,
    action: str,
    secret: str | None,
    batch_id: str | None = None,
    ambiguous: bool = False,
) -> ProviderError:
    """The batchor error for an exception raised by the SDK or its transport.

    Args:
        exc: What the SDK (or ``httpx2`` while streaming) raised.
        action: What we were doing, for the message (``"creating a batch"``).
        secret: The API key, scrubbed from the message if the server echoed it.
        batch_id: The batch concerned, when known.
        ambiguous: The call is not idempotent (batch creation): say in the message that
            a retryable failure may have taken effect and must be reconciled.

    Returns:
        The error to raise, with ``raise translate_error(...) from exc``.
    """
    error = _translate(exc, action=action, batch_id=batch_id, ambiguous=ambiguous)
    if secret and secret in error.message:
        error = _rebuild(error, error.message.replace(secret, "***"))
    return error


def _translate(
    exc: Exception, *, action: str, batch_id: str | None, ambiguous: bool
) -> ProviderError:
    unknown = (
        " The batch may have been created anyway: reconcile with find_batches before retrying."
        if ambiguous
        else ""
    )
    if isinstance(exc, openai.RateLimitError):
        detail = _detail(exc)
        if exc.code == QUOTA_CODE:
            return ProviderError(
                f"{QUOTA_CODE}: OpenAI reports no quota left while {action}; add credit or "
                f"raise the usage limit, then resume the run. ({detail})",
                status_code=429,
                code=QUOTA_CODE,
                batch_id=batch_id,
                retryable=False,
            )
        return RateLimitedError(
            f"OpenAI rate limit (HTTP 429) while {action}: {detail}",
            retry_after_seconds=retry_after_seconds(exc.response.headers),
            batch_id=batch_id,
        )
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        detail = _detail(exc)
        if status in (401, 403):
            return ProviderError(
                f"OpenAI rejected the credentials (HTTP {status}) while {action}: check the "
                "API key (OpenAIProviderConfig(api_key=...) or OPENAI_API_KEY), organization "
                f"and project. ({detail})",
                status_code=status,
                batch_id=batch_id,
                retryable=False,
            )
        retryable = status >= 500 or status in _RETRYABLE_STATUSES
        return ProviderError(
            f"OpenAI answered HTTP {status} while {action}: {detail}"
            + (unknown if retryable else ""),
            status_code=status,
            batch_id=batch_id,
            retryable=retryable,
        )
    if isinstance(exc, openai.APIConnectionError | httpx2.TransportError):
        kind = (
            "timed out"
            if isinstance(exc, openai.APITimeoutError | httpx2.TimeoutException)
            else "failed"
        )
        return ProviderError(
            f"Connection to OpenAI {kind} while {action} ({exc}); the outcome is unknown: "
            f"the request may or may not have taken effect.{unknown}",
            batch_id=batch_id,
            retryable=True,
        )
    return ProviderError(
        f"OpenAI SDK error while {action}: {type(exc).__name__}: {_clip(str(exc))}",
        batch_id=batch_id,
        retryable=False,
    )


def unexpected_answer(action: str, exc: Exception, *, batch_id: str | None = None) -> ProviderError:
    """The error for an answer that is not the shape the API documents.

    A proxy or a wrong ``base_url`` answering HTML, or a body cut short: retrying the
    same call rarely helps, so it is not retryable (the runner still retries it a few
    times before pausing the run).
    """
    return ProviderError(
        f"OpenAI answered something unexpected while {action} "
        f"({type(exc).__name__}: {_clip(str(exc))}); check base_url and any proxy in between",
        batch_id=batch_id,
        retryable=False,
    )


def _rebuild(error: ProviderError, message: str) -> ProviderError:
    if isinstance(error, RateLimitedError):
        return RateLimitedError(
            message, retry_after_seconds=error.retry_after_seconds, batch_id=error.batch_id
        )
    return ProviderError(
        message,
        status_code=error.status_code,
        code=error.code,
        batch_id=error.batch_id,
        retryable=error.retryable,
    )


def _detail(exc: openai.APIStatusError) -> str:
    body = exc.body
    message = body.get("message") if isinstance(body, Mapping) else None
    text = str(message) if message else exc.message
    if exc.code:
        text = f"{exc.code}: {text}"
    if exc.request_id:
        text += f" [request {exc.request_id}]"
    return _clip(text)


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_DETAIL else text[:_MAX_DETAIL] + "..."


def retry_after_seconds(headers: Mapping[str, str]) -> float | None:
    """How long the server asked us to wait, from ``retry-after-ms`` or ``retry-after``.

    ``retry-after`` may be seconds or an HTTP date. Returns None when neither header is
    present or parseable; never negative.
    """
    millis = headers.get("retry-after-ms")
    if millis is not None:
        value = _finite(millis)
        if value is not None:
            return max(value / 1000.0, 0.0)
    raw = headers.get("retry-after")
    if raw is None:
        return None
    value = _finite(raw)
    if value is not None:
        return max(value, 0.0)
    try:
        parsed = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    if parsed.tzinfo is None:  # HTTP dates are GMT
        parsed = parsed.replace(tzinfo=UTC)
    return max(parsed.timestamp() - time.time(), 0.0)


def _finite(raw: str) -> float | None:
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def to_provider_batch(batch: Batch) -> ProviderBatch:
    """Translate the SDK's ``Batch`` into a :class:`~batchor_core.ports.ProviderBatch`."""
    counts = batch.request_counts
    data = batch.errors.data if batch.errors is not None else None
    return ProviderBatch(
        batch_id=batch.id,
        status=batch.status,
        input_file_id=batch.input_file_id,
        output_file_id=batch.output_file_id,
        error_file_id=batch.error_file_id,
        total=counts.total if counts else 0,
        completed=counts.completed if counts else 0,
        failed=counts.failed if counts else 0,
        errors=tuple(
            ItemError(
                e.code or "batch_error",
                (e.message or "no message") + (f" (line {e.line})" if e.line else ""),
            )
            for e in data or ()
        ),
        metadata=dict(batch.metadata or {}),
    )
