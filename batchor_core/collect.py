"""Turning a finished provider batch into item outcomes.

Rules (the same for every batch):
- a line with output that validates becomes ``completed``;
- a failed line or an invalid output (not JSON, schema mismatch, refusal, truncated)
  spends an attempt: retried while attempts remain, else ``failed`` with the last error;
- a request that never ran (``batch_expired`` / ``batch_cancelled`` lines, or no line at
  all from an expired or cancelled batch, or a batch that hit the enqueued token limit)
  is resubmitted without spending an attempt, at most ``max_free_resubmits`` times;
- a batch that failed validation spends an attempt for every item in it.

A chunk's output file (up to 50,000 lines) is read line by line and its outcomes are
recorded in parts of :data:`RECORD_BATCH`, so memory does not grow with the chunk. Each
part is its own transaction and only changes items still queued with the same
submission, so a collection interrupted between parts is simply done again; the last
part marks the chunk collected.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

from pydantic import BaseModel, ValidationError

from batchor_core import jsoncodec
from batchor_core.errors import ProviderError
from batchor_core.models import ItemError, ItemStatus, JSONObject, RetryPolicy, Usage
from batchor_core.packing import parse_custom_id
from batchor_core.ports import ItemOutcome, ParsedLine
from batchor_core.schemacheck import schema_errors

__all__ = ["RECORD_BATCH", "LineSorter", "OutcomeBuilder", "validate_output"]

RECORD_BATCH = 2_000
"""Outcomes recorded per transaction while a chunk is collected (bounds its memory)."""
NEVER_RAN_CODES = frozenset({"batch_expired", "batch_cancelled"})
_NO_OUTPUT = ItemError("empty_output", "no output")
_COMPLETED = ItemStatus.COMPLETED
_new_tuple = tuple.__new__
_CUSTOM_ID = re.compile(rb'"custom_id"\s*:\s*"([^"\\]{1,200})"')
_BASE_VALIDATE_JSON = getattr(BaseModel.model_validate_json, "__func__", None)


def validate_output(
    text: str, output_model: type[BaseModel] | None, output_schema: JSONObject | None = None
) -> tuple[str | None, ItemError | None]:
    """Check a model's text output; return ``(output_json, None)`` or ``(None, error)``.

    With ``output_model`` the text must validate against it. Without it but with the
    run's stored ``output_schema`` (a process that cannot import the model), the text
    must be JSON that satisfies the schema the provider enforced. With neither, the run
    is a text job and the text is stored as a JSON string.
    """
    if output_model is None and output_schema is not None:
        try:
            value = jsoncodec.loads(text)
        except ValueError as exc:
            return None, ItemError("invalid_json", f"output is not valid JSON: {exc}")
        problems = schema_errors(value, output_schema)
        if problems:
            detail = "; ".join(problems)
            return None, ItemError("schema_mismatch", f"output does not match the schema: {detail}")
        return text, None
    if output_model is None:
        return jsoncodec.dumps_text(text), None
    try:
        output_model.model_validate_json(text)
    except ValidationError as exc:
        return None, _invalid_output(exc)
    return text, None


def _invalid_output(exc: ValidationError) -> ItemError:
    errors = exc.errors()
    if errors and errors[0]["type"] == "json_invalid":
        return ItemError("invalid_json", f"output is not valid JSON: {errors[0]['msg']}")
    return ItemError("schema_mismatch", _short_validation(exc))


class LineSorter:
    """Sorts the lines of a batch's output and error files into successes and failures.

    Lines accumulate until :meth:`take` hands them over (the caller records them in
    parts). Successes (the common case) need nothing from the store; the store's
    conditional update ignores lines of stale submissions. Failures need the items'
    attempt counts, which the caller fetches only for them. A corrupt line fails its own
    item when its custom id can still be read, never the whole batch; an unreadable one
    leaves its item without a line (retried as missing). A line repeated within a part
    is skipped here; one repeated in a later part changes nothing in the store, because
    its item is no longer queued.

    Args:
        parse: The provider's line parser for the batch's endpoint.
        output_model: The output model, when this process has it.
        output_schema: The run's stored strict schema, used when the model is missing.
    """

    def __init__(
        self,
        *,
        parse: Callable[[bytes], ParsedLine],
        output_model: type[BaseModel] | None,
        output_schema: JSONObject | None,
    ) -> None:
        self._parse = parse
        self._model = output_model
        self._schema = output_schema
        self.successes: list[ItemOutcome] = []
        self.failures: list[tuple[int, int, ItemError, Usage | None]] = []
        self._seen: set[int] = set()
        self.lines = 0
        self.corrupt_lines = 0
        self.last_corrupt: str | None = None

    @property
    def pending(self) -> int:
        """Lines sorted since the last :meth:`take`."""
        return len(self._seen)

    def pending_seqs(self) -> set[int]:
        """Items with a line sorted since the last :meth:`take`."""
        return set(self._seen)

    def take(self) -> tuple[list[ItemOutcome], list[tuple[int, int, ItemError, Usage | None]]]:
        """Hand over the successes and failures sorted so far, and start a new part."""
        taken = self.successes, self.failures
        self.successes, self.failures = [], []
        self._seen = set()
        return taken

    def parts(
        self, lines: Iterable[bytes], *, size: int
    ) -> Iterator[tuple[list[ItemOutcome], list[tuple[int, int, ItemError, Usage | None]]]]:
        """Sort ``lines``, handing over a part (as :meth:`take`) whenever ``size`` are pending.

        The check comes before a line is added, so the lines after the last full part
        stay pending (the caller records them with whatever else ends the chunk). Lines
        that are valid outputs of the model (the common case) are sorted here, the rest
        by :meth:`add`'s rules; the result is the same as :meth:`add` for each line.
        """
        model = self._model
        if model is None:
            for raw in lines:
                if len(self._seen) >= size:
                    yield self.take()
                self.add(raw)
            return
        # Bound once, not per line: this loop runs for every line of every output file.
        parse = self._parse
        validate: Callable[[str], object] = model.model_validate_json
        if getattr(validate, "__func__", None) is _BASE_VALIDATE_JSON:
            # What model_validate_json calls, without its Python frame (a model that
            # overrides model_validate_json keeps its own).
            validate = model.__pydantic_validator__.validate_json
        seen = self._seen
        successes = self.successes
        for raw in lines:
            if len(seen) >= size:
                yield self.take()
                seen, successes = self._seen, self.successes
            if not raw or raw.isspace():
                continue
            try:
                parsed = parse(raw)
            except ProviderError as exc:
                self._corrupt(raw, exc)
                continue
            custom_id, text, error, usage = parsed
            if error is not None or text is None:
                self._sort(parsed)
                continue
            ids = parse_custom_id(custom_id)
            if ids is None or ids[0] in seen:
                continue  # not ours, or a repeated line
            seq = ids[0]
            seen.add(seq)
            self.lines += 1
            try:
                validate(text)
            except ValidationError as exc:
                self.failures.append((seq, ids[1], _invalid_output(exc), usage))
            else:
                # ItemOutcome(seq, sub, COMPLETED, text, None, usage), built without the
                # named tuple's Python-level __new__ (all eight fields, defaults included).
                successes.append(
                    _new_tuple(
                        ItemOutcome, (seq, ids[1], _COMPLETED, text, None, usage, True, None)
                    )
                )

    def add(self, raw: bytes) -> None:
        """Sort one raw line (blank lines, other runs' and repeated lines are skipped)."""
        if not raw or raw.isspace():
            return
        try:
            parsed = self._parse(raw)
        except ProviderError as exc:
            self._corrupt(raw, exc)
            return
        self._sort(parsed)

    def _corrupt(self, raw: bytes, exc: ProviderError) -> None:
        """A line the parser refused: it fails its item when its custom id can be read."""
        self.corrupt_lines += 1
        self.last_corrupt = exc.message
        found = _CUSTOM_ID.search(raw)
        ids = parse_custom_id(found.group(1).decode("ascii", "replace")) if found else None
        if ids is not None and ids[0] not in self._seen:
            self._seen.add(ids[0])
            self.lines += 1
            self.failures.append((*ids, ItemError("invalid_line", exc.message[:2000]), None))

    def _sort(self, parsed: ParsedLine) -> None:
        """A parsed line, by the rules of the module docstring."""
        ids = parse_custom_id(parsed.custom_id)
        if ids is None or ids[0] in self._seen:
            return  # not ours, or a repeated line
        seq, sub = ids
        self._seen.add(seq)
        self.lines += 1
        text = parsed.text
        if parsed.error is not None:
            self.failures.append((seq, sub, parsed.error, parsed.usage))
        elif text is None:
            self.failures.append((seq, sub, _NO_OUTPUT, None))
        elif self._model is not None:
            try:
                self._model.model_validate_json(text)
            except ValidationError as exc:
                self.failures.append((seq, sub, _invalid_output(exc), parsed.usage))
            else:
                self.successes.append(
                    ItemOutcome(seq, sub, ItemStatus.COMPLETED, text, None, parsed.usage)
                )
        else:
            output_json, error = validate_output(text, None, self._schema)
            if error is None and output_json is not None:
                self.successes.append(
                    ItemOutcome(seq, sub, ItemStatus.COMPLETED, output_json, None, parsed.usage)
                )
            else:
                self.failures.append((seq, sub, error or _NO_OUTPUT, parsed.usage))


def _short_validation(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:3]:
        loc = ".".join(str(p) for p in err.get("loc", ())) or "<root>"
        parts.append(f"{loc}: {err.get('msg')}")
    more = f" (+{exc.error_count() - 3} more)" if exc.error_count() > 3 else ""
    return "output does not match the schema: " + "; ".join(parts) + more


def _storable(error: ItemError) -> ItemError:
    """``error`` with any NUL escaped (as ``\\x00``). Its text comes from the provider (an
    error line's message, a refusal), and Postgres text columns refuse NUL: recording the
    part would fail on every try, and the run could never go on."""
    if "\x00" in error.message or "\x00" in error.code:
        return ItemError(
            error.code.replace("\x00", "\\x00"), error.message.replace("\x00", "\\x00")
        )
    return error


@dataclass
class OutcomeBuilder:
    """Decides each item's next status from what the provider returned.

    Args:
        policy: The run's retry policy.
        attempts: ``seq -> (attempts spent, free resubmits used)`` before this batch.
        now: Current time (for retry backoff).
        cancelling: Whether the run is being cancelled (nothing is resubmitted).
    """

    policy: RetryPolicy
    attempts: dict[int, tuple[int, int]]
    now: datetime
    cancelling: bool = False

    def failure(
        self, seq: int, submission: int, error: ItemError, usage: Usage | None = None
    ) -> ItemOutcome:
        """An attempt that ran and failed."""
        error = _storable(error)
        spent, _free = self.attempts.get(seq, (0, 0))
        if self.cancelling:
            return ItemOutcome(seq, submission, ItemStatus.FAILED, error=error, usage=usage)
        if spent + 1 >= self.policy.max_attempts:
            return ItemOutcome(seq, submission, ItemStatus.FAILED, error=error, usage=usage)
        return ItemOutcome(
            seq,
            submission,
            ItemStatus.PENDING,
            error=error,
            usage=usage,
            retry_not_before=self.now + timedelta(seconds=self.policy.backoff_seconds),
        )

    def never_ran(
        self, seq: int, submission: int, error: ItemError, *, delay_seconds: float = 0.0
    ) -> ItemOutcome:
        """A request the provider never executed; resubmit for free while the bound allows."""
        error = _storable(error)
        _spent, free = self.attempts.get(seq, (0, 0))
        if self.cancelling:
            return ItemOutcome(
                seq, submission, ItemStatus.CANCELLED, error=error, spend_attempt=False
            )
        if free >= self.policy.max_free_resubmits:
            bounded = ItemError(
                error.code, f"{error.message} (resubmitted {free} times without running)"
            )
            return self.failure(seq, submission, bounded)
        return ItemOutcome(
            seq,
            submission,
            ItemStatus.PENDING,
            error=error,
            spend_attempt=False,
            retry_not_before=self.now + timedelta(seconds=delay_seconds),
        )

    def from_error(
        self, seq: int, submission: int, error: ItemError, usage: Usage | None = None
    ) -> ItemOutcome:
        """The outcome of a line that carries an error (or an invalid output)."""
        if error.code in NEVER_RAN_CODES:
            return self.never_ran(seq, submission, error)
        return self.failure(seq, submission, error, usage)

    def for_missing(
        self,
        missing: Iterable[tuple[int, int]],
        batch_status: str,
        batch_errors: tuple[ItemError, ...],
        *,
        token_limit_backoff_seconds: float,
    ) -> list[ItemOutcome]:
        """Outcomes for items of the batch that have no line at all."""
        out: list[ItemOutcome] = []
        codes = {e.code for e in batch_errors}
        detail = "; ".join(f"{e.code}: {e.message}" for e in batch_errors)[:2000]
        for seq, sub in missing:
            if batch_status == "failed" and "token_limit_exceeded" in codes:
                out.append(
                    self.never_ran(
                        seq,
                        sub,
                        ItemError("token_limit_exceeded", detail or "enqueued token limit"),
                        delay_seconds=token_limit_backoff_seconds,
                    )
                )
            elif batch_status == "failed":
                out.append(
                    self.failure(seq, sub, ItemError("batch_failed", detail or "batch failed"))
                )
            elif batch_status in ("expired", "cancelled"):
                code = "batch_expired" if batch_status == "expired" else "batch_cancelled"
                out.append(self.never_ran(seq, sub, ItemError(code, f"batch {batch_status}")))
            else:
                out.append(
                    self.failure(
                        seq, sub, ItemError("missing_result", "the provider returned no line")
                    )
                )
        return out
