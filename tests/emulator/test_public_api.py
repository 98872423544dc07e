"""The public surface of ``batchor_core.testing`` is pinned."""

from __future__ import annotations

import ast
from pathlib import Path

import batchor_core.testing
import batchor_core.testing.emulator
import batchor_core.testing.fakes

EXPECTED = {"FaultPlan", "LineFaultKind", "LineFaultRule", "OpenAIEmulator", "ProcessingMode"}
EXPECTED_FAKES = {"FakeBatchProvider"}


def test_testing_all_is_pinned() -> None:
    assert set(batchor_core.testing.__all__) == EXPECTED | EXPECTED_FAKES
    assert batchor_core.testing.__all__ == sorted(batchor_core.testing.__all__)
    for name in EXPECTED:
        assert getattr(batchor_core.testing, name) is getattr(batchor_core.testing.emulator, name)
    for name in EXPECTED_FAKES:
        assert getattr(batchor_core.testing, name) is getattr(batchor_core.testing.fakes, name)


def test_emulator_uses_only_the_standard_library() -> None:
    package = Path(batchor_core.testing.__file__).parent
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                roots = {node.module.split(".")[0]}
            else:
                continue
            assert not roots & {"openai", "httpx", "httpx2", "pydantic", "sqlalchemy"}, path


def test_modules_stay_small() -> None:
    package = Path(batchor_core.testing.__file__).parent
    for path in package.rglob("*.py"):
        assert len(path.read_text().splitlines()) <= 450, path
