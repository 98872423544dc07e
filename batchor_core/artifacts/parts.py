"""Helpers of :mod:`batchor_core.artifacts.fsspec_store`: part names and chains, masking,
and the translation of errors met while streaming; URL spelling and bounded S3 options.

A part of a file being built is named ``<start>-<generation>-<token>-<end>-<sha256>``
(offsets zero-padded to 15 digits). The file is the chain of parts from offset 0 that
always follows the newest ``(generation, token)`` starting at the current offset.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from batchor_core.errors import ArtifactError

__all__ = [
    "S3FS_TRIES",
    "S3_PROTOCOLS",
    "CallerError",
    "ObjectReader",
    "Part",
    "bounded_options",
    "chain",
    "mask_url",
    "masked",
    "normal_url",
    "parse_part",
    "passing",
]

_PART = re.compile(r"^(\d{15})-(\d{8})-([0-9a-f]{8})-(\d{15})-([0-9a-f]{64})$")
# Option names whose values are shown in repr; every other value is masked.
_SHOWN_OPTIONS = frozenset(
    {"endpoint_url", "region_name", "anon", "use_ssl", "version_aware", "project", "account_name"}
)
_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")
S3_PROTOCOLS = frozenset({"s3", "s3a"})
S3FS_TRIES = 1  # botocore retries transient errors itself (standard mode)


def mask_url(url: str) -> str:
    """``url`` with any ``user:password@`` part replaced by ``***@``."""
    return _USERINFO.sub("***@", url)


def masked(value: Any, name: str = "") -> Any:
    if isinstance(value, Mapping):
        return {k: masked(v, str(k)) for k, v in value.items()}
    if name in _SHOWN_OPTIONS:
        return mask_url(value) if isinstance(value, str) else value
    return "***"


class CallerError(Exception):
    """An exception raised by the caller's chunk iterator: re-raised as it was."""

    def __init__(self, original: BaseException) -> None:
        super().__init__(str(original))
        self.original = original


def passing(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """``chunks``, with what they raise wrapped in :class:`CallerError`."""
    iterator = iter(chunks)
    while True:
        try:
            chunk = next(iterator)
        except StopIteration:
            return
        except Exception as exc:
            raise CallerError(exc) from exc
        yield chunk


@dataclass(frozen=True, slots=True)
class Part:
    """One uploaded part of a file being built."""

    start: int
    gen: int
    token: str
    end: int
    sha256: str
    path: str

    @property
    def rank(self) -> tuple[int, str]:
        """What decides between two parts starting at one offset: the newer wins."""
        return self.gen, self.token


def part_name(start: int, gen: int, token: str, end: int, sha256: str) -> str:
    """The object name of a part."""
    return f"{start:015d}-{gen:08d}-{token}-{end:015d}-{sha256}"


def parse_part(directory: str, name: str) -> Part | None:
    """The part an object name in ``directory`` denotes, or None for anything else."""
    match = _PART.match(name.rstrip("/").rsplit("/", 1)[-1])
    if match is None:
        return None
    start, gen, token, end, sha = match.groups()
    return Part(int(start), int(gen), token, int(end), sha, f"{directory}/{match.group(0)}")


def chain(parts: list[Part]) -> list[Part]:
    """The file's parts in order: from offset 0, always the newest generation."""
    best: dict[int, Part] = {}
    for part in parts:
        if part.end > part.start and (part.start not in best or part.rank > best[part.start].rank):
            best[part.start] = part
    found: list[Part] = []
    position = 0
    while position in best:
        found.append(best[position])
        position = best[position].end
    return found


class ObjectReader(io.RawIOBase):
    """An fsspec file read through ``readinto``, its failures as :class:`ArtifactError`."""

    def __init__(self, raw: Any, what: str) -> None:
        self._raw = raw
        self._what = what

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        try:
            return int(self._raw.readinto(buffer))
        except Exception as exc:  # a dropped connection or an expired credential mid-read
            detail = mask_url(f"{type(exc).__name__}: {exc}")
            raise ArtifactError(f"cannot read {self._what}: {detail}") from exc

    def close(self) -> None:
        if not self.closed:
            with contextlib.suppress(Exception):
                self._raw.close()
        super().close()


def bounded_options(scheme: str, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with bounded S3 timeouts and retries, unless the user set their own.

    A request to an endpoint that hangs then fails after ``max_attempts * read_timeout``
    = 30 s (an operation makes one to three requests), and the step that needed it
    raises :class:`ArtifactError`. ``AWS_MAX_ATTEMPTS`` in the environment still applies.
    """
    if scheme not in S3_PROTOCOLS:
        return options
    config = dict(options.get("config_kwargs") or {})
    config.setdefault("connect_timeout", 10)
    config.setdefault("read_timeout", 10)
    if "retries" not in config and not os.environ.get("AWS_MAX_ATTEMPTS"):
        config["retries"] = {"max_attempts": 3, "mode": "standard"}
    bounded = {**options, "config_kwargs": config}
    if "session" not in options and "profile" not in options:
        bounded["session"] = _session_without_expect()
    return bounded


_SESSIONS: list[Any] = []
_SESSION_LOCK = threading.Lock()


def _session_without_expect() -> Any:
    """The process's aiobotocore session whose uploads do not send ``Expect:
    100-continue``: aiohttp waits for the ``100 Continue`` with no timeout at all, so an
    endpoint that hangs would hold a PUT forever. Without it a rejected upload sends its
    body (one 5 MiB part at most) before the error comes back.

    One session per process: fsspec caches a filesystem per distinct set of options,
    for good, so a new session per store would keep one more client per runner built
    (a Dagster code-location server builds one per sensor tick)."""
    import aiobotocore.session
    import botocore.handlers

    with _SESSION_LOCK:
        if not _SESSIONS:
            session = aiobotocore.session.AioSession()
            session.unregister("before-call.s3", botocore.handlers.add_expect_header)
            _SESSIONS.append(session)
        return _SESSIONS[0]


def normal_url(url: str) -> str:
    """``url`` with its scheme in lower case and runs of ``/`` in its path made one.

    ``S3://`` is what a user means by ``s3://``; and s3fs writes ``bucket//prefix/key``
    but lists it as ``bucket/prefix/key``, so parts uploaded there would never be found.
    """
    scheme, sep, rest = url.strip().partition("://")
    if not sep:
        return url
    lead = "/" if rest.startswith("/") else ""  # file:///abs/path keeps its root
    return f"{scheme.lower()}://{lead}{re.sub('/{2,}', '/', rest).lstrip('/')}"
