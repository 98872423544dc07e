"""The provider with the real SDK against ``batchor_core.testing.OpenAIEmulator``.

End to end: bodies shaped by the provider are processed by the emulator, and the output
and error files it writes are parsed back by the provider.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from enum import Enum

import pytest
from pydantic import BaseModel

from batchor_core.errors import ProviderError, RateLimitedError
from batchor_core.ports import ParsedLine, RequestSpec
from batchor_core.providers import OpenAIBatchProvider, OpenAIProviderConfig
from batchor_core.testing import OpenAIEmulator

pytestmark = pytest.mark.integration

SECRET = "sk-emulator-SECRET-abcdef0123456789"
CHAT = "/v1/chat/completions"
RESPONSES = "/v1/responses"


class Color(Enum):
    RED = "red"
    GREEN = "green"


class Part(BaseModel):
    name: str
    count: int


class Answer(BaseModel):
    title: str
    note: str | None
    color: Color
    parts: list[Part]


@pytest.fixture
def emu() -> Iterator[OpenAIEmulator]:
    with OpenAIEmulator(processing="instant", seed=1, api_key=SECRET) as server:
        yield server


@pytest.fixture
def provider(emu: OpenAIEmulator) -> Iterator[OpenAIBatchProvider]:
    config = OpenAIProviderConfig(
        api_key=SECRET, base_url=emu.base_url, max_retries=0, timeout_seconds=10
    )
    with OpenAIBatchProvider(config) as p:
        yield p


def request_file(
    provider: OpenAIBatchProvider, endpoint: str, prompts: dict[str, str]
) -> io.BytesIO:
    name, schema = provider.output_schema(Answer)
    spec = RequestSpec(
        model="gpt-test",
        endpoint=endpoint,
        request_options={"temperature": 0},
        output_schema=schema,
        output_name=name,
    )
    lines = []
    for custom_id, prompt in prompts.items():
        body: dict[str, object] = (
            {"messages": [{"role": "user", "content": prompt}]}
            if endpoint == CHAT
            else {"input": prompt}
        )
        shaped = provider.shape_body(spec, body)
        line = {"custom_id": custom_id, "method": "POST", "url": endpoint, "body": shaped}
        lines.append(json.dumps(line))
    return io.BytesIO(("\n".join(lines) + "\n").encode())


def collect(provider: OpenAIBatchProvider, endpoint: str, file_id: str | None) -> list[ParsedLine]:
    if file_id is None:
        return []
    data = b"".join(provider.download_file(file_id))
    return [provider.parse_line(endpoint, raw) for raw in data.splitlines() if raw]


def run_batch(
    provider: OpenAIBatchProvider, endpoint: str, prompts: dict[str, str], **metadata: str
) -> dict[str, ParsedLine]:
    file_id = provider.upload_file(request_file(provider, endpoint, prompts), filename="in.jsonl")
    created = provider.create_batch(
        file_id=file_id, endpoint=endpoint, completion_window="24h", metadata=metadata
    )
    batch = provider.get_batch(created.batch_id)
    assert batch.is_terminal
    parsed = collect(provider, endpoint, batch.output_file_id)
    parsed += collect(provider, endpoint, batch.error_file_id)
    return {p.custom_id: p for p in parsed}


@pytest.mark.parametrize("endpoint", [CHAT, RESPONSES])
def test_round_trip_with_structured_output(
    emu: OpenAIEmulator, provider: OpenAIBatchProvider, endpoint: str
) -> None:
    prompts = {f"item-{n}": f"describe thing {n}" for n in range(20)}
    results = run_batch(provider, endpoint, prompts, run="r1", chunk="c1")
    assert set(results) == set(prompts)
    for parsed in results.values():
        assert parsed.error is None
        assert parsed.text is not None
        Answer.model_validate_json(parsed.text)  # the schema we sent was honoured
        assert parsed.usage is not None
        assert parsed.usage.input_tokens > 0

    [found] = provider.find_batches({"run": "r1", "chunk": "c1"})
    assert found.status == "completed"
    assert (found.total, found.completed, found.failed) == (20, 20, 0)
    assert provider.find_batches({"run": "r1", "chunk": "nope"}) == []

    for stored in emu.files():
        provider.delete_file(stored["id"])
    assert emu.files() == []
    provider.delete_file("file-gone")  # missing: not an error


@pytest.mark.parametrize("endpoint", [CHAT, RESPONSES])
def test_line_faults_become_item_errors(
    emu: OpenAIEmulator, provider: OpenAIBatchProvider, endpoint: str
) -> None:
    emu.faults.line_fault(contains="REFUSE", kind="refusal")
    emu.faults.line_fault(contains="CUT", kind="length")
    emu.faults.line_fault(contains="BAD", kind="error")
    emu.faults.line_fault(contains="BROKEN", kind="server_error")
    prompts = {"ok": "fine", "r": "REFUSE", "l": "CUT", "b": "BAD", "s": "BROKEN"}
    results = run_batch(provider, endpoint, prompts)
    codes = {cid: p.error.code if p.error else None for cid, p in results.items()}
    assert codes == {
        "ok": None,
        "r": "refusal",
        "l": "length",
        "b": "http_400",
        "s": "http_500",
    }


def test_expired_batch_lines_keep_batch_expired(
    emu: OpenAIEmulator, provider: OpenAIBatchProvider
) -> None:
    emu.faults.expire_batch(completed_fraction=0.5)
    results = run_batch(provider, CHAT, {f"i{n}": "x" for n in range(10)})
    codes = [p.error.code for p in results.values() if p.error]
    assert codes
    assert set(codes) == {"batch_expired"}
    assert len(results) == 10


def test_failed_batch_errors_are_translated(
    emu: OpenAIEmulator, provider: OpenAIBatchProvider
) -> None:
    emu.faults.fail_batch(code="token_limit_exceeded", message="Enqueued token limit reached")
    file_id = provider.upload_file(request_file(provider, CHAT, {"a": "x"}), filename="in.jsonl")
    created = provider.create_batch(
        file_id=file_id, endpoint=CHAT, completion_window="24h", metadata={}
    )
    batch = provider.get_batch(created.batch_id)
    assert batch.status == "failed"
    assert [e.code for e in batch.errors] == ["token_limit_exceeded"]
    assert batch.errors[0].message.startswith("Enqueued token limit reached")


def test_cancel(emu: OpenAIEmulator, provider: OpenAIBatchProvider) -> None:
    emu.faults.hold_batches()
    file_id = provider.upload_file(request_file(provider, CHAT, {"a": "x"}), filename="in.jsonl")
    created = provider.create_batch(
        file_id=file_id, endpoint=CHAT, completion_window="24h", metadata={}
    )
    cancelled = provider.cancel_batch(created.batch_id)
    assert cancelled.status in ("cancelling", "cancelled")
    assert provider.get_batch(created.batch_id).status in ("cancelling", "cancelled")


def test_rate_limit_retry_after(emu: OpenAIEmulator, provider: OpenAIBatchProvider) -> None:
    emu.faults.http_error(method="POST", path="/v1/batches", status=429, count=1, retry_after=2.0)
    with pytest.raises(RateLimitedError) as info:
        provider.create_batch(file_id="file-x", endpoint=CHAT, completion_window="24h", metadata={})
    assert info.value.retry_after_seconds == 2.0
    assert info.value.retryable is True


def test_server_error_and_dropped_connection(
    emu: OpenAIEmulator, provider: OpenAIBatchProvider
) -> None:
    emu.faults.http_error(method="GET", path="/v1/batches/{id}", status=500)
    with pytest.raises(ProviderError) as info:
        provider.get_batch("batch_1")
    assert (info.value.status_code, info.value.retryable) == (500, True)

    emu.faults.drop_connection(method="GET", path="/v1/batches/{id}")
    with pytest.raises(ProviderError) as info:
        provider.get_batch("batch_1")
    assert (info.value.status_code, info.value.retryable) == (None, True)
    assert "outcome is unknown" in info.value.message


def test_commit_then_drop_is_reconciled_with_find_batches(emu: OpenAIEmulator) -> None:
    emu.faults.commit_then_fail(drop_connection=True)
    config = OpenAIProviderConfig(api_key=SECRET, base_url=emu.base_url, max_retries=2)
    with OpenAIBatchProvider(config) as provider:
        file_id = provider.upload_file(
            request_file(provider, CHAT, {"a": "x"}), filename="in.jsonl"
        )
        with pytest.raises(ProviderError) as info:
            provider.create_batch(
                file_id=file_id, endpoint=CHAT, completion_window="24h", metadata={"run": "r7"}
            )
        assert info.value.retryable is True
        assert emu.batch_create_count == 1  # the SDK did not retry the creation
        [found] = provider.find_batches({"run": "r7"})
        assert found.input_file_id == file_id


def test_wrong_key_is_not_retryable_and_not_leaked(emu: OpenAIEmulator) -> None:
    wrong = "sk-wrong-key-0123456789"
    config = OpenAIProviderConfig(api_key=wrong, base_url=emu.base_url, max_retries=0)
    with OpenAIBatchProvider(config) as provider, pytest.raises(ProviderError) as info:
        provider.get_batch("batch_1")
    assert info.value.status_code == 401
    assert info.value.retryable is False
    assert wrong not in str(info.value)
    assert SECRET not in str(info.value)
