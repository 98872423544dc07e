"""The SDK's optional aiohttp transport stays unloaded until someone builds an aiohttp client.

aiohttp (installed with s3fs) would otherwise cost every run about 9 MB of memory through
``import openai``. Each check runs in a fresh interpreter so other tests' imports don't count.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("aiohttp") is None, reason="aiohttp is not installed"
)


def _run(code: str) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True
    ).stdout
    result: dict[str, object] = json.loads(out.splitlines()[-1])
    return result


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
