"""BatchorResource: the batchor runner as a Dagster resource."""

from __future__ import annotations

from typing import Any

import dagster as dg
from pydantic import PrivateAttr

from batchor_core import BatchorError, BatchRunner

__all__ = ["BatchorResource"]


class BatchorResource(dg.ConfigurableResource):  # type: ignore[type-arg]
    """The batchor runner as a resource, for assets, sensors, checks and your own ops.

    It holds only settings; the runner (store connection, HTTP client) is built when a
    run or sensor evaluation starts and closed when it ends. Batch state lives in the
    batchor store, never in Dagster.

    Attributes:
        storage_url: A SQLite path (``~`` is expanded), ``sqlite:///path`` or
            ``postgresql://user:pw@host/db``. Not ``memory``: each Dagster run builds its
            own runner, so the state must outlive it.
        artifact_root: Directory or object-store URL (``s3://bucket/prefix``,
            ``gs://...``, ``az://...``) for request files, raw outputs and exported
            results (default: beside the SQLite file, else ``./.batchor/artifacts``). When
            sensors and collect runs run on different hosts, use a URL: credentials and
            endpoint come from the environment (``AWS_ACCESS_KEY_ID``, ``AWS_ENDPOINT_URL``,
            ...), never from this config.
        openai_api_key: The OpenAI key; pass ``dg.EnvVar("OPENAI_API_KEY")`` so the value
            never shows in Dagster's UI. ``None`` lets batchor read ``OPENAI_API_KEY``.
        openai_base_url: An OpenAI-compatible base URL (for example the bundled emulator);
            ``None`` reads ``OPENAI_BASE_URL`` or uses the real service.
        lease_ttl_seconds: How long a process's hold on a run lasts unrenewed.
        transient_error_budget_seconds: How long one batch may keep meeting transient
            provider errors (429, 5xx, timeouts) before its run pauses with the reason.
        permanent_error_budget_seconds: How long another provider error (a 4xx, an
            answer of the wrong shape) is retried before the run pauses with the reason.
        enqueue_token_limits: Enqueued-token limit per model (``{"gpt-4o-mini":
            2_000_000}``), shared by every run in the store (see ``EnqueueLimit``).
        openai_timeout_seconds: How long one provider call may go without an answer
            (each read or write of it: a large upload that keeps moving is not cut).
            Lower than the SDK's usual minute, so a provider that does not answer holds
            a sensor tick (and a materialization) for about this long, well inside
            Dagster's 60 s tick limit, and says why.
    """

    storage_url: str = ".batchor/batchor.sqlite3"
    artifact_root: str | None = None
    openai_api_key: str | None = None
    openai_base_url: str | None = None
    lease_ttl_seconds: float = 120.0
    transient_error_budget_seconds: float = 1800.0
    permanent_error_budget_seconds: float = 60.0
    enqueue_token_limits: dict[str, int] | None = None
    openai_timeout_seconds: float = 20.0

    _runner: BatchRunner | None = PrivateAttr(default=None)

    def __repr_args__(self) -> Any:
        # pydantic's repr would print the key; Dagster and users log resource reprs.
        for name, value in super().__repr_args__():
            yield name, ("***" if name == "openai_api_key" and value else value)

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        """Build the runner for this run or sensor evaluation."""
        self._runner = self._build()

    def teardown_after_execution(self, context: dg.InitResourceContext) -> None:
        """Close the runner's connections."""
        if self._runner is not None:
            self._runner.close()
            self._runner = None

    def get_runner(self) -> BatchRunner:
        """The runner (built on first use when called outside a Dagster run)."""
        if self._runner is None:
            self._runner = self._build()
        return self._runner

    def _build(self) -> BatchRunner:
        if self.storage_url.strip() in ("memory", "memory://", "sqlite://", "sqlite:///:memory:"):
            raise dg.Failure(
                description="BatchorResource(storage_url='memory') would keep batch state "
                "only until this Dagster run ends, so the next run would submit everything "
                "again; use a SQLite path or a Postgres URL"
            )
        try:
            return BatchRunner.from_settings(
                store=self.storage_url,
                artifacts=self.artifact_root,
                api_key=self.openai_api_key,
                base_url=self.openai_base_url,
                lease_ttl_seconds=self.lease_ttl_seconds,
                transient_error_budget_seconds=self.transient_error_budget_seconds,
                permanent_error_budget_seconds=self.permanent_error_budget_seconds,
                enqueue_limits=self.enqueue_token_limits,
                timeout_seconds=self.openai_timeout_seconds,
            )
        except BatchorError as exc:
            # The message names the store (password masked) and the cause; the driver's
            # own traceback adds nothing a Dagster user can act on.
            raise dg.Failure(description=f"batchor resource: {exc.message}") from None

    def export_dir(self) -> str:
        """Where exported results of materializations go (with local artifacts; with an
        object-store URL they go to ``<url>/exports/`` instead)."""
        from pathlib import Path

        runner = self.get_runner()
        root = getattr(runner.artifacts, "root", None)
        base = Path(str(root)) if root is not None else Path(".batchor") / "artifacts"
        return str(base / "exports")
