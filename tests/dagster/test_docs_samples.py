"""Every Python sample on the Dagster docs page and in the README's Dagster section runs."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.integration]


def _python_blocks(path: Path, section: str | None = None) -> list[str]:
    text = path.read_text()
    if section is not None:
        start = text.index(section)
        end = text.find("\n## ", start + len(section))
        text = text[start : end if end != -1 else None]
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


SAMPLES = [
    pytest.param(block, id=f"{name}-{k}")
    for name, blocks in (
        ("docs-dagster", _python_blocks(ROOT / "docs" / "dagster.md")),
        ("readme-dagster", _python_blocks(ROOT / "README.md", "## Use with Dagster")),
    )
    for k, block in enumerate(blocks)
]


def test_there_are_samples() -> None:
    assert len(SAMPLES) >= 2


@pytest.mark.parametrize("code", SAMPLES)
def test_sample_runs(code: str, tmp_path: Path) -> None:
    script = tmp_path / "sample.py"
    script.write_text(code)
    env = {**os.environ, "BATCHOR_HOME": str(tmp_path / ".batchor"), "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
