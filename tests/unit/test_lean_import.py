"""`import batchor_core` must not pull in the heavy libraries: they load where first used.

A CLI call, a Dagster code location and every worker subprocess pay this import, so the
SDK (openai), the store (SQLAlchemy), object storage (fsspec, s3fs, ...), Arrow, pandas,
Dagster, Alembic and the CLI's libraries stay out of it. Runs in a fresh interpreter so
other tests' imports don't count.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = (
    "adlfs",
    "aiobotocore",
    "alembic",
    "boto3",
    "botocore",
    "dagster",
    "fsspec",
    "gcsfs",
    "httpx",
    "httpx2",
    "numpy",
    "openai",
    "pandas",
    "psycopg",
    "pyarrow",
    "rich",
    "s3fs",
    "sqlalchemy",
    "tiktoken",
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


def test_a_runner_from_a_provider_config_loads_the_sdk_only_when_it_is_used(
    tmp_path: Path,
) -> None:
    loaded = _loaded_after(
        "from batchor_core import BatchRunner, MemoryStateStore, LocalArtifactStore\n"
        "from batchor_core import OpenAIProviderConfig\n"
        f"artifacts = LocalArtifactStore({str(tmp_path)!r})\n"
        "runner = BatchRunner(storage=MemoryStateStore(), artifacts=artifacts,\n"
        "    provider=OpenAIProviderConfig(api_key='sk-x', base_url='http://127.0.0.1:9/v1'))\n"
        "assert 'sk-x' not in repr(runner.provider)\n"
        "runner.close()"
    )
    assert "openai" not in loaded
    used = _loaded_after(
        "from batchor_core import BatchRunner, MemoryStateStore, OpenAIProviderConfig\n"
        "runner = BatchRunner(storage=MemoryStateStore(),\n"
        "    provider=OpenAIProviderConfig(api_key='sk-x', base_url='http://127.0.0.1:9/v1'))\n"
        "assert runner.provider.config.max_retries >= 0\n"
        "runner.provider.preflight()\n"
        "runner.close()"
    )
    assert "openai" in used


def test_costs_and_limits_of_a_provider_config_need_no_sdk() -> None:
    """A status (CLI or Dagster sensor) shows a run's cost: its price comes from the config,
    and must not import the SDK (a second per `batchor status`)."""
    from batchor_core import EnqueueLimit, OpenAIProviderConfig, Price
    from batchor_core.defaults import as_provider

    loaded = _loaded_after(
        "from batchor_core import BatchRunner, MemoryStateStore, OpenAIProviderConfig\n"
        "from batchor_core import EnqueueLimit, Price\n"
        "config = OpenAIProviderConfig(api_key='sk-x',\n"
        "    prices={'m': Price(input=1.0, output=2.0)},\n"
        "    enqueue_limits={'m': EnqueueLimit(tokens=5)})\n"
        "runner = BatchRunner(storage=MemoryStateStore(), provider=config)\n"
        "assert runner.provider.price('m')[0].input == 1.0\n"
        "assert runner.provider.price('gpt-4o-mini')[0] is not None\n"
        "assert runner.provider.enqueue_limit('m') == 5\n"
        "runner.close()"
    )
    assert "openai" not in loaded
    # The same answers as the real provider's.
    config = OpenAIProviderConfig(
        api_key="sk-x",
        prices={"m": Price(input=1.0, output=2.0)},
        enqueue_limits={"m": EnqueueLimit(tokens=5)},
    )
    deferred = as_provider(config)
    real = deferred._real()  # type: ignore[attr-defined]
    for model in ("m", "gpt-4o-mini", "no-such-model"):
        assert deferred.price(model) == real.price(model)
        assert deferred.enqueue_limit(model) == real.enqueue_limit(model)
