"""Scripted, deterministic fault injection for the emulator.

Tests script faults on ``emulator.faults`` (a :class:`FaultPlan`) before making requests:

- transport level: :meth:`FaultPlan.http_error`, :meth:`FaultPlan.drop_connection`;
- batch creation: :meth:`FaultPlan.commit_then_fail`;
- whole batches: :meth:`FaultPlan.fail_batch`, :meth:`FaultPlan.expire_batch`,
  :meth:`FaultPlan.hold_batches`;
- single request lines: :meth:`FaultPlan.line_fault`.

Every fault fires on the *next* matching requests or batches, in the order scripted. The
``take_*``/``consume_*`` methods are the emulator's side of the plan; tests do not call them.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from typing import Literal, get_args

from .wire import JSONValue

LineFaultKind = Literal[
    "error", "server_error", "invalid_json", "schema_mismatch", "refusal", "length"
]
"""What happens to a request line hit by :meth:`FaultPlan.line_fault`.

- ``error``: the line goes to the error file with a 400 (or ``status_code``) response.
- ``server_error``: like ``error`` with status 500.
- ``invalid_json``: a successful line whose message text is truncated, invalid JSON.
- ``schema_mismatch``: a successful line whose JSON violates the requested schema.
- ``refusal``: the model refuses (chat ``message.refusal``; responses ``refusal`` content).
- ``length``: the output is cut off (chat ``finish_reason="length"``; responses
  ``status="incomplete"`` with ``incomplete_details.reason="max_output_tokens"``).
