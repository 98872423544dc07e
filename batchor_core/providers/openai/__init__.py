"""The OpenAI Batch API provider: the only part of batchor that imports ``openai``.

No SDK type leaves this package: batches become :class:`~batchor_core.ports.ProviderBatch`,
result lines :class:`~batchor_core.ports.ParsedLine`, and SDK exceptions errors of
:mod:`batchor_core.errors`.

Example:
    >>> from batchor_core.providers.openai import OpenAIBatchProvider, OpenAIProviderConfig
    >>> provider = OpenAIBatchProvider(OpenAIProviderConfig(max_retries=3))
"""

from __future__ import annotations

from batchor_core.providers.openai.config import OpenAIProviderConfig
from batchor_core.providers.openai.provider import OpenAIBatchProvider

__all__ = ["OpenAIBatchProvider", "OpenAIProviderConfig"]
