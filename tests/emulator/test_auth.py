"""Authentication: a bearer token is required; a configured key must match."""

from __future__ import annotations

import openai
import pytest

from batchor_core.testing import OpenAIEmulator

from .helpers import raw_request

pytestmark = pytest.mark.integration


def test_missing_authorization_is_401(emu: OpenAIEmulator) -> None:
    status, headers, body = raw_request(emu, "GET", "/v1/batches", token=None)
    assert status == 401
    assert body["error"]["type"] == "invalid_request_error"
    assert "API key" in body["error"]["message"]
    assert headers["x-request-id"].startswith("req_")


def test_any_bearer_is_accepted_without_a_configured_key(emu: OpenAIEmulator) -> None:
    assert raw_request(emu, "GET", "/v1/batches", token="whatever")[0] == 200


def test_configured_key_must_match() -> None:
    with OpenAIEmulator(api_key="sk-right") as emu:
        wrong = openai.OpenAI(api_key="sk-wrong-key", base_url=emu.base_url, max_retries=0)
        with wrong as sdk, pytest.raises(openai.AuthenticationError) as caught:
            sdk.batches.list()
        assert caught.value.code == "invalid_api_key"
        assert "sk-right" not in caught.value.message
        with openai.OpenAI(api_key="sk-right", base_url=emu.base_url, max_retries=0) as sdk:
            assert sdk.batches.list().data == []


def test_401_keeps_the_connection_usable_after_an_upload_body(emu: OpenAIEmulator) -> None:
    with openai.OpenAI(api_key="sk-test", base_url=emu.base_url, max_retries=0) as sdk:
        emu.faults.http_error(method="POST", path="/v1/files", status=500)
        with pytest.raises(openai.InternalServerError):
            sdk.files.create(file=("a.jsonl", b"x" * 200_000), purpose="batch")
        # Same pooled connection: the unread upload body must have been drained.
        assert sdk.files.list().data == []
