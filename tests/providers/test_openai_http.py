"""The real SDK over real HTTP (127.0.0.1) against a small canned server.

The end-to-end scenarios run against ``OpenAIEmulator`` (``test_openai_emulator.py``).
These cover wire-level cases the emulator does not script: a server echoing the key,
arbitrary statuses and headers, short bodies, exact request counts, memory use.
"""

from __future__ import annotations

import socket
import tempfile
import tracemalloc
from collections.abc import Iterator

import pytest

from batchor_core.errors import ProviderError, RateLimitedError
from batchor_core.models import ItemError
from batchor_core.providers import OpenAIBatchProvider, OpenAIProviderConfig
from tests.providers.fake_openai_http import FakeOpenAI

pytestmark = pytest.mark.integration

SECRET = "sk-proj-SECRETSECRET-0123456789abcdef"
CHAT = "/v1/chat/completions"
MB = 1024 * 1024


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as server:
        yield server


def make_provider(base_url: str, *, max_retries: int = 0) -> OpenAIBatchProvider:
    config = OpenAIProviderConfig(
        api_key=SECRET, base_url=base_url, timeout_seconds=10, max_retries=max_retries
    )
    return OpenAIBatchProvider(config)


@pytest.fixture
def provider(fake: FakeOpenAI) -> Iterator[OpenAIBatchProvider]:
    with make_provider(fake.base_url) as p:
        yield p


def create(provider: OpenAIBatchProvider, **metadata: str) -> str:
    return provider.create_batch(
        file_id="file-x", endpoint=CHAT, completion_window="24h", metadata=metadata
    ).batch_id


# --------------------------------------------------------------------------- happy paths


def test_batch_translation(fake: FakeOpenAI, provider: OpenAIBatchProvider) -> None:
    batch_id = create(provider, run="r")
    fake.batches[batch_id].update(
        status="failed",
        output_file_id="file-out",
        error_file_id="file-err",
        request_counts={"total": 10, "completed": 7, "failed": 3},
        errors={
            "object": "list",
            "data": [
                {"code": "invalid_json_line", "message": "Bad line", "line": 4, "param": None},
                {"code": None, "message": "Token limit reached", "line": None},
            ],
        },
        metadata=None,
    )
    batch = provider.get_batch(batch_id)
    assert batch.is_terminal
    assert (batch.output_file_id, batch.error_file_id) == ("file-out", "file-err")
    assert (batch.total, batch.completed, batch.failed) == (10, 7, 3)
    assert batch.errors == (
        ItemError("invalid_json_line", "Bad line (line 4)"),
        ItemError("batch_error", "Token limit reached"),
    )
    assert batch.metadata == {}


def test_find_batches_reads_newest_pages_only(fake: FakeOpenAI) -> None:
    for n in range(250):
        fake.new_batch(
            {
                "endpoint": CHAT,
                "input_file_id": "f",
                "completion_window": "24h",
                "metadata": {"run": "r", "n": str(n)},
            }
        )
    with make_provider(fake.base_url) as provider:
        found = provider.find_batches({"run": "r"}, max_pages=2)
        assert len(found) == 200  # the 50 oldest are beyond the page limit
        assert fake.calls("GET", "/v1/batches") == 2
        assert len(provider.find_batches({"run": "r"})) == 250
        assert provider.find_batches({"n": "0"}, max_pages=3)[0].metadata["n"] == "0"


# --------------------------------------------------------------------------- error translation


def test_rate_limit_carries_retry_after(fake: FakeOpenAI, provider: OpenAIBatchProvider) -> None:
    fake.fail("POST", "/v1/batches", status=429, headers={"retry-after": "2.0"})
    with pytest.raises(RateLimitedError) as info:
        create(provider)
    assert info.value.retry_after_seconds == 2.0
    assert info.value.retryable is True
    assert info.value.status_code == 429

    fake.fail("GET", "/v1/batches/.*", status=429, headers={"retry-after-ms": "1500"})
    with pytest.raises(RateLimitedError) as info:
        provider.get_batch("batch-1")
    assert info.value.retry_after_seconds == 1.5

    fake.fail("GET", "/v1/batches/.*", status=429)
    with pytest.raises(RateLimitedError) as info:
        provider.get_batch("batch-1")
    assert info.value.retry_after_seconds is None


def test_insufficient_quota_is_not_retryable(
    fake: FakeOpenAI, provider: OpenAIBatchProvider
) -> None:
    body = {"error": {"message": "You exceeded your current quota", "code": "insufficient_quota"}}
    fake.fail("POST", "/v1/batches", status=429, body=body)
    with pytest.raises(ProviderError) as info:
        create(provider)
    assert not isinstance(info.value, RateLimitedError)
    assert info.value.retryable is False
    assert info.value.message.startswith("insufficient_quota")
    assert info.value.status_code == 429


@pytest.mark.parametrize(
    ("status", "retryable"), [(500, True), (503, True), (408, True), (409, True), (400, False)]
)
def test_status_errors(
    fake: FakeOpenAI, provider: OpenAIBatchProvider, status: int, retryable: bool
) -> None:
    fake.fail("GET", "/v1/batches/.*", status=status)
    with pytest.raises(ProviderError) as info:
        provider.get_batch("batch-1")
    assert info.value.status_code == status
    assert info.value.retryable is retryable
    assert info.value.batch_id == "batch-1"
    assert f"HTTP {status}" in info.value.message


