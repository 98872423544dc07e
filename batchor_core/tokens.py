"""Estimating the input tokens of a request line, without ever touching the network.

The enqueued-token budget (:class:`~batchor_core.models.EnqueueLimit`) and the cost
estimate both need the input tokens of requests before the provider has seen them. Each
request line is estimated once, at ingest, and the sum is stored with its chunk.

Default: **one token per 4 bytes of the whole JSONL request line**, rounded up per line.
Calibration: OpenAI documents "one token is about 4 characters of English text" for its
tokenizers (cl100k_base, o200k_base); the line also holds the JSON framing (custom_id,
method, url, keys, quotes), which is bytes but few tokens, so for English prompts the
estimate errs high, which is the safe side of a limit. Text that tokenizes denser than 4
bytes per token (for example code or digits) can be under-estimated; the runner then
meets ``token_limit_exceeded`` and shrinks (see ``docs/cost.md``). 4 bytes per token is
also what the bundled emulator charges, so tests see the same numbers as the provider
would. Estimating one line is one ``len()``: about a million lines per second.

With the optional extra ``batchor[tiktoken]`` and the encoding file already in
tiktoken's local cache (``TIKTOKEN_CACHE_DIR``, ``DATA_GYM_CACHE_DIR``, or its default
cache directories), :func:`tiktoken_counter` counts the text of the messages exactly. It
never downloads: the cache file must exist before tiktoken is asked for the encoding,
and a failure to load is remembered for the whole process (tried once, not per item).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "BYTES_PER_TOKEN",
    "estimate_line_tokens",
    "line_estimator",
    "tiktoken_counter",
    "unavailable_reason",
]

log = logging.getLogger("batchor.tokens")

BYTES_PER_TOKEN = 4
"""Bytes of a request line per estimated token (see the module docstring)."""

_ENCODING_URLS = {
    name: (
        f"https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken",
        f"az://openaipublic/encodings/{name}.tiktoken",
    )
    for name in ("o200k_base", "cl100k_base")
}
_failed: dict[str, str] = {}
_loaded: dict[str, Callable[[str], int]] = {}
_lock = threading.Lock()


def estimate_line_tokens(line: bytes) -> int:
    """Estimated input tokens of one request line: its bytes over 4, rounded up."""
    return (len(line) + BYTES_PER_TOKEN - 1) // BYTES_PER_TOKEN


def _cache_dirs() -> list[Path]:
    for name in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        if name in os.environ:
            return [Path(os.environ[name])] if os.environ[name] else []
    home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return [Path(home) / "tiktoken", Path(tempfile.gettempdir()) / "data-gym-cache"]


def _cached_encoding_file(name: str) -> Path | None:
    """tiktoken's cache file for encoding ``name`` (named by the sha1 of its URL), if
    present in any of the directories tiktoken reads."""
    for directory in _cache_dirs():
        for url in _ENCODING_URLS.get(name, ()):
            path = directory / hashlib.sha1(url.encode()).hexdigest()
            if path.is_file():
                return path
    return None


def tiktoken_counter(encoding: str = "o200k_base") -> Callable[[str], int] | None:
    """A function counting the tokens of a text with tiktoken, or None when unavailable.

    Unavailable means: tiktoken is not installed, or the encoding's file is not in its
    local cache (nothing is downloaded), or loading it failed. The answer is remembered
    for the process, so a missing encoding costs one check, not one per item.
    """
    with _lock:
        if encoding in _loaded:
            return _loaded[encoding]
        if encoding in _failed:
            return None
        try:
            counter = _load(encoding)
        except Exception as exc:  # any failure means "use the default estimate"
            _failed[encoding] = str(exc)
            log.info("tiktoken %s unavailable, estimating 4 bytes per token: %s", encoding, exc)
            return None
        _loaded[encoding] = counter
        return counter


def _load(encoding: str) -> Callable[[str], int]:
    if encoding not in _ENCODING_URLS:
        raise ValueError(f"unknown encoding {encoding!r}; use one of {sorted(_ENCODING_URLS)}")
    if _cached_encoding_file(encoding) is None:
        raise FileNotFoundError(
            f"the {encoding} encoding file is not in tiktoken's local cache (set "
            "TIKTOKEN_CACHE_DIR to a directory holding it); batchor never downloads it"
        )
    import tiktoken  # optional extra: batchor[tiktoken]

    enc = tiktoken.get_encoding(encoding)

    def count(text: str) -> int:
        return len(enc.encode_ordinary(text))

    return count


def unavailable_reason(encoding: str = "o200k_base") -> str | None:
    """Why :func:`tiktoken_counter` returned None for ``encoding`` (None: not tried, or
    it loaded)."""
    return _failed.get(encoding)


def line_estimator() -> Callable[[bytes], int]:
    """How request lines are estimated in this process: tiktoken's ``o200k_base`` over
    the line's text when it is available locally, else :func:`estimate_line_tokens`."""
    counter = tiktoken_counter()
    if counter is None:
        return estimate_line_tokens

    def estimate(line: bytes) -> int:
        return counter(line.decode("utf-8", "replace"))

    return estimate
