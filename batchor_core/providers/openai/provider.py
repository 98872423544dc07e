"""``OpenAIBatchProvider``: the :class:`~batchor_core.ports.BatchProvider` for OpenAI.

Every SDK call is wrapped so that only batchor records and errors leave this package
(see :mod:`batchor_core.providers.openai.translate` for the error mapping).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Mapping
from types import TracebackType
from typing import BinaryIO, Literal, Self, TypeVar, cast

import httpx2
import openai
import pydantic
from openai.types import Batch, FileObject

from batchor_core.errors import BatchorError, ConfigurationError
from batchor_core.models import Endpoint, JSONObject, Price
from batchor_core.ports import ProviderBatch, RequestSpec
from batchor_core.providers.openai import parsing, requests
from batchor_core.providers.openai.config import (
    OpenAIProviderConfig,
    configured_enqueue_limit,
    configured_price,
)
from batchor_core.providers.openai.translate import (
    to_provider_batch,
    translate_error,
    unexpected_answer,
)

__all__ = ["OpenAIBatchProvider"]

_BatchEndpoint = Literal["/v1/responses", "/v1/chat/completions"]
# Small enough that a download costs no memory to speak of: 1 MiB pieces cost a run's
# peak RSS 4 MB (copies in the HTTP client's chunker), and were no faster.
_DOWNLOAD_CHUNK_BYTES = 64 << 10
_LIST_PAGE_SIZE = 100
_JSONL = "application/jsonl"
_T = TypeVar("_T")
# What the SDK raises when an answer is not the shape it expects (an HTML page, a proxy
# error body): it parses lazily, so these surface from attribute access and paging.
_SHAPE_ERRORS = (AttributeError, KeyError, TypeError, ValueError, pydantic.ValidationError)


class OpenAIBatchProvider:
    """The OpenAI Batch API, behind batchor's ``BatchProvider`` port.

    The SDK client is built on first use, so a provider can be constructed (and a job
    defined) before an API key is available. The provider is safe to share between
    threads. Close it (or use it as a context manager) to release connections.

    Args:
        config: Where and how to connect; defaults read the ``OPENAI_*`` environment.

    Example:
        >>> provider = OpenAIBatchProvider(OpenAIProviderConfig(timeout_seconds=30))
    """

    def __init__(self, config: OpenAIProviderConfig | None = None) -> None:
        self._config = config if config is not None else OpenAIProviderConfig()
        self._lock = threading.Lock()
        self._client: openai.OpenAI | None = None
        self._no_retry_client: openai.OpenAI | None = None
        self._api_key: str | None = None

    @property
    def config(self) -> OpenAIProviderConfig:
        """The provider's settings."""
        return self._config

    def __repr__(self) -> str:
        return f"OpenAIBatchProvider(config={self._config!r})"

    # ----------------------------------------------------------------- lifecycle

    def _clients(self) -> tuple[openai.OpenAI, openai.OpenAI]:
        """The SDK client (with retries) and its twin that never retries."""
        with self._lock:
            if self._client is None or self._no_retry_client is None:
                key = self._config.resolved_api_key()
                try:
                    client = openai.OpenAI(
                        api_key=key,
                        base_url=self._config.resolved_base_url(),
                        organization=self._config.organization,
                        project=self._config.project,
                        timeout=self._config.timeout_seconds,
                        max_retries=self._config.max_retries,
                    )
                except openai.OpenAIError as exc:
                    message = str(exc).replace(key, "***")
                    raise ConfigurationError(f"Cannot set up the OpenAI client: {message}") from exc
                # The twin shares the connection pool; only its retry budget differs.
                self._no_retry_client = client.with_options(max_retries=0)
                self._client = client
                self._api_key = key
            return self._client, self._no_retry_client

    def close(self) -> None:
        """Release the connection pool. The provider reconnects if used again."""
        with self._lock:
            client, self._client, self._no_retry_client = self._client, None, None
        if client is not None:
            client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @contextlib.contextmanager
    def _translating(
        self, action: str, *, batch_id: str | None = None, ambiguous: bool = False
    ) -> Iterator[None]:
        """The one place SDK and transport exceptions become ``ProviderError``.

        An answer that is not the expected shape (HTML from a proxy, a truncated body) is
        a non-retryable ``ProviderError`` too, never a raw ``AttributeError``.
        """
        try:
            yield
        except BatchorError:
            raise  # already ours (a ConfigurationError may also be a ValueError)
        except (openai.OpenAIError, httpx2.HTTPError, httpx2.StreamError) as exc:
            raise translate_error(
                exc, action=action, secret=self._api_key, batch_id=batch_id, ambiguous=ambiguous
            ) from exc
        except _SHAPE_ERRORS as exc:
            raise unexpected_answer(action, exc, batch_id=batch_id) from exc

    # ----------------------------------------------------------------- requests and results

    def preflight(self) -> None:
        """Check the configuration without calling the API (a missing key fails here).

        Raises:
            ConfigurationError: No API key is configured, or the base URL is not a URL.
        """
        self.config.resolved_api_key()
        self.config.resolved_base_url()

    def output_schema(self, output_model: type) -> tuple[str, JSONObject]:
        """The strict JSON schema name and body OpenAI enforces for ``output_model``.

        Raises:
            ConfigurationError: Not a pydantic model, or not expressible in strict mode.
        """
        return requests.output_schema(output_model)

    def enqueue_limit(self, model: str) -> int | None:
        """The configured enqueued-token limit of ``model`` (see ``enqueue_limits``)."""
        return configured_enqueue_limit(self._config, model)

    def price(self, model: str) -> tuple[Price | None, str]:
        """The price of ``model`` (config override, else batchor's table) and its source."""
        return configured_price(self._config, model)

    def shape_body(self, spec: RequestSpec, body: Mapping[str, object]) -> JSONObject:
        """Complete a user-built request body (model, options, structured output format).

        ``spec.request_options`` are defaults the item's body overrides; ``model`` and the
        structured-output format always come from ``spec``. Returns a new dict.

        Raises:
            ConfigurationError: Unknown endpoint, or no ``messages`` / ``input``.
        """
        return requests.shape_body(spec, body)

    def body_encoder(self, spec: RequestSpec) -> Callable[[Mapping[str, object]], bytes]:
        """The JSON bytes of :meth:`shape_body` as one function of the body, for the many
        bodies of one run: the model and structured-output format are encoded once."""
        return requests.body_encoder(spec)

    # The parser itself, not a method calling it: the collector binds it once per file
    # and calls it for every line, so this saves a Python call per line.
    parse_line = staticmethod(parsing.parse_line)
    """Parse one line of an output or error file: ``parse_line(endpoint, line)``.

    Raises:
        ProviderError: The line is not a JSON object or has no ``custom_id``.
    """

    # ----------------------------------------------------------------- files

    def upload_file(self, stream: BinaryIO, *, filename: str) -> str:
        """Upload a batch input file (purpose ``batch``); return its file id.

        The stream is sent in chunks, never read whole into memory. The SDK may retry
        the upload; an ambiguous failure can at worst leave an unused file behind.

        Raises:
            ProviderError: The upload failed.
        """
        client, _ = self._clients()
        action = f"uploading {filename}"
        with self._translating(action):
            created = client.files.create(file=(filename, stream, _JSONL), purpose="batch")
            return _expect(created, FileObject, action).id

    def delete_file(self, file_id: str) -> None:
        """Delete a file; a file that does not exist (any more) is not an error.

        Raises:
            ProviderError: The deletion failed for another reason.
        """
        client, _ = self._clients()
        with self._translating(f"deleting file {file_id}"):
            try:
                client.files.delete(file_id)
            except openai.NotFoundError:
                return

    def find_files(self, filename: str, *, max_pages: int = 5) -> list[str]:
        """Ids of recent ``batch`` files named ``filename`` (newest first).

        Used to find an upload whose id was never recorded (a crash right after it).

        Raises:
            ProviderError: Listing failed.
        """
        client, _ = self._clients()
        found: list[str] = []
        action = "listing files"
        with self._translating(action):
            page = client.files.list(purpose="batch", limit=_LIST_PAGE_SIZE)
            for number in range(1, max_pages + 1):
                found.extend(
                    _expect(f, FileObject, action).id for f in page.data if f.filename == filename
                )
                if number == max_pages or not page.has_next_page():
                    break
                page = page.get_next_page()
        return found

    def download_file(self, file_id: str) -> Iterator[bytes]:
        """Stream a file's content in chunks of 64 KiB; memory stays flat.

        The request is made when iteration starts, and errors (including a connection
        dropped mid-file) are raised from the iterator. Stopping early closes the
        connection.

        Raises:
            ProviderError: The download failed or was interrupted.
        """
        client, _ = self._clients()
        return self._stream(client, file_id)

    def _stream(self, client: openai.OpenAI, file_id: str) -> Iterator[bytes]:
        with (
            self._translating(f"downloading file {file_id}"),
            client.files.with_streaming_response.content(file_id) as response,
        ):
            yield from response.iter_bytes(_DOWNLOAD_CHUNK_BYTES)

    # ----------------------------------------------------------------- batches

    def create_batch(
        self, *, file_id: str, endpoint: str, completion_window: str, metadata: Mapping[str, str]
    ) -> ProviderBatch:
        """Create a batch, exactly once from our side.

        The SDK never retries this call: after a dropped connection or a 5xx the batch
        may or may not exist, so the error is raised (``retryable=True``) and the caller
        must look for it with :meth:`find_batches` before creating it again.

        Raises:
            ConfigurationError: ``endpoint`` is not supported.
            ProviderError: The call failed; its message says when the outcome is unknown.
        """
        if endpoint not in {e.value for e in Endpoint}:
            known = ", ".join(e.value for e in Endpoint)
            raise ConfigurationError(f"Cannot create a batch on {endpoint!r}; use {known}")
        _, once = self._clients()
        action = f"creating a batch for file {file_id}"
        with self._translating(action, ambiguous=True):
            batch = once.batches.create(
                input_file_id=file_id,
                endpoint=cast(_BatchEndpoint, endpoint),
                # The SDK types this as Literal["24h"]; pass other windows through so
                # the API, not a stale type, decides what is valid.
                completion_window=cast(Literal["24h"], completion_window),
                metadata=dict(metadata),
            )
            return to_provider_batch(_expect(batch, Batch, action))

    def get_batch(self, batch_id: str) -> ProviderBatch:
        """Read a batch's current state.

        Raises:
            ProviderError: The call failed (404 if the batch does not exist).
        """
        client, _ = self._clients()
        action = f"reading batch {batch_id}"
        with self._translating(action, batch_id=batch_id):
            batch = client.batches.retrieve(batch_id)
            return to_provider_batch(_expect(batch, Batch, action))

    def cancel_batch(self, batch_id: str) -> ProviderBatch:
        """Ask OpenAI to cancel a batch; it moves to ``cancelling``, then ``cancelled``.

        Raises:
            ProviderError: The call failed (for example the batch is already finished).
        """
        client, _ = self._clients()
        action = f"cancelling batch {batch_id}"
        with self._translating(action, batch_id=batch_id):
            batch = client.batches.cancel(batch_id)
            return to_provider_batch(_expect(batch, Batch, action))

    def find_batches(
        self, metadata: Mapping[str, str], *, max_pages: int = 20
    ) -> list[ProviderBatch]:
        """Recent batches whose metadata contains every key/value of ``metadata``.

        Reads at most ``max_pages`` pages of 100 batches, newest first, so a batch older
        than the last ``100 * max_pages`` batches of the account is not found.

        Raises:
            ProviderError: Listing failed.
        """
        if max_pages < 1:
            raise ConfigurationError("find_batches(max_pages=...) must be at least 1")
        wanted = dict(metadata)
        client, _ = self._clients()
        found: list[ProviderBatch] = []
        action = "listing batches"
        with self._translating(action):
            page = client.batches.list(limit=_LIST_PAGE_SIZE)
            for number in range(1, max_pages + 1):
                for batch in page.data:
                    have = _expect(batch, Batch, action).metadata or {}
                    if all(have.get(k) == v for k, v in wanted.items()):
                        found.append(to_provider_batch(batch))
                if number == max_pages or not page.has_next_page():
                    break
                page = page.get_next_page()
        return found


def _expect(value: object, kind: type[_T], action: str) -> _T:
    """``value`` if the SDK parsed the answer into ``kind``; else a ``ProviderError``."""
    if isinstance(value, kind):
        return value
    raise unexpected_answer(action, TypeError(f"got {type(value).__name__}: {str(value)[:200]!r}"))
