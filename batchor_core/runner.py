"""BatchRunner: start runs, rehydrate them, and wire the ports together."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import uuid
from collections.abc import Callable, Collection, Iterable, Mapping
from datetime import datetime
from typing import Any

from pydantic import BaseModel

from batchor_core.advance import RunStepper
from batchor_core.budget import limits_for
from batchor_core.errors import (
    BatchorError,
    ConfigurationError,
    JobChangedError,
    ProviderError,
    RunLeasedError,
    RunNotFoundError,
    SourceChangedError,
)
from batchor_core.estimate import estimate_run
from batchor_core.ingest import Ingestor, IterableSource, as_source
from batchor_core.jobspec import (
    describe_job_change,
    job_spec,
    request_spec,
    resolve_output_model,
    same_job,
)
from batchor_core.lease import LeaseKeeper, new_owner_id
from batchor_core.models import (
    BatchItem,
    BatchJob,
    EnqueueLimit,
    JSONObject,
    JSONValue,
    Price,
    RunEstimate,
    RunStatus,
    RunSummary,
)
from batchor_core.ports import (
    ArtifactStore,
    BatchProvider,
    Clock,
    ItemSource,
    RunRecord,
    StateStore,
)
from batchor_core.run import Run, summarize
from batchor_core.stalls import StallPolicy

__all__ = ["BatchRunner"]

log = logging.getLogger("batchor.runner")


class BatchRunner:
    """The durable orchestrator: turns jobs and items into provider batches and results.

    Every argument is optional; the defaults are a SQLite file under ``./.batchor/``,
    artifacts beside it, and the OpenAI provider configured from environment variables.

    Args:
        storage: Control-plane store (:class:`SQLiteStorage`, :class:`PostgresStorage`,
            :class:`MemoryStateStore`), or where one is: a SQLite path, ``sqlite:///path``,
            ``postgresql://...`` or ``"memory"``.
        artifacts: Where request files and raw outputs go: an :class:`ArtifactStore`, a
            directory, or an object-store URL such as ``"s3://bucket/prefix"`` (see
            :class:`FsspecArtifactStore`; credentials from the provider's environment).
        provider: An :class:`OpenAIProviderConfig` or any :class:`BatchProvider`.
        clock: Time source (tests pass a fake one).
        ingest_slice_size: Items committed per ingest transaction (bounds the memory
            of an ingest: a slice is held while it is written).
        transient_backoff_seconds: Wait after a retryable provider error.
        token_limit_backoff_seconds: Wait before resubmitting a batch that hit the
            provider's enqueued-token limit.
        transient_error_budget_seconds: How long one batch may keep meeting transient
            provider errors (429, 5xx, connection failures) before the run pauses.
        permanent_error_budget_seconds: How long a permanent provider error (another
            4xx, an answer of the wrong shape) is retried before the run pauses with a
            reason naming the call; ``resume()`` once the cause is fixed.
        create_grace_seconds: After an ambiguous batch creation, how long a batch that
            cannot be found is looked for before it is created again (a create the
            provider commits late must not become a second batch).
        lease_ttl_seconds: How long this process's lease on a run lasts unrenewed. A
            holder that died is detected at once (on the same host with SQLite, on any
            host with Postgres); otherwise it blocks others for at most this long.
        owner_id: This process's lease owner id (host:pid:random by default).
        handle_sigterm: If the program has no SIGTERM handler, install one that exits
            via ``SystemExit`` so held leases are released (main thread only).
    """

    def __init__(
        self,
        *,
        storage: StateStore | str | os.PathLike[str] | None = None,
        artifacts: ArtifactStore | str | os.PathLike[str] | None = None,
        provider: Any = None,
        clock: Clock | None = None,
        ingest_slice_size: int = 5_000,
        transient_backoff_seconds: float = 5.0,
        token_limit_backoff_seconds: float = 60.0,
        transient_error_budget_seconds: float = 1800.0,
        permanent_error_budget_seconds: float = 60.0,
        create_grace_seconds: float = 60.0,
        lease_ttl_seconds: float = 120.0,
        owner_id: str | None = None,
        handle_sigterm: bool = True,
    ) -> None:
        from batchor_core import defaults

        if ingest_slice_size < 1:
            raise ConfigurationError("ingest_slice_size must be at least 1")
        opened = isinstance(storage, str | os.PathLike) or storage is None
        if isinstance(storage, str | os.PathLike):
            storage = defaults.open_storage(storage)
        elif storage is not None and not callable(getattr(storage, "create_run", None)):
            raise ConfigurationError(
                f"storage must be a store (SQLiteStorage, PostgresStorage, MemoryStateStore) "
                f"or a SQLite path or postgresql:// URL, not {type(storage).__name__}"
            )
        self.storage: StateStore = storage if storage is not None else defaults.default_storage()
        try:
            self.artifacts: ArtifactStore = defaults.open_artifacts(artifacts, self.storage)
        except BaseException:
            if opened:  # a store this runner opened (not the caller's) is not left open
                self.storage.close()
            raise
        self.provider: BatchProvider = defaults.as_provider(provider)
        self.clock: Clock = clock if clock is not None else defaults.default_clock()
        self.owner_id = owner_id or new_owner_id()
        self._lease = LeaseKeeper(
            self.storage,
            self.clock,
            self.owner_id,
            lease_ttl_seconds,
            handle_sigterm=handle_sigterm,
        )
        self._stepper = RunStepper(
            lease=self._lease,
            store=self.storage,
            artifacts=self.artifacts,
            provider=self.provider,
            clock=self.clock,
            stalls=StallPolicy(
                transient_backoff_seconds=transient_backoff_seconds,
                transient_budget_seconds=transient_error_budget_seconds,
                permanent_budget_seconds=permanent_error_budget_seconds,
            ),
            token_limit_backoff_seconds=token_limit_backoff_seconds,
            create_grace_seconds=create_grace_seconds,
        )
        self._ingestor = Ingestor(
            lease=self._lease,
            store=self.storage,
            artifacts=self.artifacts,
            provider=self.provider,
            clock=self.clock,
            slice_size=ingest_slice_size,
        )

    @classmethod
    def from_settings(
        cls,
        *,
        store: str | os.PathLike[str] | None = None,
        artifacts: str | os.PathLike[str] | None = None,
        artifact_options: Mapping[str, Any] | None = None,
        api_key: str | None = None,
        base_url: str | None = None,
        enqueue_limits: Mapping[str, int] | None = None,
        timeout_seconds: float | None = None,
        **options: Any,
    ) -> BatchRunner:
        """A runner from plain settings, as a config file or orchestrator resource holds them.

        Args:
            store: A SQLite path, ``sqlite:///path``, ``postgresql://...`` or ``"memory"``
                (default: ``./.batchor/batchor.sqlite3``).
            artifacts: Artifact directory or object-store URL (``s3://bucket/prefix``,
                ``gs://...``, ``az://...``, ``file://...``, ``memory://...``; default: beside
                the SQLite file).
            artifact_options: fsspec ``storage_options`` for an artifacts URL (endpoint,
                credentials); by default they come from the provider's environment.
            api_key: OpenAI API key (default: ``OPENAI_API_KEY``).
            base_url: OpenAI base URL (default: ``OPENAI_BASE_URL`` or the real service).
            enqueue_limits: Enqueued-token limit per model, in tokens.
            timeout_seconds: How long one provider call may go without an answer
                (default: ``OpenAIProviderConfig``'s 60 s).
            **options: Any other :class:`BatchRunner` keyword argument.
        """
        from batchor_core import defaults
        from batchor_core.providers.openai import OpenAIProviderConfig

        storage = defaults.open_storage(store)
        try:
            artifact_store = defaults.open_artifacts(
                artifacts, storage, storage_options=artifact_options
            )
            provider = OpenAIProviderConfig(
                api_key=api_key,
                base_url=base_url,
                enqueue_limits={
                    m: EnqueueLimit(tokens=t) for m, t in (enqueue_limits or {}).items()
                },
            )
            if timeout_seconds is not None:
                provider = dataclasses.replace(provider, timeout_seconds=timeout_seconds)
            return cls(storage=storage, artifacts=artifact_store, provider=provider, **options)
        except BaseException:
            storage.close()
            raise

    def __repr__(self) -> str:
        return f"BatchRunner(storage={self.storage!r}, artifacts={self.artifacts!r})"

    def __enter__(self) -> BatchRunner:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release held leases, HTTP connections and database connections."""
        self._lease.release_all()
        closer = getattr(self.provider, "close", None)
        if callable(closer):
            closer()
        self.storage.close()

    # ------------------------------------------------------------------ public

    def start(
        self,
        job: BatchJob,
        *,
        items: Iterable[BatchItem] | ItemSource,
        run_id: str | None = None,
        owner: JSONObject | None = None,
        on_progress: Callable[[RunSummary], None] | None = None,
    ) -> Run:
        """Start a run, or resume the run with this id, and submit what is ready.

        Ingest streams ``items`` into the store and request files (committing in slices,
        so an interrupted start resumes after the last committed slice when called again
        with the same ``run_id``, job and items).

        Args:
            job: How items become requests.
            items: An iterable of :class:`BatchItem` or an item source (CSV, JSONL, ...).
            run_id: Durable id; generated when omitted. Reusing it resumes the run.
            owner: Who owns the run (for example a Dagster asset and partition).
            on_progress: Called with the run's summary after every committed ingest slice
                (long ingests show progress; ``Run.wait`` takes the same callback).

        Returns:
            The run's handle.

        Raises:
            JobChangedError: The run exists with a different job.
            SourceChangedError: The run exists with a different item source.
        """
        self.provider.preflight()  # e.g. a missing API key fails before anything is read
        spec, fingerprint = job_spec(job, self.provider)
        limits = limits_for(
            job.enqueue_limit.tokens if job.enqueue_limit is not None else None, job.max_cost_usd
        )
        if run_id is None:
            run_id = f"run-{self.clock.now():%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
        _check_run_id(run_id)
        now = self.clock.now()
        record = self.storage.create_run(
            RunRecord(
                run_id=run_id,
                status=RunStatus.INGESTING,
                status_reason=None,
                job_spec=spec,
                job_fingerprint=fingerprint,
                source_identity=None,
                source_checkpoint=None,
                ingest_complete=False,
                total_items=0,
                completed_items=0,
                failed_items=0,
                cancelled_items=0,
                input_tokens=0,
                output_tokens=0,
                owner=owner,
                created_at=now,
                updated_at=now,
                limits=limits,
            )
        )
        _check_job(record, spec, fingerprint)
        declared = (record.limits or {}).get("declared")
        if declared != limits["declared"] and not record.status.is_terminal:
            # Budgets are not part of the job: a job whose budgets were changed in code
            # updates them. Starting again with the same job keeps a cap raised since.
            log.info("run %s: budgets changed from %s to %s", run_id, declared, limits)
            self.storage.set_limits(run_id, limits)
            record = dataclasses.replace(record, limits=limits)
        run = Run(self, run_id, output_model=job.output_model)
        source = as_source(items)
        self._check_source(record, source)  # also for a finished run: a changed file is news
        if record.ingest_complete and isinstance(source, IterableSource):
            try:  # in-memory items have no identity of their own: compare their digest
                source.check_complete(record.source_checkpoint)
            except SourceChangedError as exc:
                raise SourceChangedError(
                    f"run {run_id!r} was started with different items: {exc.message}",
                    run_id=run_id,
                ) from exc
        if record.ingest_complete or record.status.is_terminal:
            self._refresh_if_free(run)
            return run
        # Full chunks are submitted while the rest is still being read, so the provider
        # starts on the first batch long before a 10M-item file is fully ingested.
        if record.status_reason is not None and record.status is RunStatus.INGESTING:
            # Reading the items again: why they stopped last time is no longer news.
            self.storage.set_status(
                run_id, RunStatus.INGESTING, reason=None, expected=[RunStatus.INGESTING]
            )
        try:
            added = self._ingestor.run(
                record,
                job,
                request_spec(spec),
                source,
                on_sealed=lambda: self._submit_quietly(run_id),
                on_slice=(lambda: on_progress(run.summary())) if on_progress is not None else None,
            )
        except RunLeasedError:
            raise  # another process is reading the items: nothing is stuck
        except Exception as exc:
            self._note_ingest_stopped(run_id, exc)
            raise
        self.storage.set_status(run_id, RunStatus.RUNNING, expected=[RunStatus.INGESTING])
        log.info("run %s: ingest complete (%d new items)", run_id, added)
        self._refresh_if_free(run)
        return run

    def get_run(self, run_id: str, *, job: BatchJob | None = None) -> Run:
        """Rehydrate a run's handle from the store (for example in a new process).

        Every action works without ``job=``: cancel, pause, resume, summary, export and
        even ``wait()``. Without the output model (it cannot be imported by name, for
        example it was defined in the starting script), finished batches are collected
        by checking outputs against the strict JSON schema stored with the run (what the
        provider enforced), and ``results()`` yield plain ``dict`` outputs. Pass ``job=``
        to get typed outputs (validated with the model as they are read).

        Args:
            run_id: The run's id.
            job: The run's job, for typed outputs when its output model cannot be
                imported by name; it must match the job the run started with.

        Raises:
            RunNotFoundError: No such run.
            JobChangedError: ``job`` differs from the run's job.
        """
        record = self.storage.load_run(run_id)
        if record is None:
            raise RunNotFoundError(
                f"no run {run_id!r} in {self.storage!r}; check the id and the storage path",
                run_id=run_id,
            )
        model: type[BaseModel] | None = None
        if job is not None:
            _check_job(record, *job_spec(job, self.provider))
            model = job.output_model
        else:
            model = resolve_output_model(record.job_spec)
            if model is not None:
                _name, schema = self.provider.output_schema(model)
                if schema != record.job_spec.get("output_schema"):
                    model = None  # same name, different shape: do not trust it
        return Run(self, run_id, output_model=model)

    def job_fingerprint(self, job: BatchJob) -> str:
        """The digest a run stores to recognise its job (model, endpoint, options, output
        schema, policies and the request builder's code); equal jobs give equal digests."""
        return job_spec(job, self.provider)[1]

    def pause(self, run_id: str, reason: str | None = None) -> RunSummary:
        """Pause a run by id (see :meth:`Run.pause`)."""
        return self.get_run(run_id).pause(reason)

    def resume(self, run_id: str, *, max_cost_usd: float | None = None) -> RunSummary:
        """Resume a paused run by id, optionally with a new cost cap (see :meth:`Run.resume`)."""
        return self.get_run(run_id).resume(max_cost_usd=max_cost_usd)

    def estimate(self, job: BatchJob, items: Iterable[BatchItem] | ItemSource) -> RunEstimate:
        """What a run of ``job`` over ``items`` (an iterable or a source, as for
        :meth:`start`) would enqueue and cost, before submitting.

        Builds every request exactly as a run would (nothing is stored or sent) and
        estimates its input tokens (see :mod:`batchor_core.tokens`) and its cost at the
        model's batch price (see :mod:`batchor_core.budget` for the output estimate).
        Items a run would fail at once are counted in ``rejected``, with the first one's
        reason in ``first_rejection``.
        """
        return estimate_run(job, items, self.provider)

    def cancel(self, run_id: str, reason: str | None = None) -> RunSummary:
        """Cancel a run by id (see :meth:`Run.cancel`)."""
        return self.get_run(run_id).cancel(reason)

    def break_lease(self, run_id: str) -> str | None:
        """Clear a run's lease whoever holds it; return the holder it had (None: free).

        Operator action for a stale lease whose holder you know is gone but which batchor
        cannot see die: a process on another host (SQLite on a shared disk), before the
        lease's TTL runs out. A dead holder on this host, or any host with Postgres, is
        detected without it. A holder that is in fact alive is fenced out: its next
        renewal fails and it stops before its next call to the provider.

        Raises:
            RunNotFoundError: No such run.
        """
        if self.storage.load_run(run_id) is None:
            raise RunNotFoundError(f"no run {run_id!r} in {self.storage!r}", run_id=run_id)
        holder = self.storage.break_lease(run_id)
        if holder is not None:
            log.warning("run %s: lease of %s broken by operator", run_id, holder)
        return holder

    def list_runs(
        self,
        *,
        owner: Mapping[str, JSONValue] | None = None,
        status: RunStatus | str | Collection[RunStatus | str] | None = None,
        collected: bool | None = None,
        collected_after: datetime | None = None,
    ) -> list[RunSummary]:
        """Summaries of the runs in the store, oldest first.

        Args:
            owner: Only runs whose owner has these keys and values (a run started with
                ``owner={"asset": "reviews", "partition": "2026-11"}`` matches
                ``owner={"asset": "reviews"}``).
            status: Only runs with this status, or one of these statuses.
            collected: Only runs with (True) or without (False) a collection marker
                (see :meth:`Run.mark_collected`).
            collected_after: Only runs collected at or after this time.
        """
        statuses: list[RunStatus] | None = None
        if status is not None:
            wanted = [status] if isinstance(status, str) else list(status)
            statuses = [RunStatus(s) for s in wanted]
        with self.storage.read():  # runs and their batches as of one moment
            records = self.storage.list_runs(
                statuses=statuses, collected=collected, collected_after=collected_after
            )
            if owner is not None:
                records = [r for r in records if _owned_by(r.owner, owner)]
            stats = self.storage.chunk_stats([r.run_id for r in records])
        return [summarize(r, stats[r.run_id], self.price_of(r)) for r in records]

    def price_of(self, record: RunRecord) -> tuple[Price | None, str]:
        """The price of a run's model (from the provider config or batchor's table)."""
        return self.provider.price(str(record.job_spec.get("model")))

    # ------------------------------------------------------------------ internals

    def _submit_quietly(self, run_id: str) -> None:
        try:
            self._stepper.submit_ready(run_id)
        except ProviderError as exc:  # the next step retries; ingest goes on
            log.warning("run %s: early submission deferred: %s", run_id, exc.message)

    @staticmethod
    def _refresh_if_free(run: Run) -> None:
        # Another process may be advancing it right now; the handle is good either way.
        with contextlib.suppress(RunLeasedError):
            run.refresh()

    def _note_ingest_stopped(self, run_id: str, exc: Exception) -> None:
        """Say on the run why its ingest stopped (it cannot move on until ``start()`` is
        called again with its items), so ``summary()``, the CLI and Dagster show it."""
        with contextlib.suppress(Exception):  # the first error is the one to raise
            done = self.storage.load_run(run_id)
            read = done.total_items if done is not None else 0
            detail = (
                exc.message if isinstance(exc, BatchorError) else f"{type(exc).__name__}: {exc}"
            )
            reason = (
                f"reading the items stopped after {read}: {detail[:500]}; call start() again "
                "with the same items to go on (what was read is kept)"
            )
            self.storage.set_status(
                run_id, RunStatus.INGESTING, reason=reason, expected=[RunStatus.INGESTING]
            )
            log.warning("run %s: %s", run_id, reason)

    def _check_source(self, record: RunRecord, source: ItemSource) -> None:
        identity = source.identity()
        if record.source_identity is None:
            self.storage.set_source(record.run_id, identity)
            return
        if record.source_identity != identity:
            detail = _describe_source_change(record.source_identity, identity)
            raise SourceChangedError(
                f"run {record.run_id!r} was started from a different source: {detail}. Resume "
                "it with the original input, or start a new run id.",
                run_id=record.run_id,
            )

    @property
    def stepper(self) -> RunStepper:
        """The step engine (used by :class:`Run`)."""
        return self._stepper


def _check_run_id(run_id: object) -> None:
    # An empty id must not mean "make one up": a restart would then start a second run
    # and resubmit everything. NUL cannot be stored in Postgres text columns.
    if not isinstance(run_id, str) or not run_id.strip() or len(run_id) > 200:
        raise ConfigurationError(
            f"run_id must be a string of 1-200 characters, not only spaces; got {run_id!r}"
        )
    if any(ord(c) < 32 for c in run_id):
        raise ConfigurationError(f"run_id must not contain control characters; got {run_id!r}")
    try:
        run_id.encode()
    except UnicodeEncodeError as exc:
        raise ConfigurationError(f"run_id is not valid Unicode text: {run_id!r}") from exc


def _owned_by(actual: JSONObject | None, wanted: Mapping[str, JSONValue]) -> bool:
    return actual is not None and all(actual.get(k) == v for k, v in wanted.items())


def _check_job(record: RunRecord, spec: JSONObject, fingerprint: str) -> None:
    if not same_job(record.job_spec, record.job_fingerprint, spec, fingerprint):
        raise JobChangedError(
            f"run {record.run_id!r} was started with a different job: "
            f"{describe_job_change(record.job_spec, spec)}. Use the original job to resume "
            "it, or start a new run id.",
            run_id=record.run_id,
        )


def _describe_source_change(old: JSONObject, new: JSONObject, prefix: str = "") -> str:
    """One line naming what differs between two source identities (nested fields too)."""
    parts = []
    for key in sorted(set(old) | set(new)):
        before, after = old.get(key), new.get(key)
        if before == after:
            continue
        name = f"{prefix}{key}"
        if isinstance(before, dict) and isinstance(after, dict):
            parts.append(_describe_source_change(before, after, f"{name}."))
        elif isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
            for i, (b, a) in enumerate(zip(before, after, strict=True)):
                if b != a and isinstance(b, dict) and isinstance(a, dict):
                    parts.append(_describe_source_change(b, a, f"{name}[{i}]."))
                elif b != a:
                    parts.append(f"{name}[{i}] changed")
        elif key == "sha256":
            parts.append(f"{name} changed (the file's content differs)")
        elif isinstance(before, str | int | float | None) and isinstance(
            after, str | int | float | None
        ):
            parts.append(f"{name} {str(before)[:40]!r} -> {str(after)[:40]!r}")
        else:
            parts.append(f"{name} changed")
    return "; ".join(p for p in parts if p) or "identity differs"
