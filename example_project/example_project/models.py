"""The structured output each review is classified into."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, Field


class Sentiment(StrEnum):
    """How the reviewer feels."""

    POSITIVE = "positive"
    NEUTRAL = "neutral"
    NEGATIVE = "negative"


class Topic(StrEnum):
    """What the review is mostly about."""

    QUALITY = "quality"
    DELIVERY = "delivery"
    PRICE = "price"
    SUPPORT = "support"
    OTHER = "other"


class ReviewLabel(BaseModel):
    """One review, classified."""

    sentiment: Sentiment
    topic: Topic
    complaint: bool = Field(description="Whether the reviewer reports a problem to fix.")
