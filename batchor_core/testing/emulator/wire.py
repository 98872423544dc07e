"""Wire-format pieces shared by the emulator modules.

Holds the named JSON aliases (the only place ``Any`` is allowed), the :class:`ApiError`
exception that every route raises to produce an OpenAI-shaped error response, and the
deterministic id factory.
"""

from __future__ import annotations

import random
import string
import threading
from typing import Any

JSONValue = Any
"""Any value that ``json.loads`` can return."""

JSONObject = dict[str, Any]
"""A decoded JSON object."""

SERVER_ERROR_MESSAGE = (
    "The server had an error while processing your request. Sorry about that! "
    "You can retry your request (emulated failure)."
)


class ApiError(Exception):
    """An error response in OpenAI's format: ``{"error": {message, type, param, code}}``.

    Args:
        status: HTTP status code.
        message: Human-readable message.
        error_type: The ``type`` field, e.g. ``invalid_request_error`` or ``server_error``.
        param: The offending request parameter, if any.
        code: A machine-readable code, if any.
        headers: Extra response headers (e.g. ``Retry-After``).
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        error_type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.error_type = error_type
        self.param = param
        self.code = code
        self.headers = dict(headers or {})

    def body(self) -> JSONObject:
        """Return the JSON error body."""
        return error_body(self.message, self.error_type, param=self.param, code=self.code)


def error_body(
    message: str, error_type: str, *, param: str | None = None, code: str | None = None
) -> JSONObject:
    """Build an OpenAI error body (the ``ErrorResponse`` schema)."""
    return {"error": {"message": message, "type": error_type, "param": param, "code": code}}


def status_error(
    status: int,
    *,
    message: str | None = None,
    code: str | None = None,
    retry_after: float | None = None,
) -> ApiError:
    """Build the error OpenAI returns for a rate limit (429) or a server failure (5xx).

    Args:
        status: The HTTP status.
        message: Overrides the default message for ``status``.
        code: Overrides the default code for ``status``.
        retry_after: Seconds to put in ``Retry-After`` (and ``retry-after-ms``).
    """
    headers: dict[str, str] = {}
    if retry_after is not None:
        headers["retry-after"] = f"{retry_after:g}"
        headers["retry-after-ms"] = str(round(retry_after * 1000))
    if status == 429:
        return ApiError(
            status,
            message or "Rate limit reached for requests (emulated). Please try again later.",
            error_type="requests",
            code=code or "rate_limit_exceeded",
            headers=headers,
        )
    if status >= 500:
        error_type = "service_unavailable" if status == 503 else "server_error"
        return ApiError(
            status,
            message or SERVER_ERROR_MESSAGE,
            error_type=error_type,
            code=code,
            headers=headers,
        )
    return ApiError(status, message or "Emulated request failure.", code=code, headers=headers)


def not_found(message: str, *, param: str | None = None) -> ApiError:
    """Build the 404 error OpenAI returns for unknown objects and paths."""
    return ApiError(404, message, param=param)


def bad_request(message: str, *, param: str | None = None, code: str | None = None) -> ApiError:
    """Build a 400 ``invalid_request_error``."""
    return ApiError(400, message, param=param, code=code)


_ALPHANUMERIC = string.ascii_letters + string.digits


class IdFactory:
    """Thread-safe, seeded generator of OpenAI-looking object ids.

    Args:
        seed: Seed; the same seed and the same call order give the same ids.
    """

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)
        self._lock = threading.Lock()

    def file_id(self) -> str:
        """Return a new ``file-...`` id."""
        with self._lock:
            return "file-" + "".join(self._rng.choices(_ALPHANUMERIC, k=22))

    def batch_id(self) -> str:
        """Return a new ``batch_...`` id."""
        with self._lock:
            return f"batch_{self._rng.getrandbits(96):024x}"

    def derive_seed(self) -> int:
        """Return a fresh 64-bit seed for a per-batch generator."""
        with self._lock:
            return self._rng.getrandbits(64)
