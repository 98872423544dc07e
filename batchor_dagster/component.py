"""BatchorBatchComponent: a batchor asset and its sensor from a ``defs.yaml``, for ``dg``.

::

    type: batchor_dagster.BatchorBatchComponent
    attributes:
      asset_name: reviews_classified
      input_path: data/reviews.csv
      id_column: id
      prompt_template: "Classify this review: {text}"
      openai_model: gpt-4o-mini
      output_model: my_project.models:ReviewLabel
"""

# No ``from __future__ import annotations``: the component's fields are read by Dagster.

import importlib
import string
from pathlib import Path
from typing import Any, Literal

import dagster as dg
from pydantic import BaseModel

from batchor_core import BatchItem, BatchJob, ConfigurationError, RetryPolicy, SourceError
from batchor_core.sources import CsvSource, JsonlSource, ParquetSource

from .asset import batchor_asset
from .constants import DEFAULT_RESOURCE_KEY
from .resource import BatchorResource
from .results import BatchorResultsIOManager
from .sensor import build_batchor_sensor

__all__ = ["BatchorBatchComponent", "PromptTemplate"]

_ENDPOINTS = {"chat": "/v1/chat/completions", "responses": "/v1/responses"}


class PromptTemplate:
    """A prompt builder that fills ``template`` from the item's payload
    (``"Classify: {text}"``). A plain object, so the job fingerprint sees the template.

    Raises:
        ConfigurationError: The template has positional (``{}``, ``{0}``) or malformed
            fields; literal braces are written ``{{`` and ``}}``.
    """

    def __init__(self, template: str) -> None:
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
        except ValueError as exc:
            raise ConfigurationError(
                f"prompt template {template!r} is malformed ({exc}); write literal braces "
                "as {{ and }}"
            ) from exc
        for name in fields:
            if not name or name.isdigit() or not name.split(".")[0].split("[")[0].isidentifier():
                raise ConfigurationError(
                    f"prompt template {template!r}: {{{name}}} is not a column name; name "
                    "the item field ({text}) and write literal braces as {{ and }}"
                )
        self.template = template
        self.fields = sorted({name.split(".")[0].split("[")[0] for name in fields})

    def __call__(self, item: BatchItem) -> str:
        try:
            return self.template.format(**item.payload)
        except KeyError as exc:
            raise ConfigurationError(
                f"prompt template needs field {exc.args[0]!r}, which item {item.item_id!r} "
                f"does not have (it has {sorted(item.payload)})"
            ) from exc


