"""Embedded defaults: SQLite under ./.batchor/, artifacts beside it, OpenAI from env vars.

This module composes adapters, so the runner itself never imports them at module level.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from batchor_core.artifacts import LocalArtifactStore
from batchor_core.clock import SystemClock
from batchor_core.errors import ConfigurationError
from batchor_core.gcpause import gc_paused
from batchor_core.models import Price
from batchor_core.ports import ArtifactStore, BatchProvider, Clock, StateStore
from batchor_core.providers.openai.config import (
    OpenAIProviderConfig,
    configured_enqueue_limit,
    configured_price,
)
from batchor_core.storage import MemoryStateStore, PostgresStorage, SQLiteStorage

if TYPE_CHECKING:
    from batchor_core.providers.openai import OpenAIBatchProvider

__all__ = [
    "artifacts_target",
    "as_provider",
    "default_artifacts",
    "default_clock",
    "default_storage",
    "open_artifacts",
    "open_storage",
    "store_target",
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


def store_target(location: str | os.PathLike[str]) -> tuple[str, str]:
    """What a store location names: ``("memory", "")``, ``("sqlite", path)`` or
    ``("postgres", url)``. Paths may use ``~``; ``postgres://`` means ``postgresql://``.

    Raises:
        ConfigurationError: The location is empty or names a database batchor cannot use.
    """
    text = os.fspath(location).strip()
    if not text:
        raise ConfigurationError("the store location is empty; give a SQLite path or a URL")
    if text in ("memory", "memory://", "sqlite://", "sqlite:///:memory:"):
        return "memory", ""
    if text.startswith("sqlite:///"):
        return "sqlite", str(Path(text[len("sqlite:///") :]).expanduser())
    if text.startswith(("postgresql://", "postgresql+psycopg://")):
        return "postgres", text
    if text.startswith("postgres://"):
        return "postgres", "postgresql://" + text[len("postgres://") :]
    if "://" in text:
        scheme = text.split("://", 1)[0]
        raise ConfigurationError(
            f"unsupported store URL scheme {scheme!r}; use a SQLite path, sqlite:///path, "
            "or postgresql://user:password@host/database"
        )
    return "sqlite", str(Path(text).expanduser())


def open_storage(location: str | os.PathLike[str] | None) -> StateStore:
    """A store from a path or URL (see :func:`store_target`); ``None`` is the default
    SQLite file.

    Raises:
        ConfigurationError: The URL names a database batchor cannot use.
    """
    if location is None:
        return default_storage()
    kind, target = store_target(location)
    if kind == "memory":
        return MemoryStateStore()
    if kind == "postgres":
        return PostgresStorage(target)
    return SQLiteStorage(target)


_FSSPEC_SCHEMES = ("s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl", "file", "memory")


def artifacts_target(location: str | os.PathLike[str]) -> tuple[str, str]:
    """What an artifacts location names: ``("local", directory)`` or ``("fsspec", url)``
    (``s3://``, ``gs://``, ``az://``, ``abfs://``, ``file://``, ``memory://``).

    Raises:
        ConfigurationError: The location is empty or has a scheme batchor cannot use.
    """
    text = os.fspath(location).strip()
    if not text:
        raise ConfigurationError("the artifacts location is empty; give a directory or a URL")
    if "://" not in text:
        return "local", str(Path(text).expanduser())
    scheme = text.split("://", 1)[0].lower()
    if scheme not in _FSSPEC_SCHEMES:
        raise ConfigurationError(
            f"unsupported artifacts URL scheme {scheme!r}; use a directory, s3://bucket/prefix, "
            "gs://bucket/prefix, az://container/prefix, file:///path or memory://name"
        )
    return "fsspec", text


def open_artifacts(
    location: str | os.PathLike[str] | ArtifactStore | None,
    storage: StateStore,
    *,
    storage_options: Mapping[str, Any] | None = None,
) -> ArtifactStore:
    """An artifact store from a directory or URL (``None``: beside the SQLite file); an
    :class:`ArtifactStore` is returned as is.

    Args:
        location: A directory, an object-store URL (see :func:`artifacts_target`) or a store.
        storage: The control-plane store (the default artifacts live beside its file).
        storage_options: fsspec options for a URL (credentials, endpoint); for a directory
            they are refused.

    Raises:
        ConfigurationError: The location cannot be used, or its library is not installed.
    """
    if location is None:
        if storage_options:
            raise ConfigurationError("artifact storage_options need an artifacts URL")
        return default_artifacts(storage)
    if not isinstance(location, str | os.PathLike):
        return location
    kind, target = artifacts_target(location)
    if kind == "local":
        if storage_options:
            raise ConfigurationError(
                "artifact storage_options apply to an object-store URL, not a directory"
            )
        return LocalArtifactStore(target)
    from batchor_core.artifacts.fsspec_store import FsspecArtifactStore

    return FsspecArtifactStore(target, storage_options=storage_options)


def default_clock() -> Clock:
    """The system clock."""
    return SystemClock()


def as_provider(value: Any) -> BatchProvider:
    """Turn ``None``, an :class:`OpenAIProviderConfig` or a provider into a provider."""
    if value is None:
        value = OpenAIProviderConfig()
    if isinstance(value, OpenAIProviderConfig):
        return cast(BatchProvider, DeferredOpenAIProvider(value))
    required = ("create_batch", "get_batch", "upload_file", "parse_line", "shape_body")
    if all(hasattr(value, name) for name in required):
        return value  # type: ignore[no-any-return]
    raise ConfigurationError(
        f"provider must be an OpenAIProviderConfig or a BatchProvider, got {type(value).__name__}"
    )


class DeferredOpenAIProvider:
    """The OpenAI provider for a config, built on first use.

    Building it imports the openai SDK (about a second), which a runner that only reads
    its store (``batchor status``, a Dagster sensor) never needs. Every attribute but
    ``config``, ``close``, ``price`` and ``enqueue_limit`` (answered from the config) is
    the real :class:`OpenAIBatchProvider`'s.
    """

    def __init__(self, config: OpenAIProviderConfig) -> None:
        self._config = config
        self._provider: OpenAIBatchProvider | None = None
        self._lock = threading.Lock()

    @property
    def config(self) -> OpenAIProviderConfig:
        """The provider's settings."""
        return self._config

    def __repr__(self) -> str:
        return f"OpenAIBatchProvider(config={self._config!r})"

    def _real(self) -> OpenAIBatchProvider:
        with self._lock:
            if self._provider is None:
                # Importing the SDK builds a few hundred thousand objects, none of them
                # garbage: collecting cycles meanwhile only costs time (see gcpause).
                with gc_paused():
                    from batchor_core.providers.openai import OpenAIBatchProvider

                self._provider = OpenAIBatchProvider(self._config)
            return self._provider

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real(), name)

    # Answered from the config, without the SDK: a status or a sensor shows costs.
    def price(self, model: str) -> tuple[Price | None, str]:
        """The price of ``model`` (config override, else batchor's table) and its source."""
        return configured_price(self._config, model)

    def enqueue_limit(self, model: str) -> int | None:
        """The configured enqueued-token limit of ``model``."""
        return configured_enqueue_limit(self._config, model)

    def close(self) -> None:
        """Close the real provider's HTTP clients, if it was ever built."""
        if self._provider is not None:
            self._provider.close()