"""

LINE_FAULT_KINDS: frozenset[str] = frozenset(get_args(LineFaultKind))


def compile_path(pattern: str) -> re.Pattern[str]:
    """Compile a request-path pattern.

    ``*`` matches any characters (also ``/``), ``{name}`` matches one path segment, and
    everything else matches literally. Patterns without the ``/v1`` prefix get it added, so
    ``"/batches/{id}"`` and ``"/v1/batches/{id}"`` are the same pattern.

    Args:
        pattern: For example ``"/v1/files"``, ``"/v1/batches/{id}"`` or ``"/v1/batches*"``.

    Returns:
        A regex to use with ``fullmatch`` against a path without query string.
    """
    if pattern != "*" and pattern.startswith("/") and not pattern.startswith("/v1"):
        pattern = "/v1" + pattern
    parts = re.split(r"(\{[^/}]*\}|\*)", pattern)
    regex = "".join(
        "[^/]+" if part.startswith("{") else ".*" if part == "*" else re.escape(part)
        for part in parts
        if part
    )
    return re.compile(regex + "/?")


@dataclass
class HttpFault:
    """One scripted HTTP-level fault (an error response or a dropped connection)."""

    method: str
    path: re.Pattern[str]
    remaining: int
    status: int = 500
    retry_after: float | None = None
    message: str | None = None
    code: str | None = None
    drop: bool = False

    def matches(self, method: str, path: str) -> bool:
        """Whether this fault applies to the request ``method path``."""
        return (self.method in ("*", method)) and self.path.fullmatch(path) is not None


@dataclass(frozen=True)
class CommitFailure:
    """How a batch create that *did* commit reports failure to the client."""

    status: int
    drop: bool


@dataclass(frozen=True)
class BatchFault:
    """A scripted outcome for one created batch."""

    kind: Literal["fail", "expire"]
    code: str = "invalid_request"
    message: str | None = None
    completed_fraction: float = 0.0


@dataclass(eq=False)
class LineFaultRule:
    """A per-line fault rule, returned by :meth:`FaultPlan.line_fault`.

    Attributes:
        contains: Substring of the raw input line that selects the line.
        kind: What happens to a selected line.
        times: How often the rule fires per distinct request body, or ``None`` for always.
        status_code: HTTP status recorded in the error file (``error``/``server_error``).
        message: Error message recorded in the error file.
        fired: How many lines this rule has changed so far (in batches that were kept).
    """

    contains: str
    kind: LineFaultKind
    times: int | None = None
    status_code: int | None = None
    message: str | None = None
    fired: int = 0
    _needles: tuple[bytes, ...] = field(default=(), repr=False)
    _per_item: dict[bytes, int] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        plain = self.contains.encode("utf-8")
        escaped = json.dumps(self.contains)[1:-1].encode("ascii")
        self._needles = (plain,) if plain == escaped else (plain, escaped)

    def selects(self, raw: bytes) -> bool:
        """Whether the raw input line contains the marker (plain or JSON-escaped)."""
        return any(needle in raw for needle in self._needles)


def item_key(body: JSONValue) -> bytes:
    """Identify a request by its body, ignoring ``custom_id`` (so retries match)."""
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


class LineFaultSession:
    """Decides per-line faults for one pass over a batch; counts are committed at the end.

    Counts only become visible to later batches through :meth:`commit`, so a batch that is
    thrown away (e.g. it failed validation) does not use up ``times`` budgets.
    """

    def __init__(self, plan: FaultPlan, rules: list[LineFaultRule]) -> None:
        self._plan = plan
        self._rules = rules
        self._local: dict[tuple[int, bytes], int] = {}
        self._fired: dict[int, int] = {}

    @property
    def active(self) -> bool:
        """Whether any rule exists (so callers can skip the per-line check)."""
        return bool(self._rules)

    def pick(self, raw: bytes) -> LineFaultRule | None:
        """Return the first rule that fires for this raw input line, recording the firing."""
        for index, rule in enumerate(self._rules):
            if not rule.selects(raw):
                continue
            key = b""
            if rule.times is not None:
                key = item_key(json.loads(raw).get("body"))
                used = rule._per_item.get(key, 0) + self._local.get((index, key), 0)
                if used >= rule.times:
                    continue
            self._local[(index, key)] = self._local.get((index, key), 0) + 1
            self._fired[index] = self._fired.get(index, 0) + 1
            return rule
        return None

    def commit(self) -> None:
        """Make this pass's firings count against the rules' budgets."""
        with self._plan._lock:
            for (index, key), count in self._local.items():
                rule = self._rules[index]
                if rule.times is not None:
                    rule._per_item[key] = rule._per_item.get(key, 0) + count
            for index, count in self._fired.items():
                self._rules[index].fired += count
        self._local.clear()
        self._fired.clear()


class FaultPlan:
    """The scripted faults of one emulator. All methods are thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._http: list[HttpFault] = []
        self._commit_failures: list[CommitFailure] = []
        self._batch_faults: list[BatchFault] = []
        self._line_rules: list[LineFaultRule] = []
        self._hold = False
        self._hold_fraction = 0.5

    # -- scripting ------------------------------------------------------------------

    def http_error(
        self,
        *,
        method: str = "*",
        path: str = "*",
        status: int = 500,
        count: int = 1,
        retry_after: float | None = None,
        message: str | None = None,
        code: str | None = None,
    ) -> None:
        """Answer the next ``count`` matching requests with an error instead of handling them.

        Args:
            method: HTTP method, or ``"*"`` for any.
            path: Path pattern (see :func:`compile_path`), e.g. ``"/v1/batches"``.
            status: 429, 500, 502, 503, ... A 429 always carries ``Retry-After`` (default 1 s).
            count: How many matching requests fail.
            retry_after: Seconds for the ``Retry-After``/``retry-after-ms`` headers.
            message: Error message; a realistic default depends on ``status``.
            code: Error code; defaults to ``rate_limit_exceeded`` for 429.
        """
        if status == 429 and retry_after is None:
            retry_after = 1.0
        self._add_http(
            HttpFault(
                method=method.upper(),
                path=compile_path(path),
                remaining=count,
                status=status,
                retry_after=retry_after,
                message=message,
                code=code,
            )
        )

    def drop_connection(self, *, method: str = "*", path: str = "*", count: int = 1) -> None:
        """Close the connection without any response for the next ``count`` matching requests.

        The request body is read first; nothing is created or changed.

        Args:
            method: HTTP method, or ``"*"`` for any.
            path: Path pattern (see :func:`compile_path`).
            count: How many matching requests are dropped.
        """
        fault = HttpFault(method=method.upper(), path=compile_path(path), remaining=count)
        fault.drop = True
        self._add_http(fault)

    def commit_then_fail(
        self, *, count: int = 1, status: int = 500, drop_connection: bool = False
    ) -> None:
        """Create the next ``count`` batches but report failure to the client.

        The batch exists (it is listed, retrievable and processed); the client sees a
        ``status`` error response, or a dropped connection if ``drop_connection``.

        Args:
            count: How many batch creations commit and then fail.
            status: HTTP status of the error response (e.g. 500, 502, 503).
            drop_connection: Close the connection instead of answering.
        """
        with self._lock:
            self._commit_failures.extend([CommitFailure(status, drop_connection)] * count)

    def line_fault(
        self,
        *,
        contains: str,
        kind: LineFaultKind,
        times: int | None = None,
        status_code: int | None = None,
        message: str | None = None,
    ) -> LineFaultRule:
        """Change the outcome of every input line whose raw JSON text contains ``contains``.

        Args:
            contains: Marker to look for in the raw line (e.g. a word in the prompt).
            kind: What happens to the line (see :data:`LineFaultKind`).
            times: Fire at most this many times per distinct request body (a retry with a
                new ``custom_id`` but the same body counts as the same request); ``None``
                fires every time.
            status_code: HTTP status for ``error`` (default 400) and ``server_error`` (500).
            message: Error message for ``error``/``server_error``.

        Returns:
            The rule; its ``fired`` attribute counts the lines it changed.
        """
        if kind not in LINE_FAULT_KINDS:
            raise ValueError(
                f"unknown line fault kind {kind!r}; use one of {sorted(LINE_FAULT_KINDS)}"
            )
        rule = LineFaultRule(
            contains=contains, kind=kind, times=times, status_code=status_code, message=message
        )
        with self._lock:
            self._line_rules.append(rule)
        return rule

    def fail_batch(
        self, *, code: str = "invalid_request", message: str | None = None, count: int = 1
    ) -> None:
        """Make the next ``count`` created batches end ``failed`` with one error.

        Args:
            code: ``errors.data[0].code``, e.g. ``token_limit_exceeded``.
            message: ``errors.data[0].message``; a default is derived from ``code``.
            count: How many batches fail.
        """
        with self._lock:
            self._batch_faults.extend([BatchFault("fail", code=code, message=message)] * count)

    def expire_batch(self, *, completed_fraction: float = 0.5, count: int = 1) -> None:
        """Make the next ``count`` created batches end ``expired``.

        Args:
            completed_fraction: Fraction of requests that are done (in the output file, or
                the error file if a line fault hit them); the others are in the error file
                with ``response: null`` and ``error.code == "batch_expired"``.
            count: How many batches expire.
        """
        if not 0.0 <= completed_fraction <= 1.0:
            raise ValueError("completed_fraction must be within [0, 1]")
        with self._lock:
            self._batch_faults.extend(
                [BatchFault("expire", completed_fraction=completed_fraction)] * count
            )

    def hold_batches(self, hold: bool = True, *, completed_fraction: float = 0.5) -> None:
        """Keep batches ``in_progress`` until released.

        While held, validated batches stop in ``in_progress``; cancelling one yields a
        ``cancelled`` batch whose output holds ``completed_fraction`` of the requests (the
        unfinished ones appear in no file). ``hold_batches(False)`` (or
        ``OpenAIEmulator.release_batches()``) lets them finish.

        Args:
            hold: Whether to hold batches.
            completed_fraction: Fraction of requests a held batch reports (and keeps, if
                cancelled) as done.
        """
        if not 0.0 <= completed_fraction <= 1.0:
            raise ValueError("completed_fraction must be within [0, 1]")
        with self._lock:
            self._hold = hold
            self._hold_fraction = completed_fraction

    def clear(self) -> None:
        """Forget every scripted fault that has not fired yet and release held batches."""
        with self._lock:
            self._http.clear()
            self._commit_failures.clear()
            self._batch_faults.clear()
            self._line_rules.clear()
            self._hold = False

    # -- consumption (called by the emulator) --------------------------------------------

    def take_http_fault(self, method: str, path: str) -> HttpFault | None:
        """Consume and return the first HTTP fault matching the request, if any."""
        with self._lock:
            for fault in self._http:
                if fault.matches(method, path):
                    fault.remaining -= 1
                    if fault.remaining <= 0:
                        self._http.remove(fault)
                    return fault
        return None

    def take_commit_failure(self) -> CommitFailure | None:
        """Consume the next commit-then-fail entry, if any."""
        with self._lock:
            return self._commit_failures.pop(0) if self._commit_failures else None

    def take_batch_fault(self) -> BatchFault | None:
        """Consume the scripted outcome for a newly created batch, if any."""
        with self._lock:
            return self._batch_faults.pop(0) if self._batch_faults else None

    def holding(self) -> float | None:
        """The held completed fraction, or ``None`` when batches are not held."""
        with self._lock:
            return self._hold_fraction if self._hold else None

    def line_session(self) -> LineFaultSession:
        """Start deciding line faults for one pass over a batch."""
        with self._lock:
            return LineFaultSession(self, list(self._line_rules))

    def _add_http(self, fault: HttpFault) -> None:
        if fault.remaining < 1:
            raise ValueError("count must be at least 1")
        with self._lock:
            self._http.append(fault)
