"""Model prices, and what a run costs.

The table holds OpenAI's standard (non-batch) rates in USD per one million tokens,
transcribed by hand from the public pricing page (openai.com/api/pricing) on
:data:`PRICES_TAKEN_ON`; Batch API requests cost half (``Price.batch_discount = 0.5``).
Prices change: check the page, and override any model (or add one) with
``OpenAIProviderConfig(prices={"my-model": Price(input=..., output=...)})``. A model
that is in neither gets no cost at all (None, with a note saying so), never a guess: a
dated snapshot name is matched only when listed here, because snapshots of one model
have been priced differently.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from batchor_core.models import Price, Usage

__all__ = ["PRICES", "PRICES_SOURCE", "PRICES_TAKEN_ON", "cost_of", "format_usd", "price_for"]

PRICES_TAKEN_ON = "2025-08-07"
"""The date the table was transcribed."""

PRICES_SOURCE = "https://openai.com/api/pricing (standard tier, text tokens)"
"""Where the table was transcribed from."""

_GPT_4O = Price(input=2.50, cached_input=1.25, output=10.00)
_GPT_4O_MINI = Price(input=0.15, cached_input=0.075, output=0.60)
_GPT_41 = Price(input=2.00, cached_input=0.50, output=8.00)
_GPT_41_MINI = Price(input=0.40, cached_input=0.10, output=1.60)
_GPT_41_NANO = Price(input=0.10, cached_input=0.025, output=0.40)
_GPT_5 = Price(input=1.25, cached_input=0.125, output=10.00)
_GPT_5_MINI = Price(input=0.25, cached_input=0.025, output=2.00)
_GPT_5_NANO = Price(input=0.05, cached_input=0.005, output=0.40)

PRICES: Mapping[str, Price] = {
    "gpt-4o": _GPT_4O,
    "gpt-4o-2024-08-06": _GPT_4O,
    "gpt-4o-2024-11-20": _GPT_4O,
    "gpt-4o-mini": _GPT_4O_MINI,
    "gpt-4o-mini-2024-07-18": _GPT_4O_MINI,
    "gpt-4.1": _GPT_41,
    "gpt-4.1-2025-04-14": _GPT_41,
    "gpt-4.1-mini": _GPT_41_MINI,
    "gpt-4.1-mini-2025-04-14": _GPT_41_MINI,
    "gpt-4.1-nano": _GPT_41_NANO,
    "gpt-4.1-nano-2025-04-14": _GPT_41_NANO,
    "gpt-5": _GPT_5,
    "gpt-5-2025-08-07": _GPT_5,
    "gpt-5-mini": _GPT_5_MINI,
    "gpt-5-mini-2025-08-07": _GPT_5_MINI,
    "gpt-5-nano": _GPT_5_NANO,
    "gpt-5-nano-2025-08-07": _GPT_5_NANO,
    "o3": Price(input=2.00, cached_input=0.50, output=8.00),
    "o4-mini": Price(input=1.10, cached_input=0.275, output=4.40),
    "o3-mini": Price(input=1.10, cached_input=0.55, output=4.40),
}
"""Standard rates per model (USD per 1M tokens), as of :data:`PRICES_TAKEN_ON`."""


def price_for(model: str, overrides: Mapping[str, Price] | None = None) -> tuple[Price | None, str]:
    """The price of ``model`` and a note saying where it came from (or why there is none)."""
    if overrides and model in overrides:
        return overrides[model], f"price of {model} given in the provider config"
    if model in PRICES:
        return PRICES[model], f"price of {model} from batchor's table of {PRICES_TAKEN_ON}"
    return None, (
        f"no price known for model {model!r}: cost is not computed; pass "
        f"OpenAIProviderConfig(prices={{{model!r}: Price(input=..., output=...)}})"
    )


def cost_of(usage: Usage, price: Price | None) -> float | None:
    """The batch cost of ``usage`` in USD, or None without a price."""
    return None if price is None else round(price.cost(usage), 10)


def format_usd(amount: float) -> str:
    """``amount`` in USD for people: cents to 4 decimals, smaller sums to 3 significant
    digits (a batch of a few requests costs fractions of a cent; rounding those to
    ``0.0000`` would hide the very numbers a cost cap's reason is there to give)."""
    if amount == 0:
        return "0"
    if not math.isfinite(amount) or abs(amount) >= 0.01:
        return f"{amount:.4f}"
    digits = 2 - math.floor(math.log10(abs(amount)))
    return f"{amount:.{digits}f}".rstrip("0")
