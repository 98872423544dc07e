"""The sources package: its public names and the layers it may import."""

from __future__ import annotations

import ast
from pathlib import Path

import batchor_core.sources as sources
from batchor_core.ports import ItemSource

PACKAGE = Path(sources.__file__).parent
ALLOWED = {"batchor_core.models", "batchor_core.ports", "batchor_core.errors"}


def test_public_names_are_pinned() -> None:
    assert sources.__all__ == [
        "CsvSource",
        "JsonlSource",
        "MultiSource",
        "ParquetSource",
        "describe_identity_change",
    ]
    for name in sources.__all__:
        assert getattr(sources, name).__doc__


def test_sources_import_only_models_ports_and_errors() -> None:
    for module in sorted(PACKAGE.glob("*.py")):
        tree = ast.parse(module.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            else:
                continue
            for name in names:
                if name.startswith("batchor_core"):
                    assert name in ALLOWED or name.startswith("batchor_core.sources"), (
                        f"{module.name} imports {name}"
                    )
                assert not name.startswith(("openai", "sqlalchemy", "dagster")), module.name


def test_every_source_implements_the_port(tmp_path: Path) -> None:
    path = tmp_path / "a.csv"
    path.write_text("id\n1\n")
    implementations: list[ItemSource] = [
        sources.CsvSource(path),
        sources.JsonlSource(path),
        sources.ParquetSource(path),
        sources.MultiSource([sources.CsvSource(path)]),
    ]
    for source in implementations:
        assert callable(source.identity)
        assert callable(source.read_slices)
