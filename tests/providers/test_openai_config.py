"""OpenAIProviderConfig and the provider's public surface: no sockets."""

from __future__ import annotations

import pytest

import batchor_core.providers as providers_pkg
import batchor_core.providers.openai as openai_pkg
from batchor_core.errors import ConfigurationError
from batchor_core.ports import BatchProvider
from batchor_core.providers import OpenAIBatchProvider, OpenAIProviderConfig

SECRET = "sk-proj-THISMUSTNEVERLEAK0123456789"


def test_public_api_is_pinned() -> None:
    assert providers_pkg.__all__ == ["OpenAIBatchProvider", "OpenAIProviderConfig"]
    assert openai_pkg.__all__ == ["OpenAIBatchProvider", "OpenAIProviderConfig"]


def test_repr_and_str_never_show_the_key() -> None:
    config = OpenAIProviderConfig(api_key=SECRET, base_url="http://x/v1", project="p")
    provider = OpenAIBatchProvider(config)
    for text in (repr(config), str(config), repr(provider), str(provider), f"{config}"):
        assert SECRET not in text
        assert "THISMUSTNEVERLEAK" not in text
    assert "api_key=<set>" in repr(config)
    assert "base_url='http://x/v1'" in repr(config)
    assert "api_key=None" in repr(OpenAIProviderConfig())


def test_resolved_api_key_prefers_explicit_then_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    assert OpenAIProviderConfig().resolved_api_key() == "sk-from-env"
    assert OpenAIProviderConfig(api_key="sk-explicit").resolved_api_key() == "sk-explicit"


def test_missing_key_error_tells_the_user_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ConfigurationError) as info:
        OpenAIProviderConfig().resolved_api_key()
    assert str(info.value) == (
        "No OpenAI API key: pass OpenAIProviderConfig(api_key=...) or set OPENAI_API_KEY"
    )


def test_empty_env_key_counts_as_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "")
    with pytest.raises(ConfigurationError):
        OpenAIProviderConfig().resolved_api_key()


def test_base_url_falls_back_to_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    assert OpenAIProviderConfig().resolved_base_url() is None
    monkeypatch.setenv("OPENAI_BASE_URL", "http://env/v1")
    assert OpenAIProviderConfig().resolved_base_url() == "http://env/v1"
    assert OpenAIProviderConfig(base_url="http://arg/v1").resolved_base_url() == "http://arg/v1"


def test_provider_builds_without_a_key_and_fails_on_first_use(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    provider = OpenAIBatchProvider()
    # Pure helpers need no client and no key.
    assert provider.parse_line(
        "/v1/chat/completions", b'{"custom_id": "a", "error": {"code": "x"}}'
    )
    with pytest.raises(ConfigurationError, match="No OpenAI API key"):
        provider.get_batch("batch_1")
    provider.close()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"timeout_seconds": 0}, "timeout_seconds"),
        ({"timeout_seconds": float("nan")}, "timeout_seconds"),
        ({"max_retries": -1}, "max_retries"),
        ({"base_url": "not a url"}, "base_url must be an http"),
        ({"base_url": "api.openai.com/v1"}, "base_url must be an http"),
        ({"base_url": "ftp://host/v1"}, "base_url must be an http"),
    ],
)
def test_invalid_settings_are_rejected(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ConfigurationError, match=match):
        OpenAIProviderConfig(**kwargs)  # type: ignore[arg-type]


def test_a_malformed_base_url_in_the_environment_fails_before_any_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "localhost:8089")
    provider = OpenAIBatchProvider(OpenAIProviderConfig(api_key=SECRET))
    with pytest.raises(ConfigurationError, match="OPENAI_BASE_URL must be an http"):
        provider.preflight()
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:8089/v1")
    provider.preflight()
    assert OpenAIProviderConfig(base_url="https://example.test/v1").base_url
    provider.close()


def test_provider_satisfies_the_port() -> None:
    provider: BatchProvider = OpenAIBatchProvider(OpenAIProviderConfig(api_key=SECRET))
    assert isinstance(provider, OpenAIBatchProvider)


def test_create_batch_rejects_unknown_endpoint_before_any_call() -> None:
    with (
        OpenAIBatchProvider(OpenAIProviderConfig(api_key=SECRET)) as provider,
        pytest.raises(ConfigurationError, match="/v1/embeddings"),
    ):
        provider.create_batch(
            file_id="file_1", endpoint="/v1/embeddings", completion_window="24h", metadata={}
        )
