"""Fixtures for the CLI tests: a working directory wired to an emulator."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture
def cli_env(tmp_path: Path, emulator: Any, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Environment (also applied to this process) pointing the CLI at the emulator and a
    store in ``tmp_path``, which becomes the working directory."""
    env = {
        "OPENAI_BASE_URL": emulator.base_url,
        "OPENAI_API_KEY": "sk-test",
        "BATCHOR_STORE": str(tmp_path / "state" / "batchor.sqlite3"),
        "BATCHOR_ARTIFACTS": str(tmp_path / "state" / "artifacts"),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    return env


@pytest.fixture
def stepwise_emulator() -> Iterator[Any]:
    """An emulator whose batches move one status per poll (so progress has steps)."""
    from batchor_core.testing import OpenAIEmulator

    with OpenAIEmulator(processing="stepwise", seed=3, in_progress_polls=2) as emu:
        yield emu
