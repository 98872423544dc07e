"""One streaming pass over a batch input file: validate it and, optionally, execute it.

:func:`scan` reads the input line by line and never holds more than one window of
:data:`WINDOW` requests. Executed requests are emitted in a deterministic shuffled order
(each window is permuted, never left in input order) and written straight to the output
and error files.

Which requests are *done* is decided by their position in that processing order: with a
done fraction ``f``, position ``p`` is done when ``floor((p + 1) f) > floor(p f)``, which
spreads exactly ``floor(n f)`` done requests over the file without knowing ``n`` up front.
Requests that are not done become ``batch_expired`` error lines (expired batches) or are
left out (cancelled batches).

Validation error codes (``errors.data[].code`` of a failed batch): ``empty_file``,
``invalid_json_line``, ``invalid_request`` (line is not an object), ``missing_required_parameter``,
``invalid_method``, ``invalid_url``, ``duplicate_custom_id``, ``mismatched_model``,
``too_many_requests`` (more than ``max_requests_per_file`` lines), plus the file-level
``invalid_file_purpose`` and ``file_too_large`` checked by the lifecycle.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from .bodies import LineRenderer, Prepared
from .faults import LineFaultSession
from .wire import JSONObject

WINDOW = 1000
"""Requests shuffled together; bounds the memory of a pass."""

MAX_REPORTED_ERRORS = 100
"""Validation errors reported in ``errors.data`` (the pass stops collecting after that)."""


def batch_error(
    code: str, message: str, *, line: int | None = None, param: str | None = None
) -> JSONObject:
    """Build one ``BatchError`` entry for ``Batch.errors.data``."""
    return {"code": code, "message": message, "param": param, "line": line}


@dataclass
class Execution:
    """How to execute the requests of a pass (omit to only validate).

    Attributes:
        renderer: Renders each done request's line.
        faults: Decides per-line faults.
        output_path: Where output lines go (created only if there is one).
        error_path: Where error lines go (created only if there is one).
        done_fraction: Fraction of requests that are done.
        expire_unfinished: Write ``batch_expired`` lines for the others (else drop them).
        shuffle_seed: Seed of the processing order, or ``None`` to keep input order.
    """

    renderer: LineRenderer
    faults: LineFaultSession
    output_path: Path
    error_path: Path
    done_fraction: float = 1.0
    expire_unfinished: bool = False
    shuffle_seed: int | None = None


@dataclass
class ScanResult:
    """What a pass found and produced."""

    total: int = 0
    model: str | None = None
    errors: list[JSONObject] = field(default_factory=list)
    input_bytes: int = 0
    completed: int = 0
    failed: int = 0
    output_lines: int = 0
    error_lines: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    custom_ids: Counter[str] = field(default_factory=Counter)

    @property
    def enqueued_tokens(self) -> int:
        """Estimated input tokens of the whole file (bytes / 4)."""
        return self.input_bytes // 4


Pending = tuple[str, Prepared, bytes]
"""A validated request waiting in the window: ``(custom_id, prepared, raw_line)``."""


class _Writer:
    """Executes windows of requests and appends their lines to the output files."""

    def __init__(self, execution: Execution, result: ScanResult) -> None:
        self._x = execution
        self._result = result
        self._position = 0
        self._shuffler = (
            random.Random(execution.shuffle_seed) if execution.shuffle_seed is not None else None
        )
        self._out: IO[str] | None = None
        self._err: IO[str] | None = None

    def flush(self, window: list[Pending]) -> None:
        order = list(range(len(window)))
        if self._shuffler is not None and len(order) > 1:
            self._shuffler.shuffle(order)
            if order == sorted(order):
                order.append(order.pop(0))
        x = self._x
        result = self._result
        render = x.renderer.render
        pick = x.faults.pick if x.faults.active else None
        fraction = x.done_fraction
        out_lines: list[str] = []
        err_lines: list[str] = []
        position = self._position
        for index in order:
            custom_id, prepared, raw = window[index]
            done = fraction >= 1.0 or int((position + 1) * fraction) > int(position * fraction)
            position += 1
            if done:
                rule = pick(raw) if pick is not None else None
                is_error, line, prompt_tokens, completion_tokens = render(custom_id, prepared, rule)
                if is_error:
                    err_lines.append(line)
                    result.failed += 1
                else:
                    out_lines.append(line)
                    result.completed += 1
                    result.input_tokens += prompt_tokens
                    result.output_tokens += completion_tokens
            elif x.expire_unfinished:
                err_lines.append(x.renderer.expired(custom_id))
                result.failed += 1
        self._position = position
        if out_lines:
            if self._out is None:
                self._out = open(x.output_path, "w", encoding="utf-8", newline="\n")  # noqa: SIM115
            self._out.write("\n".join(out_lines) + "\n")
            result.output_lines += len(out_lines)
        if err_lines:
            if self._err is None:
                self._err = open(x.error_path, "w", encoding="utf-8", newline="\n")  # noqa: SIM115
            self._err.write("\n".join(err_lines) + "\n")
            result.error_lines += len(err_lines)

    def close(self) -> None:
        for handle in (self._out, self._err):
            if handle is not None:
                handle.close()


def scan(
    input_path: Path,
    *,
    endpoint: str,
    max_requests: int,
    execution: Execution | None = None,
    count_ids: bool = False,
) -> ScanResult:
    """Validate (and optionally execute) a batch input file in one streaming pass.

    If validation fails, execution stops at the first error and ``result.errors`` is
    non-empty; the caller discards whatever was written.

    Args:
        input_path: The JSONL input file.
        endpoint: The batch endpoint every line's ``url`` must equal.
        max_requests: Maximum number of requests (lines) in the file.
        execution: How to execute requests; ``None`` only validates.
        count_ids: Count ``custom_id`` occurrences into ``result.custom_ids``.

    Returns:
        Counts, errors and the batch model.
    """
    result = ScanResult()
    errors = result.errors
    seen: set[str] = set()
    writer = _Writer(execution, result) if execution is not None else None
    flush = writer.flush if writer is not None else None
    prepare = execution.renderer.prepare if execution is not None else None
    # The window keeps small prepared tuples, never parsed bodies: parsed dicts die young,
    # so the cyclic GC has little to traverse however large the batch is.
    window: list[Pending] = []
    decode = json.JSONDecoder().decode  # on str: skips json.loads' encoding sniffing
    ids = result.custom_ids
    model: str | None = None
    total = 0
    size = 0

    def fail(code: str, message: str, line: int, param: str | None = None) -> None:
        nonlocal flush
        flush = None  # a failed batch produces no output: stop executing
        if len(errors) < MAX_REPORTED_ERRORS:
            errors.append(batch_error(code, message, line=line, param=param))

    try:
        with open(input_path, "rb") as handle:
            for lineno, raw in enumerate(handle, 1):
                size += len(raw)
                if len(raw) < 4 and not raw.strip():
                    continue
                total += 1
                try:
                    obj = decode(raw.decode("utf-8"))
                except ValueError:  # includes UnicodeDecodeError
                    fail("invalid_json_line", "This line is not parseable as valid JSON.", lineno)
                    continue
                if type(obj) is not dict:
                    fail("invalid_request", "Each line must be a JSON object.", lineno)
                    continue
                custom_id = obj.get("custom_id")
                if type(custom_id) is not str or not custom_id:
                    fail(
                        "missing_required_parameter",
                        "Missing required parameter: 'custom_id' (a non-empty string).",
                        lineno,
                        "custom_id",
                    )
                    continue
                if count_ids:
                    ids[custom_id] += 1
                if total > max_requests:
                    if total == max_requests + 1:
                        fail(
                            "too_many_requests",
                            "The batch input file has more than the maximum of "
                            f"{max_requests} requests.",
                            lineno,
                        )
                    continue
                if obj.get("method") != "POST":
                    fail("invalid_method", "The only supported method is 'POST'.", lineno, "method")
                    continue
                url = obj.get("url")
                if url != endpoint:
                    message = (
                        f"The URL provided for this request does not match the batch endpoint "
                        f"'{endpoint}'."
                        if url is not None
                        else "Missing required parameter: 'url'."
                    )
                    code = "invalid_url" if url is not None else "missing_required_parameter"
                    fail(code, message, lineno, "url")
                    continue
                body = obj.get("body")
                if type(body) is not dict:
                    fail(
                        "missing_required_parameter",
                        "Missing required parameter: 'body' (a JSON object).",
                        lineno,
                        "body",
                    )
                    continue
                if custom_id in seen:
                    fail(
                        "duplicate_custom_id",
                        "The custom_id for this request is a duplicate of another request. "
                        "The custom_id parameter must be unique for each request in a batch.",
                        lineno,
                        "custom_id",
                    )
                    continue
                seen.add(custom_id)
                line_model = body.get("model")
                if type(line_model) is not str:
                    fail(
                        "missing_required_parameter",
                        "Missing required parameter: 'body.model'.",
                        lineno,
                        "body.model",
                    )
                    continue
                if line_model != model:
                    if model is None:
                        model = line_model
                    else:
                        fail(
                            "mismatched_model",
                            f"The provided model '{line_model}' does not match the model "
                            f"'{model}' of other requests in the batch; use one model per batch.",
                            lineno,
                            "body.model",
                        )
                        continue
                if flush is not None and prepare is not None:
                    window.append((custom_id, prepare(body, line_model), raw))
                    if len(window) >= WINDOW:
                        flush(window)
                        window = []
            if flush is not None and window:
                flush(window)
    finally:
        if writer is not None:
            writer.close()
    if total == 0:
        errors.append(batch_error("empty_file", "The batch input file contains no requests."))
    result.total = total
    result.model = model
    result.input_bytes = size
    return result