def test_unknown_batch_is_a_permanent_404(provider: OpenAIBatchProvider) -> None:
    with pytest.raises(ProviderError) as info:
        provider.get_batch("batch-missing")
    assert (info.value.status_code, info.value.retryable) == (404, False)


def test_bad_key_message_helps_and_never_leaks_it(
    fake: FakeOpenAI, provider: OpenAIBatchProvider
) -> None:
    body = {
        "error": {"message": f"Incorrect API key provided: {SECRET}", "code": "invalid_api_key"}
    }
    fake.fail("GET", "/v1/batches/.*", status=401, body=body)
    with pytest.raises(ProviderError) as info:
        provider.get_batch("batch-1")
    error = info.value
    assert error.retryable is False
    assert error.status_code == 401
    assert "check the API key" in error.message
    for text in (str(error), repr(error), error.message):
        assert SECRET not in text


def test_create_batch_is_never_retried_and_can_be_reconciled(fake: FakeOpenAI) -> None:
    # The server creates the batch, then the connection drops before the answer.
    fake.fail("POST", "/v1/batches", status=None, commit=True)
    with make_provider(fake.base_url, max_retries=2) as provider:
        with pytest.raises(ProviderError) as info:
            create(provider, run="r9", chunk="c1")
        assert info.value.retryable is True
        assert "outcome is unknown" in info.value.message
        assert "find_batches" in info.value.message
        assert fake.calls("POST", "/v1/batches") == 1
        [found] = provider.find_batches({"run": "r9", "chunk": "c1"})
        assert found.status == "validating"


def test_create_batch_5xx_is_never_retried(fake: FakeOpenAI) -> None:
    fake.fail("POST", "/v1/batches", status=500, count=3)
    with make_provider(fake.base_url, max_retries=2) as provider:
        with pytest.raises(ProviderError) as info:
            create(provider)
        assert info.value.retryable is True
        assert "find_batches" in info.value.message
    assert fake.calls("POST", "/v1/batches") == 1


def test_reads_are_retried_by_the_sdk(fake: FakeOpenAI) -> None:
    with make_provider(fake.base_url, max_retries=2) as provider:
        batch_id = create(provider)
        fake.fail("GET", f"/v1/batches/{batch_id}", status=None)
        assert provider.get_batch(batch_id).batch_id == batch_id
    assert fake.calls("GET", f"/v1/batches/{batch_id}") == 2


def test_dropped_connection_is_retryable(fake: FakeOpenAI, provider: OpenAIBatchProvider) -> None:
    fake.fail("GET", "/v1/batches/.*", status=None)
    with pytest.raises(ProviderError) as info:
        provider.get_batch("batch-1")
    assert info.value.retryable is True
    assert info.value.status_code is None
    assert "outcome is unknown" in info.value.message


def test_unreachable_server_is_retryable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with make_provider(f"http://127.0.0.1:{port}/v1") as provider:
        with pytest.raises(ProviderError) as info:
            provider.get_batch("batch-1")
        assert info.value.retryable is True


def test_download_errors(fake: FakeOpenAI, provider: OpenAIBatchProvider) -> None:
    with pytest.raises(ProviderError) as info:
        list(provider.download_file("file-missing"))
    assert (info.value.status_code, info.value.retryable) == (404, False)

    def short() -> Iterator[bytes]:
        yield b"x" * 100_000  # then stop: the body is shorter than announced

    file_id = fake.add_file("out.jsonl", 5 * MB, short)
    with pytest.raises(ProviderError) as info:
        list(provider.download_file(file_id))
    assert info.value.retryable is True


def test_stopping_a_download_early_is_clean(
    fake: FakeOpenAI, provider: OpenAIBatchProvider
) -> None:
    file_id = fake.add_file("out.jsonl", 16 * MB, lambda: _zeros(16 * MB))
    stream = provider.download_file(file_id)
    assert next(stream)
    stream.close()  # type: ignore[attr-defined]
    assert provider.get_batch(create(provider)).status == "validating"  # client still usable


# --------------------------------------------------------------------------- memory stays flat


def _zeros(total: int) -> Iterator[bytes]:
    chunk = b"0" * (256 * 1024)
    for _ in range(total // len(chunk)):
        yield chunk


def test_upload_and_download_stream(fake: FakeOpenAI, provider: OpenAIBatchProvider) -> None:
    size = 48 * MB
    with tempfile.TemporaryFile() as source:
        for chunk in _zeros(size):
            source.write(chunk)
        source.seek(0)
        tracemalloc.start()
        try:
            file_id = provider.upload_file(source, filename="big.jsonl")
            _, upload_peak = tracemalloc.get_traced_memory()
            tracemalloc.reset_peak()
            downloaded = 0
            big = fake.add_file("big-out.jsonl", size, lambda: _zeros(size))
            for chunk in provider.download_file(big):
                downloaded += len(chunk)
            _, download_peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert fake.files[file_id].size > size  # the whole multipart body arrived
    assert downloaded == size
    assert upload_peak < 8 * MB, upload_peak
    assert download_peak < 8 * MB, download_peak
