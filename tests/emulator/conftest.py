"""Fixtures for the emulator tests: emulators in both modes and SDK clients."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from openai import OpenAI

from batchor_core.testing import OpenAIEmulator


@pytest.fixture
def emu() -> Iterator[OpenAIEmulator]:
    """An instant-mode emulator on a random port."""
    with OpenAIEmulator(processing="instant", seed=0) as emulator:
        yield emulator


@pytest.fixture
def stepwise() -> Iterator[OpenAIEmulator]:
    """A stepwise emulator (one step per retrieve, one in_progress poll)."""
    with OpenAIEmulator(processing="stepwise", seed=0) as emulator:
        yield emulator


def make_client(emulator: OpenAIEmulator) -> OpenAI:
    """The real SDK pointed at the emulator, without retries."""
    return OpenAI(api_key="sk-test", base_url=emulator.base_url, max_retries=0)


@pytest.fixture
def client(emu: OpenAIEmulator) -> Iterator[OpenAI]:
    """An SDK client for :func:`emu`."""
    with make_client(emu) as sdk:
        yield sdk


@pytest.fixture
def step_client(stepwise: OpenAIEmulator) -> Iterator[OpenAI]:
    """An SDK client for :func:`stepwise`."""
    with make_client(stepwise) as sdk:
        yield sdk
