"""Batch providers: implementations of :class:`~batchor_core.ports.BatchProvider`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from batchor_core.providers.openai.config import OpenAIProviderConfig

if TYPE_CHECKING:
    from batchor_core.providers.openai import OpenAIBatchProvider

__all__ = ["OpenAIBatchProvider", "OpenAIProviderConfig"]


def __getattr__(name: str) -> object:
    if name != "OpenAIBatchProvider":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from batchor_core.providers.openai import OpenAIBatchProvider

    globals()[name] = OpenAIBatchProvider
    return OpenAIBatchProvider
