"""The OpenAI Batch API provider: the only part of batchor that imports ``openai``.

No SDK type leaves this package: batches become :class:`~batchor_core.ports.ProviderBatch`,
result lines :class:`~batchor_core.ports.ParsedLine`, and SDK exceptions errors of
:mod:`batchor_core.errors`.

Example:
    >>> from batchor_core.providers.openai import OpenAIBatchProvider, OpenAIProviderConfig
    >>> provider = OpenAIBatchProvider(OpenAIProviderConfig(max_retries=3))
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from batchor_core.providers.openai.config import OpenAIProviderConfig

if TYPE_CHECKING:
    from batchor_core.providers.openai.provider import OpenAIBatchProvider

__all__ = ["OpenAIBatchProvider", "OpenAIProviderConfig"]


def __getattr__(name: str) -> object:
    # The SDK (about 1 s of imports) loads when the provider is first used.
    if name != "OpenAIBatchProvider":
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from batchor_core.providers.openai.provider import OpenAIBatchProvider

    globals()[name] = OpenAIBatchProvider
    return OpenAIBatchProvider


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
