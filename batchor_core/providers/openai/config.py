"""Settings for the OpenAI batch provider.

The API key is a secret: it is never part of ``repr()`` / ``str()`` and never put into
an error message, so configs can be logged and shown in tracebacks safely.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass

from batchor_core.errors import ConfigurationError
from batchor_core.models import EnqueueLimit, Price
from batchor_core.pricing import price_for

__all__ = ["OpenAIProviderConfig", "configured_enqueue_limit", "configured_price"]

API_KEY_ENV = "OPENAI_API_KEY"
BASE_URL_ENV = "OPENAI_BASE_URL"


@dataclass(frozen=True, repr=False)
class OpenAIProviderConfig:
    """How to reach the OpenAI API.

    Environment variables are read when the client is first needed, not when the config
    is built, so a config can be created before the key is available.

    Attributes:
        api_key: The API key; None reads ``OPENAI_API_KEY``. Never shown by ``repr()``.
        base_url: API root such as ``https://api.openai.com/v1``; None reads
            ``OPENAI_BASE_URL``, else the SDK's default.
        organization: OpenAI organization id, if the key belongs to several.
        project: OpenAI project id.
        timeout_seconds: Per-operation network timeout (connect, each read, each write).
        max_retries: SDK retries for calls that are safe to repeat (reads, uploads,
            deletes). 0 by default: the runner retries on its own schedule (honouring
            Retry-After, however long) so that ``Run.refresh()`` never sleeps inside the
            SDK. Batch creation never retries inside the SDK: an ambiguous failure is
            surfaced so the runner can reconcile it.
        enqueue_limits: Enqueued-token limit per model (your organisation's tier), shared
            by every run in the same store (see :class:`EnqueueLimit`).
        prices: Prices per model that override (or add to) batchor's price table.
    """

    api_key: str | None = None
    base_url: str | None = None
    organization: str | None = None
    project: str | None = None
    timeout_seconds: float = 60.0
    max_retries: int = 0
    enqueue_limits: Mapping[str, EnqueueLimit] | None = None
    prices: Mapping[str, Price] | None = None

    def __post_init__(self) -> None:
        for model, limit in (self.enqueue_limits or {}).items():
            if not isinstance(limit, EnqueueLimit):
                raise ConfigurationError(
                    f"OpenAIProviderConfig.enqueue_limits[{model!r}] must be an EnqueueLimit"
                )
        for model, price in (self.prices or {}).items():
            if not isinstance(price, Price):
                raise ConfigurationError(f"OpenAIProviderConfig.prices[{model!r}] must be a Price")
        if not (math.isfinite(self.timeout_seconds) and self.timeout_seconds > 0):
            raise ConfigurationError(
                "OpenAIProviderConfig.timeout_seconds must be a positive number of seconds"
            )
        if self.max_retries < 0:
            raise ConfigurationError("OpenAIProviderConfig.max_retries must be 0 or more")
        if self.base_url is not None:
            self.resolved_base_url()  # a malformed URL fails here, not on every call

    def resolved_api_key(self) -> str:
        """The API key to use: ``api_key``, else ``OPENAI_API_KEY``.

        Raises:
            ConfigurationError: Neither is set (or both are empty).
        """
        key = self.api_key or os.environ.get(API_KEY_ENV)
        if not key:
            raise ConfigurationError(
                "No OpenAI API key: pass OpenAIProviderConfig(api_key=...) or set OPENAI_API_KEY"
            )
        return key

    def resolved_base_url(self) -> str | None:
        """The API root to use: ``base_url``, else ``OPENAI_BASE_URL``, else None (SDK default).

        Raises:
            ConfigurationError: It is not an ``http://`` or ``https://`` URL (every call
                would fail as if the network were down, retried for the transient budget).
        """
        url = self.base_url or os.environ.get(BASE_URL_ENV) or None
        if url is not None and not _is_http_url(url):
            where = "OpenAIProviderConfig.base_url" if self.base_url else BASE_URL_ENV
            raise ConfigurationError(
                f"{where} must be an http:// or https:// URL such as "
                f"https://api.openai.com/v1, not {url[:100]!r}"
            )
        return url

    def __repr__(self) -> str:
        # Written by hand so the key can never leak through logs or tracebacks.
        key = "<set>" if self.api_key else None
        return (
            f"OpenAIProviderConfig(api_key={key!s}, base_url={self.base_url!r}, "
            f"organization={self.organization!r}, project={self.project!r}, "
            f"timeout_seconds={self.timeout_seconds!r}, max_retries={self.max_retries!r}, "
            f"enqueue_limits={self.enqueue_limits!r}, prices={self.prices!r})"
        )

    __str__ = __repr__


def _is_http_url(url: str) -> bool:
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.netloc)


# What the provider answers from its config alone: no SDK needed (a runner that only
# reads its store, such as ``batchor status`` or a Dagster sensor, shows costs with these).
def configured_enqueue_limit(config: OpenAIProviderConfig, model: str) -> int | None:
    """The configured enqueued-token limit of ``model`` (see ``enqueue_limits``)."""
    limit = (config.enqueue_limits or {}).get(model)
    return None if limit is None else limit.tokens


def configured_price(config: OpenAIProviderConfig, model: str) -> tuple[Price | None, str]:
    """The price of ``model`` (config override, else batchor's table) and its source."""
    return price_for(model, config.prices)