class BatchorBatchComponent(dg.Component, dg.Model, dg.Resolvable):
    """Classify or transform every row of a CSV, JSONL or Parquet file with the OpenAI
    Batch API: one batchor asset (one durable run per input content), its sensor, and the
    batchor resource.

    Attributes:
        asset_name: Name of the asset.
        input_path: The input file (relative paths are relative to the working directory).
        id_column: Column (or JSON field) holding each row's unique id.
        prompt_template: User message, ``str.format``-ed with the row's fields.
        system_prompt: Optional system message.
        openai_model: OpenAI model name (not ``model``: that name is taken by
            ``Component.model()``).
        endpoint: ``chat`` or ``responses``.
        output_model: ``module:Class`` of a Pydantic model for structured output; text
            when empty.
        max_attempts: Attempts per item.
        group_name: Asset group.
        storage_url: batchor store (SQLite path or Postgres URL).
        artifact_root: batchor artifact directory or object-store URL (``s3://...``).
        openai_base_url: OpenAI-compatible base URL (for example the bundled emulator).
        resource_key: Key of the batchor resource (default ``batchor_<asset_name>``, so
            several components load side by side).
        sensor_interval_seconds: Seconds between sensor ticks.
        sensor_running: Whether the sensor starts running when the code location loads.
    """

    asset_name: str
    input_path: str
    id_column: str = "id"
    prompt_template: str
    system_prompt: str | None = None
    openai_model: str = "gpt-4o-mini"
    endpoint: Literal["chat", "responses"] = "chat"
    output_model: str | None = None
    max_attempts: int = 3
    group_name: str | None = None
    storage_url: str = ".batchor/batchor.sqlite3"
    artifact_root: str | None = None
    openai_base_url: str | None = None
    resource_key: str | None = None
    sensor_interval_seconds: int = 60
    sensor_running: bool = False

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        """The asset, its sensor, the batchor resource and a results IO manager."""
        output_model = _import_model(self.output_model) if self.output_model else None
        path = Path(self.input_path)
        job_args: dict[str, Any] = {
            "model": self.openai_model,
            "endpoint": _ENDPOINTS[self.endpoint],
            "output_model": output_model,
            "retry_policy": RetryPolicy(max_attempts=self.max_attempts),
        }
        template = PromptTemplate(self.prompt_template)
        system = self.system_prompt
        chat = self.endpoint == "chat"
        if system:
            job_args["build_request"] = _WithSystem(template, system, chat=chat)
        else:
            job_args["build_prompt"] = template
        id_column = self.id_column
        resource_key = self.resource_key or f"{DEFAULT_RESOURCE_KEY}_{self.asset_name}"

        def build_job(_context: dg.AssetExecutionContext) -> BatchJob:
            return BatchJob(**job_args)

        def build_items(_context: dg.AssetExecutionContext) -> Any:
            _check_template_columns(path, id_column, template)
            return _source(path, id_column)

        results_key = f"{resource_key}_results"
        asset = batchor_asset(
            name=self.asset_name,
            build_job=build_job,
            build_items=build_items,
            group_name=self.group_name,
            resource_key=resource_key,
            io_manager_key=results_key,
        )
        sensor = build_batchor_sensor(
            [asset],
            name=f"{self.asset_name}_sensor",
            minimum_interval_seconds=self.sensor_interval_seconds,
            default_status=(
                dg.DefaultSensorStatus.RUNNING
                if self.sensor_running
                else dg.DefaultSensorStatus.STOPPED
            ),
            resource_key=resource_key,
        )
        resource = BatchorResource(
            storage_url=self.storage_url,
            artifact_root=self.artifact_root,
            openai_base_url=self.openai_base_url,
        )
        return dg.Definitions(
            assets=[asset],
            sensors=[sensor],
            resources={
                resource_key: resource,
                results_key: BatchorResultsIOManager(batchor=resource),
            },
        )


class _WithSystem:
    """A request builder with a system message before the templated user message."""

    def __init__(self, template: PromptTemplate, system: str, *, chat: bool) -> None:
        self.template = template.template
        self.system = system
        self.chat = chat

    def __call__(self, item: BatchItem) -> dict[str, Any]:
        user = PromptTemplate(self.template)(item)
        messages = [{"role": "system", "content": self.system}, {"role": "user", "content": user}]
        return {"messages": messages} if self.chat else {"input": messages}


def _import_model(ref: str) -> type[BaseModel]:
    module_name, _, qualname = ref.partition(":")
    if not module_name or not qualname:
        raise ConfigurationError(f"output_model must look like 'package.module:Class', not {ref!r}")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise ConfigurationError(f"cannot import output_model {ref!r}: {exc}") from exc
    if not (isinstance(obj, type) and issubclass(obj, BaseModel)):
        raise ConfigurationError(f"output_model {ref!r} is not a pydantic BaseModel subclass")
    return obj


def _check_template_columns(path: Path, id_column: str, template: PromptTemplate) -> None:
    """Fail before anything is submitted when the template names a column the file lacks.

    CSV and Parquet files have a header to check; JSONL rows may differ, so a missing
    field there fails only the items that lack it.
    """
    if path.suffix.lower() not in (".csv", ".parquet") or not template.fields:
        return
    try:
        _source(path, id_column, payload_columns=template.fields).check()
    except SourceError as exc:
        if "no payload column" not in str(exc):
            raise
        raise ConfigurationError(
            f"prompt template {template.template!r} names a column the input lacks: {exc}"
        ) from exc


def _source(path: Path, id_column: str, *, payload_columns: list[str] | None = None) -> Any:
    suffix = path.suffix.lower()
    if suffix == ".csv":
        return CsvSource(path, id_column=id_column, payload_columns=payload_columns)
    if suffix in (".jsonl", ".ndjson"):
        return JsonlSource(path, id_field=id_column)
    if suffix == ".parquet":
        return ParquetSource(path, id_column=id_column, payload_columns=payload_columns)
    raise ConfigurationError(f"input_path {str(path)!r}: use a .csv, .jsonl or .parquet file")
