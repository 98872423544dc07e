"""`import batchor_core` must not pull in the heavy libraries: they load where first used.

A CLI call, a Dagster code location and every worker subprocess pay this import, so the
SDK (openai), the store (SQLAlchemy), Arrow, pandas, Dagster, Alembic and the CLI's
libraries stay out of it. Runs in a fresh interpreter so other tests' imports don't count.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = (
    "alembic",
    "dagster",
    "httpx",
    "httpx2",
    "numpy",
    "openai",
    "pandas",
    "psycopg",
    "pyarrow",
    "rich",
    "sqlalchemy",
    "typer",
)


def _loaded_after(code: str) -> set[str]:
    probe = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run(
        [sys.executable, "-c", probe], check=True, capture_output=True, text=True
    ).stdout
    return {name.split(".")[0] for name in json.loads(out.splitlines()[-1])}


def test_import_batchor_core_loads_no_heavy_library() -> None:
    loaded = _loaded_after("import batchor_core")
    assert sorted(loaded & set(HEAVY)) == []


def test_public_names_still_resolve_and_load_their_library_on_first_use() -> None:
    loaded = _loaded_after(
        "import batchor_core\n"
        "from batchor_core import SQLiteStorage, OpenAIBatchProvider\n"
        "assert SQLiteStorage.__name__ == 'SQLiteStorage'\n"
        "assert OpenAIBatchProvider.__name__ == 'OpenAIBatchProvider'\n"
        "assert set(batchor_core.__all__) <= set(dir(batchor_core))"
    )
    assert {"sqlalchemy", "openai"} <= loaded


@pytest.mark.parametrize(
    "module", ["batchor_core.storage", "batchor_core.providers", "batchor_core.cli"]
)
def test_subpackages_import_lean_too(module: str) -> None:
    loaded = _loaded_after(f"import {module}")
    assert sorted(loaded & set(HEAVY)) == []


def test_unknown_name_is_still_an_attribute_error() -> None:
    import batchor_core

    with pytest.raises(AttributeError):
        _ = batchor_core.NoSuchThing  # type: ignore[attr-defined]
