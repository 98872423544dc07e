"""Where the CLI's runner, store, artifacts, input and output model come from.

Flags win, then the environment (``BATCHOR_STORE``, ``BATCHOR_ARTIFACTS``,
``OPENAI_API_KEY``, ``OPENAI_BASE_URL``), then the Python API's embedded defaults
(a SQLite file under ``$BATCHOR_HOME`` or ``./.batchor``, artifacts beside it).
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel

from batchor_core.cli.errors import CliError, ExitCode
from batchor_core.errors import ConfigurationError
from batchor_core.ports import ItemSource, StateStore
from batchor_core.runner import BatchRunner

__all__ = [
    "ARTIFACTS_ENV",
    "STORE_ENV",
    "Settings",
    "load_output_model",
    "open_runner",
    "open_source",
    "open_storage",
]

STORE_ENV = "BATCHOR_STORE"
ARTIFACTS_ENV = "BATCHOR_ARTIFACTS"
SOURCE_SUFFIXES = (".csv", ".jsonl", ".ndjson", ".parquet")


@dataclass(frozen=True, slots=True)
class Settings:
    """The connection flags shared by every command (``None``: environment, then default).

    Attributes:
        store: A SQLite file path, ``sqlite:///path`` or ``postgresql://...``.
        artifacts: Directory or object-store URL (``s3://bucket/prefix``, ...) for
            request files and raw outputs.
        base_url: OpenAI API root (``OPENAI_BASE_URL`` when not given).
    """

    store: str | None = None
    artifacts: str | None = None
    base_url: str | None = None


def open_storage(store: str | None, *, must_exist: bool) -> StateStore:
    """Open the control-plane store named by ``store`` (or ``BATCHOR_STORE``, or the default).

    Args:
        store: The ``--store`` flag.
        must_exist: Refuse to create a new SQLite file (read commands never create one).
    """
    from batchor_core.defaults import store_target
    from batchor_core.storage import PostgresStorage, SQLiteStorage

    spec = store or os.environ.get(STORE_ENV) or None
    if spec is None:
        home = Path(os.environ.get("BATCHOR_HOME", ".batchor"))
        path = home / "batchor.sqlite3"
    else:
        try:
            kind, target = store_target(spec)
        except ConfigurationError:
            kind, target = "", ""
        if kind == "postgres":
            return PostgresStorage(target)
        if kind != "sqlite":  # another scheme, or a memory store that ends with the command
            raise CliError(
                f"bad store URL {_redact(spec)!r}: use a file path, sqlite:///PATH or "
                "postgresql://USER:PASSWORD@HOST/DB",
                ExitCode.USAGE,
            )
        path = Path(target)
    if must_exist and not path.is_file():
        raise CliError(
            f"no batchor store at {path}; pass --store or set {STORE_ENV}", ExitCode.NOT_FOUND
        )
    if must_exist and path.stat().st_size == 0:
        # SQLite would take an empty file as a new database, and opening it as a store
        # writes the schema: a read command must not turn any empty file into a store.
        raise CliError(f"{path} is empty, not a batchor store", ExitCode.NOT_FOUND)
    return SQLiteStorage(path)


@contextmanager
def open_runner(settings: Settings, *, must_exist: bool = True) -> Iterator[BatchRunner]:
    """A runner on the configured store, artifacts and provider, closed afterwards."""
    from batchor_core import defaults
    from batchor_core.providers.openai import OpenAIProviderConfig

    storage = open_storage(settings.store, must_exist=must_exist)
    try:
        location = settings.artifacts or os.environ.get(ARTIFACTS_ENV) or None
        artifacts = defaults.open_artifacts(location, storage)
        provider = OpenAIProviderConfig(base_url=settings.base_url)
        runner = BatchRunner(storage=storage, artifacts=artifacts, provider=provider)
    except BaseException:
        storage.close()
        raise
    with runner:
        _importable_from_cwd()
        yield runner


def open_source(path: str, *, id_column: str, fields: list[str]) -> ItemSource:
    """A CSV, JSONL or Parquet source (by extension) reading ``id_column`` and ``fields``.

    Raises:
        CliError: The file is missing or its extension is not one of the supported ones.
    """
    from batchor_core.sources import CsvSource, JsonlSource, ParquetSource

    file = Path(path)
    if not file.is_file():
        raise CliError(f"input file not found: {path}", ExitCode.INPUT)
    suffix = file.suffix.lower()
    source: ItemSource
    if suffix == ".csv":
        source = CsvSource(file, id_column=id_column, payload_columns=fields)
    elif suffix in (".jsonl", ".ndjson"):
        source = JsonlSource(file, id_field=id_column, payload_fields=fields)
    elif suffix == ".parquet":
        source = ParquetSource(file, id_column=id_column, payload_columns=fields)
    else:
        raise CliError(
            f"cannot tell the format of {path}: use a file ending in {', '.join(SOURCE_SUFFIXES)}",
            ExitCode.INPUT,
        )
    check = getattr(source, "check", None)
    if callable(check):
        check()  # a missing column or an empty file fails now, before a run exists
    if suffix in (".jsonl", ".ndjson"):
        _check_first_record(file, [id_column, *fields])
    return source


def _check_first_record(file: Path, wanted: list[str]) -> None:
    """A misspelled ``--id-column`` or ``--prompt-field`` fails now, as for a CSV header:
    JSON lines have no header, so the first record stands for it (a later line missing a
    field is still only that item's failure)."""
    import json

    with open(file, "rb") as fh:
        for raw in fh:
            if not raw.strip():
                continue
            try:
                first = json.loads(raw)
            except ValueError:
                return  # a bad first line is that line's own failure
            if not isinstance(first, dict):
                return
            missing = [name for name in dict.fromkeys(wanted) if name not in first]
            if missing:
                raise CliError(
                    f"the first record of {file} has no field {', '.join(map(repr, missing))}; "
                    f"its fields are {', '.join(map(repr, list(first)[:20]))} "
                    "(check --id-column and --prompt-field or the template's {names})",
                    ExitCode.INPUT,
                )
            return


def load_output_model(ref: str) -> type[BaseModel]:
    """Import ``module:Class`` (the current directory is importable) as an output model."""
    module_name, sep, qualname = ref.partition(":")
    if not sep or not module_name or not qualname:
        raise CliError(f"--output-model must look like module:Class, not {ref!r}", ExitCode.USAGE)
    _importable_from_cwd()
    try:
        obj: object = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except ImportError as exc:
        raise CliError(
            f"cannot import {module_name!r} for --output-model: {exc}", ExitCode.USAGE
        ) from exc
    except AttributeError as exc:
        message = f"{module_name!r} has no {qualname!r} (--output-model)"
        raise CliError(message, ExitCode.USAGE) from exc
    if not (isinstance(obj, type) and issubclass(obj, BaseModel)):
        raise CliError(f"--output-model {ref!r} is not a pydantic model class", ExitCode.USAGE)
    return obj


def _importable_from_cwd() -> None:
    # A console script's sys.path does not hold the working directory; output models
    # named module:Class (and resolved again when results are read) live there.
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)


def _redact(url: str) -> str:
    scheme, _, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.split("@", 1)[1]
    return f"{scheme}://{rest}"
