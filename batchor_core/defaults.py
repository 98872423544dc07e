"""Embedded defaults: SQLite under ./.batchor/, artifacts beside it, OpenAI from env vars.

This module composes adapters, so the runner itself never imports them at module level.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from batchor_core.artifacts import LocalArtifactStore
from batchor_core.clock import SystemClock
from batchor_core.errors import ConfigurationError
from batchor_core.ports import ArtifactStore, BatchProvider, Clock, StateStore
from batchor_core.providers.openai import OpenAIBatchProvider, OpenAIProviderConfig
from batchor_core.storage import MemoryStateStore, PostgresStorage, SQLiteStorage

__all__ = [
    "as_provider",
    "default_artifacts",
    "default_clock",
    "default_storage",
    "open_artifacts",
    "open_storage",
]

DEFAULT_HOME = Path(".batchor")


def _home() -> Path:
    return Path(os.environ.get("BATCHOR_HOME", str(DEFAULT_HOME)))


def default_storage() -> StateStore:
    """A SQLite file at ``$BATCHOR_HOME/batchor.sqlite3`` (``./.batchor`` by default)."""
    return SQLiteStorage(_home() / "batchor.sqlite3")


def default_artifacts(storage: StateStore) -> ArtifactStore:
    """Artifacts beside the SQLite file, or under ``$BATCHOR_HOME/artifacts``."""
    path = getattr(storage, "path", None)
    if isinstance(path, Path):
        return LocalArtifactStore(path.parent / "artifacts")
    return LocalArtifactStore(_home() / "artifacts")


def open_storage(location: str | os.PathLike[str] | None) -> StateStore:
    """A store from a path or URL.

    ``None`` is the default SQLite file; ``"memory"`` (or ``sqlite://``) an in-memory
    store; ``sqlite:///path`` or a plain path a SQLite file; ``postgresql://...`` (or
    ``postgresql+psycopg://...``) Postgres.

    Raises:
        ConfigurationError: The URL names a database batchor cannot use.
    """
    if location is None:
        return default_storage()
    text = os.fspath(location).strip()
    if not text:
        raise ConfigurationError("the store location is empty; give a SQLite path or a URL")
    if text in ("memory", "memory://", "sqlite://", "sqlite:///:memory:"):
        return MemoryStateStore()
    if text.startswith("sqlite:///"):
        return SQLiteStorage(text[len("sqlite:///") :])
    if text.startswith(("postgresql://", "postgresql+psycopg://", "postgres://")):
        if text.startswith("postgres://"):
            text = "postgresql://" + text[len("postgres://") :]
        return PostgresStorage(text)
    if "://" in text:
        scheme = text.split("://", 1)[0]
        raise ConfigurationError(
            f"unsupported store URL scheme {scheme!r}; use a SQLite path, sqlite:///path, "
            "or postgresql://user:password@host/database"
        )
    return SQLiteStorage(text)


def open_artifacts(location: str | os.PathLike[str] | None, storage: StateStore) -> ArtifactStore:
    """An artifact store from a directory (``None``: beside the SQLite file)."""
    if location is None:
        return default_artifacts(storage)
    return LocalArtifactStore(Path(location))


def default_clock() -> Clock:
    """The system clock."""
    return SystemClock()


def as_provider(value: Any) -> BatchProvider:
    """Turn ``None``, an :class:`OpenAIProviderConfig` or a provider into a provider."""
    if value is None:
        return OpenAIBatchProvider(OpenAIProviderConfig())
    if isinstance(value, OpenAIProviderConfig):
        return OpenAIBatchProvider(value)
    required = ("create_batch", "get_batch", "upload_file", "parse_line", "shape_body")
    if all(hasattr(value, name) for name in required):
        return value  # type: ignore[no-any-return]
    raise ConfigurationError(
        f"provider must be an OpenAIProviderConfig or a BatchProvider, got {type(value).__name__}"
    )
