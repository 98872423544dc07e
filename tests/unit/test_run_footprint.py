"""A run loads only what it uses: module imports are most of a run's memory.

The SDK's optional aiohttp transport (installed with s3fs) stays unloaded until someone
builds an aiohttp client: through ``import openai`` it cost every run about 9 MB. A SQLite
store never loads SQLAlchemy's Postgres dialect (2 MB). Each check runs in a fresh
interpreter so other tests' imports don't count.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

needs_aiohttp = pytest.mark.skipif(
    importlib.util.find_spec("aiohttp") is None, reason="aiohttp is not installed"
)


def _run(code: str) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout
    result: dict[str, object] = json.loads(out.splitlines()[-1])
    return result


@needs_aiohttp
def test_loading_the_provider_and_the_sdk_does_not_import_aiohttp() -> None:
    result = _run(
        "import json, sys\n"
        "from batchor_core.providers.openai.provider import OpenAIBatchProvider\n"
        "import openai\n"
        "print(json.dumps({'aiohttp': 'aiohttp' in sys.modules,\n"
        "                  'client': openai.DefaultAioHttpClient.__name__}))"
    )
    # The SDK still saw aiohttp as installed (not its "missing extra" stand-in).
    assert result == {"aiohttp": False, "client": "_InstalledAioHttpClient"}


@needs_aiohttp
def test_the_sdks_aiohttp_client_still_works_in_the_same_process() -> None:
    result = _run(
        "import asyncio, json, sys\n"
        "import batchor_core.providers.openai.provider\n"
        "import openai\n"
        "from openai._vendor import httpx_aiohttp\n"
        "async def build():\n"
        "    client = openai.DefaultAioHttpClient()\n"
        "    name = type(client._transport).__name__\n"
        "    await client.aclose()\n"
        "    return name\n"
        "transport = asyncio.run(build())\n"
        "print(json.dumps({'transport': transport, 'aiohttp': 'aiohttp' in sys.modules,\n"
        "                  'exported': httpx_aiohttp.AiohttpTransport.__name__}))"
    )
    assert result == {
        "transport": "AiohttpTransport",
        "aiohttp": True,
        "exported": "AiohttpTransport",
    }


def test_a_sqlite_store_does_not_load_the_postgres_dialect(tmp_path: Path) -> None:
    result = _run(
        "import json, sys\n"
        "from batchor_core import SQLiteStorage\n"
        f"store = SQLiteStorage({str(tmp_path / 'runs.sqlite3')!r})\n"
        "ids = store.list_run_ids()\n"
        "store.close()\n"
        "print(json.dumps({'ids': ids,\n"
        "                  'postgres': 'sqlalchemy.dialects.postgresql' in sys.modules}))"
    )
    assert result == {"ids": [], "postgres": False}
