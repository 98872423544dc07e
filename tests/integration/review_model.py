"""Output models shared by the integration tests and their subprocesses."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel


class Sentiment(StrEnum):
    """A closed set the schema turns into an enum."""

    POSITIVE = "positive"
    NEGATIVE = "negative"
    NEUTRAL = "neutral"


class Aspect(BaseModel):
    """A nested object."""

    name: str
    score: int


class Review(BaseModel):
    """Typed output with an optional field, a nested list and an enum."""

    sentiment: Sentiment
    summary: str
    complaint: str | None
    aspects: list[Aspect]
