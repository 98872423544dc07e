"""The batch state machine: create, advance on reads, cancel.

Statuses follow OpenAI: ``validating -> in_progress -> finalizing -> completed``, or
``failed`` (validation, token limit, scripted), ``expired`` (scripted), and
``cancelling -> cancelled``.

- *instant* processing: a batch is settled whenever it is read (retrieve, list, inspection),
  so the first read already sees it terminal. Validation and execution share one pass.
- *stepwise* processing: each retrieve moves the batch one step; ``in_progress`` is seen for
  ``in_progress_polls`` retrieves. Listing never moves batches.

While :meth:`FaultPlan.hold_batches` is on, batches stop in ``in_progress``.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Literal

from .bodies import LineRenderer
from .faults import FaultPlan
from .params import parse_create_batch
from .processing import Execution, ScanResult, batch_error, scan
from .state import TERMINAL, BatchRecord, Store, now
from .wire import JSONObject, bad_request, not_found

ProcessingMode = Literal["instant", "stepwise"]
"""How batches progress: ``instant`` (terminal when first read) or ``stepwise``."""


@dataclass(frozen=True)
class Settings:
    """Behaviour knobs of one emulator (see ``OpenAIEmulator`` for their meaning)."""

    processing: ProcessingMode = "instant"
    seed: int = 0
    in_progress_polls: int = 1
    enqueued_token_limit: int | None = None
    shuffle_output: bool = True
    max_requests_per_file: int = 50_000
    max_file_bytes: int = 200 * 1024 * 1024


class BatchLifecycle:
    """Creates batches and moves them through their statuses.

    Args:
        store: Where files and batches live.
        faults: The scripted faults.
        settings: Processing behaviour.
    """

    def __init__(self, store: Store, faults: FaultPlan, settings: Settings) -> None:
        self._store = store
        self._faults = faults
        self._settings = settings
        self._instant = settings.processing == "instant"

    # -- requests ------------------------------------------------------------------------

    def create(self, body: JSONObject) -> BatchRecord:
        """Validate a ``POST /v1/batches`` body and register the batch.

        Raises:
            ApiError: 400 for bad parameters, 404 for an unknown input file.
        """
        params = parse_create_batch(body)
        input_file_id = params.input_file_id
        file = self._store.get_file(input_file_id)
        if file is None:
            raise not_found(f"No such File object: {input_file_id}", param="input_file_id")
        batch_id = self._store.ids.batch_id()
        record = BatchRecord(
            id=batch_id,
            seq=self._store.new_batch_seq(),
            input_file_id=input_file_id,
            input_path=self._store.snapshot_input(file, batch_id),
            input_purpose=file.purpose,
            input_bytes=file.bytes,
            endpoint=params.endpoint,
            completion_window=params.completion_window,
            metadata=params.metadata,
            created_at=now(),
            fault=self._faults.take_batch_fault(),
            seed=self._store.ids.derive_seed(),
        )
        self._store.add_batch(record)
        return record

    def process_in_background(self, record: BatchRecord) -> None:
        """In instant mode, start working on a new batch at once, like the real service.

        Whoever reads the batch next waits on its lock until the work is done, so the
        batch still looks finished on first retrieve; meanwhile the client is free to do
        other work (upload the next file, collect another batch).
        """
        if self._instant:
            threading.Thread(
                target=self.settle, args=(record,), name=f"emulator-{record.id}", daemon=True
            ).start()

    def snapshot(self, record: BatchRecord) -> JSONObject:
        """Return the batch object as it is, without moving the batch."""
        with record.lock:
            return record.to_json()

    def view(self, record: BatchRecord, *, step: bool) -> JSONObject:
        """Return the batch object, first settling it (instant) or stepping it (``step``)."""
        with record.lock:
            if self._instant:
                self.settle(record)
            elif step:
                self._step(record)
            return record.to_json()

    def cancel(self, record: BatchRecord) -> JSONObject:
        """Handle ``POST /v1/batches/{id}/cancel``.

        Raises:
            ApiError: 400 if the batch already reached a terminal status.
        """
        with record.lock:
            if self._instant:
                self.settle(record)
            status = record.status
            if status in TERMINAL:
                raise bad_request(f"Cannot cancel a batch with status '{status}'.")
            if status != "cancelling":
                record.cancel_fraction = {"in_progress": record.progress, "finalizing": 1.0}.get(
                    status, 0.0
                )
                record.status = "cancelling"
                record.timestamps["cancelling_at"] = now()
            return record.to_json()

    def settle(self, record: BatchRecord) -> None:
        """Advance the batch as far as it can go right now."""
        with record.lock:
            while self._step(record):
                pass

    def ensure_counted(self, record: BatchRecord) -> None:
        """Make sure the batch's requests are in the inspection counters."""
        with record.lock:
            if record.ids_counted:
                return
            record.ids_counted = True
            result = scan(
                record.input_path,
                endpoint=record.endpoint,
                max_requests=self._settings.max_requests_per_file,
                count_ids=True,
            )
            self._store.record_requests(result.custom_ids, result.total)

    # -- transitions -----------------------------------------------------------------------

    def _step(self, record: BatchRecord) -> bool:
        status = record.status
        if status == "validating":
            self._validate(record)
            return True
        if status == "in_progress":
            held = self._faults.holding()
            if held is not None:
                record.progress = held
                return False
            polls = self._settings.in_progress_polls
            if not self._instant and record.in_progress_polls < polls:
                record.in_progress_polls += 1
                record.progress = record.in_progress_polls / (polls + 1)
                return True
            fault = record.fault
            if fault is not None and fault.kind == "expire":
                self._execute(record, fault.completed_fraction, "expired")
            else:
                record.status = "finalizing"
                record.timestamps["finalizing_at"] = now()
            return True
        if status == "finalizing":
            self._execute(record, 1.0, "completed")
            return True
        if status == "cancelling":
            if record.validated:
                self._execute(record, record.cancel_fraction, "cancelled")
            else:
                record.status = "cancelled"
                record.timestamps["cancelled_at"] = now()
            return True
        return False

    def _validate(self, record: BatchRecord) -> None:
        fault = record.fault
        if fault is not None and fault.kind == "fail":
            message = fault.message or _default_failure_message(fault.code, self._settings)
            self._fail(record, [batch_error(fault.code, message)])
            return
        problems = self._precheck(record)
        if problems:
            self._fail(record, problems)
            return
        if self._instant and self._faults.holding() is None:
            # One pass validates and executes; its output is discarded if the batch fails.
            expire = fault is not None and fault.kind == "expire"
            fraction = fault.completed_fraction if fault is not None and expire else 1.0
            result, execution = self._run(record, fraction, expire_unfinished=expire)
            if self._admit(record, result):
                record.timestamps["in_progress_at"] = now()
                self._finish(record, result, execution, "expired" if expire else "completed")
            else:
                _discard(execution)
            return
        count_ids = self._claim_count(record)
        result = scan(
            record.input_path,
            endpoint=record.endpoint,
            max_requests=self._settings.max_requests_per_file,
            count_ids=count_ids,
        )
        if count_ids:
            self._store.record_requests(result.custom_ids, result.total)
        if self._admit(record, result):
            record.validated = True
            record.status = "in_progress"
            record.timestamps["in_progress_at"] = now()
            record.total = result.total
            record.in_progress_polls = 1
            record.progress = 1 / (self._settings.in_progress_polls + 1)

    def _admit(self, record: BatchRecord, result: ScanResult) -> bool:
        """Fail the batch on validation errors or the enqueued-token limit; else claim tokens."""
        record.model = result.model or record.model
        if result.errors:
            self._fail(record, result.errors)
            return False
        limit = self._settings.enqueued_token_limit
        tokens = result.enqueued_tokens
        if limit is not None and tokens + self._store.in_flight_tokens(excluding=record) > limit:
            message = _default_failure_message("token_limit_exceeded", self._settings, record.model)
            self._fail(record, [batch_error("token_limit_exceeded", message)])
            return False
        record.enqueued_tokens = tokens
        return True

    def _execute(self, record: BatchRecord, fraction: float, terminal: str) -> None:
        result, execution = self._run(record, fraction, expire_unfinished=terminal == "expired")
        self._finish(record, result, execution, terminal)

    def _run(
        self, record: BatchRecord, fraction: float, *, expire_unfinished: bool
    ) -> tuple[ScanResult, Execution]:
        execution = Execution(
            renderer=LineRenderer(
                record.endpoint, seed=self._settings.seed, batch_seed=record.seed, created=now()
            ),
            faults=self._faults.line_session(),
            output_path=self._store.temp_path(f"{record.id}.output"),
            error_path=self._store.temp_path(f"{record.id}.error"),
            done_fraction=fraction,
            expire_unfinished=expire_unfinished,
            shuffle_seed=record.seed if self._settings.shuffle_output else None,
        )
        count_ids = self._claim_count(record)
        try:
            result = scan(
                record.input_path,
                endpoint=record.endpoint,
                max_requests=self._settings.max_requests_per_file,
                execution=execution,
                count_ids=count_ids,
            )
        except BaseException:
            _discard(execution)
            raise
        if count_ids:
            self._store.record_requests(result.custom_ids, result.total)
        return result, execution

    def _finish(
        self, record: BatchRecord, result: ScanResult, execution: Execution, terminal: str
    ) -> None:
        execution.faults.commit()
        if result.output_lines:
            output = self._store.add_file(
                execution.output_path, filename=f"{record.id}_output.jsonl", purpose="batch_output"
            )
            record.output_file_id = output.id
        if result.error_lines:
            errors = self._store.add_file(
                execution.error_path, filename=f"{record.id}_error.jsonl", purpose="batch_output"
            )
            record.error_file_id = errors.id
        _discard(execution)
        record.total = result.total
        record.completed = result.completed
        record.failed = result.failed
        record.input_tokens = result.input_tokens
        record.output_tokens = result.output_tokens
        stamp = now()
        if terminal == "completed":
            record.timestamps.setdefault("finalizing_at", stamp)
        record.timestamps[f"{terminal}_at"] = stamp
        record.status = terminal
        record.enqueued_tokens = 0

    def _fail(self, record: BatchRecord, errors: list[JSONObject]) -> None:
        record.status = "failed"
        record.errors = errors
        record.timestamps["failed_at"] = now()
        record.enqueued_tokens = 0

    def _precheck(self, record: BatchRecord) -> list[JSONObject]:
        if record.input_purpose != "batch":
            message = (
                f"The input file must be uploaded with purpose 'batch', not "
                f"'{record.input_purpose}'."
            )
            return [batch_error("invalid_file_purpose", message, param="input_file_id")]
        limit = self._settings.max_file_bytes
        if record.input_bytes > limit:
            message = f"The input file is {record.input_bytes} bytes; the maximum is {limit} bytes."
            return [batch_error("file_too_large", message, param="input_file_id")]
        return []

    def _claim_count(self, record: BatchRecord) -> bool:
        # Each batch's requests are counted by exactly one pass (see ensure_counted).
        claim = not record.ids_counted
        record.ids_counted = True
        return claim


def _discard(execution: Execution) -> None:
    execution.output_path.unlink(missing_ok=True)
    execution.error_path.unlink(missing_ok=True)


def _default_failure_message(code: str, settings: Settings, model: str | None = None) -> str:
    if code == "token_limit_exceeded":
        limit = settings.enqueued_token_limit
        shown = f"{limit:,}" if limit is not None else "the"
        return (
            f"Enqueued token limit reached for {model or 'this model'} in organization "
            f"org-emulator. Limit: {shown} enqueued tokens. Please try again once some "
            "in_progress batches have been completed."
        )
    return f"The batch failed with '{code}' (scripted by the emulator fault plan)."
