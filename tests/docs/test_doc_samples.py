"""Every Python sample in README.md and docs/ runs, so the documentation cannot rot.

Fenced ```python blocks are executed in page order in one namespace per page (later
blocks build on earlier ones, as a reader would), in a fresh working directory, with
OPENAI_BASE_URL / OPENAI_API_KEY pointing at the bundled emulator. A block preceded by an
HTML comment starting with ``<!-- skip`` is not run (keep that rare: it is for samples
that need outside services, such as a Postgres server).

The working directory holds the files the README's samples read: ``reviews.csv``
(``id,text``) and ``data/*.jsonl`` (``{"id", "text"}`` per line).

The ```bash block after ``<!-- cli-sample -->`` in docs/cli.md is run too: ``batchor``
lines in-process (``# exit N`` states a non-zero exit code), other lines with bash.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from batchor_core import BatchRunner

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(\w*)(.*)$")

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class Block:
    """One fenced code block."""

    path: Path
    line: int  # 1-based line of the first code line
    lang: str
    code: str
    marker: str  # the HTML comment right before the fence, or ""


def blocks(path: Path) -> list[Block]:
    """The fenced blocks of a Markdown file, in order."""
    lines = path.read_text(encoding="utf-8").splitlines()
    found: list[Block] = []
    i = 0
    previous = ""
    while i < len(lines):
        match = FENCE.match(lines[i])
        if match is None:
            if lines[i].strip():
                previous = lines[i].strip()
            i += 1
            continue
        end = i + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        marker = previous if previous.startswith("<!--") else ""
        code = "\n".join(lines[i + 1 : end]) + "\n"
        found.append(Block(path, i + 2, match.group(1), code, marker))
        previous = ""
        i = end + 1
    return found


def _python_pages() -> list[Path]:
    return [p for p in PAGES if any(b.lang == "python" for b in blocks(p))]


@pytest.fixture
def workdir(tmp_path: Path, emulator: object, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OPENAI_BASE_URL", emulator.base_url)  # type: ignore[attr-defined]
    monkeypatch.setenv("OPENAI_API_KEY", "sk-docs")
    for name in ("BATCHOR_HOME", "BATCHOR_STORE", "BATCHOR_ARTIFACTS"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / "reviews.csv").write_text(
        "id,text\nrev-1,great value\nrev-2,broke after a week\nrev-3,does the job\n"
    )
    (tmp_path / "data").mkdir()
    for part in ("a", "b"):
        rows = [{"id": f"{part}-{n}", "text": f"note {n}"} for n in range(3)]
        (tmp_path / "data" / f"{part}.jsonl").write_text(
            "".join(json.dumps(r) + "\n" for r in rows)
        )
    yield tmp_path


def test_samples_are_found() -> None:
    pages = {p.name for p in _python_pages()}
    assert {"README.md", "index.md", "use-cases.md", "python-api.md", "storage.md"} <= pages
    assert any(b.marker.startswith("<!-- cli-sample") for b in blocks(ROOT / "docs" / "cli.md"))


@pytest.mark.parametrize("page", _python_pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_python_samples_run(page: Path, workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A real module, as a reader's script would be (pydantic resolves annotations there).
    module = types.ModuleType("docs_sample")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    try:
        for block in blocks(page):
            if block.lang != "python" or block.marker.startswith("<!-- skip"):
                continue
            where = f"{page.relative_to(ROOT)}:{block.line}"
            # dont_inherit: this file's `from __future__ import annotations` must not leak in
            exec(compile(block.code, where, "exec", dont_inherit=True), module.__dict__)
    finally:
        for value in list(module.__dict__.values()):
            if isinstance(value, BatchRunner):
                value.close()


def test_cli_session_runs(workdir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from batchor_core.cli.app import run as cli

    (sample,) = [
        b for b in blocks(ROOT / "docs" / "cli.md") if b.marker.startswith("<!-- cli-sample")
    ]
    for command in sample.code.replace("\\\n", " ").splitlines():
        if not command.strip():
            continue
        if not command.startswith("batchor "):
            subprocess.run(["bash", "-c", command], cwd=workdir, check=True)
            continue
        expected = re.search(r"#\s*exit (\d+)\s*$", command)
        code = cli(shlex.split(command, comments=True)[1:])
        assert code == (int(expected.group(1)) if expected else 0), (command, capsys.readouterr())
    assert (workdir / "reviews-1.parquet").exists()
