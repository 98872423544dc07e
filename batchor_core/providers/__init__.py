"""Batch providers: implementations of :class:`~batchor_core.ports.BatchProvider`."""

from __future__ import annotations

from batchor_core.providers.openai import OpenAIBatchProvider, OpenAIProviderConfig

__all__ = ["OpenAIBatchProvider", "OpenAIProviderConfig"]
