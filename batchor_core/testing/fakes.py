"""An in-memory :class:`~batchor_core.ports.BatchProvider` for fast unit tests.

:class:`FakeBatchProvider` keeps files and batches in dicts: no sockets, no threads, no
``openai``. A batch finishes the first time it is read (``get_batch``) unless it is held
or a finish was scripted. Each input line's ``body`` is answered by a ``responder``:
a ``str`` is the model's output text, an :class:`~batchor_core.models.ItemError` an
error line. Output lines come back in reverse input order (the real service does not
keep the order either).

Its output and error files use a format of its own, one JSON object a line, read by its
own :meth:`FakeBatchProvider.parse_line`::

    {"custom_id": "i0s1", "text": "...", "usage": {"input_tokens": 1, "output_tokens": 1}}
    {"custom_id": "i1s1", "error": {"code": "...", "message": "..."}}

Requests a batch never ran (an expired, failed or cancelled batch) get no line at all.
"""

from __future__ import annotations

import json
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import BinaryIO, Protocol, TypeAlias, cast

from batchor_core.errors import ConfigurationError, ProviderError
from batchor_core.models import ItemError, JSONObject, Price, Usage
from batchor_core.ports import ParsedLine, ProviderBatch, RequestSpec
from batchor_core.pricing import price_for

__all__ = ["FakeBatchProvider", "Responder", "echo_responder"]

Responder: TypeAlias = Callable[[JSONObject], str | ItemError]
"""Answers one request body with the model's output text, or an error for that line."""

_TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
_FINISH_STATUSES = frozenset({"expired", "failed", "cancelled"})


def echo_responder(body: JSONObject) -> str:
    """The default responder: ``{"echo": <text>}`` as JSON text.

    ``<text>`` is the content of the last user message of a chat body, else the body's
    ``input`` (responses), else None.
    """
    text: object = body.get("input")
    messages = body.get("messages")
    if isinstance(messages, list):
        users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
        text = users[-1].get("content") if users else None
    return json.dumps({"echo": text})


class _SchemaModel(Protocol):
    def model_json_schema(self) -> JSONObject: ...


@dataclass(frozen=True, slots=True)
class _Finish:
    status: str
    completed_fraction: float
    errors: tuple[ItemError, ...]


class FakeBatchProvider:
    """An in-memory batch provider with scripted faults, for unit tests.

    Scripted faults are consumed in order, one per matching call: ``fail_next_upload``,
    ``fail_next_create`` and ``fail_next_get`` raise on the next such call;
    ``finish_next`` decides how the next batch to finish ends. ``hold(True)`` keeps
    batches ``in_progress`` until ``hold(False)``.

    Args:
        responder: Answers each request body (default :func:`echo_responder`).
        chunk_size: Bytes per chunk yielded by :meth:`download_file`.
        enqueue_limits: Enqueued-token limit per model (tokens), as a provider config
            would give it.
        prices: Price overrides per model.

    Attributes:
        created_batches: Every batch created, as returned at creation, in order.
        calls: Names of the provider calls made (``upload_file``, ``create_batch``,
            ``get_batch``, ``find_batches``, ``find_files``, ``download_file``,
            ``delete_file``, ``cancel_batch``), in order.
        files: File id to ``(filename, content)``, inputs and outputs alike.
    """

    def __init__(
        self,
        responder: Responder = echo_responder,
        *,
        chunk_size: int = 64 * 1024,
        enqueue_limits: Mapping[str, int] | None = None,
        prices: Mapping[str, Price] | None = None,
    ) -> None:
        self.enqueue_limits = dict(enqueue_limits or {})
        self.prices = dict(prices or {})
        self.responder = responder
        self.chunk_size = chunk_size
        self.created_batches: list[ProviderBatch] = []
        self.calls: list[str] = []
        self.files: dict[str, tuple[str, bytes]] = {}
        self._batches: dict[str, ProviderBatch] = {}
        self._inputs: dict[str, list[JSONObject]] = {}  # batch id -> its request lines
        self._ids = Counter[str]()
        self._create_faults: deque[tuple[ProviderError, bool]] = deque()
        self._upload_faults: deque[tuple[ProviderError, bool]] = deque()
        self._get_faults: deque[ProviderError] = deque()
        self._finishes: deque[_Finish] = deque()
        self._held = False

    def __repr__(self) -> str:
        return f"FakeBatchProvider(files={len(self.files)}, batches={len(self._batches)})"

    # ------------------------------------------------------------------ scripting

    def fail_next_create(self, error: ProviderError, *, commit: bool = False) -> None:
        """Make the next ``create_batch`` raise ``error``.

        Args:
            error: What to raise.
            commit: Create the batch anyway before raising (an ambiguous failure, like a
                connection dropped after the provider committed).
        """
        self._create_faults.append((error, commit))

    def fail_next_upload(self, error: ProviderError, *, commit: bool = False) -> None:
        """Make the next ``upload_file`` raise ``error``.

        With ``commit=True`` the file is stored anyway (an ambiguous failure that leaves
        an orphan behind); otherwise nothing is stored.
        """
        self._upload_faults.append((error, commit))

    def fail_next_get(self, error: ProviderError) -> None:
        """Make the next ``get_batch`` raise ``error``."""
        self._get_faults.append(error)

    def finish_next(
        self,
        status: str = "expired",
        *,
        completed_fraction: float = 0.0,
        errors: tuple[ItemError, ...] = (),
    ) -> None:
        """Script how the next batch to finish ends.

        Args:
            status: ``expired``, ``failed`` or ``cancelled``.
            completed_fraction: Share of its requests (the first ones, in input order)
                that ran and got a line; the others get none.
            errors: Batch-level errors (for example ``token_limit_exceeded``).
        """
        if status not in _FINISH_STATUSES:
            raise ConfigurationError(
                f"finish_next status must be one of {sorted(_FINISH_STATUSES)}"
            )
        self._finishes.append(_Finish(status, completed_fraction, tuple(errors)))

    def hold(self, held: bool = True) -> None:
        """Keep batches ``in_progress`` (True) or let them finish when next read (False)."""
        self._held = held

    def requests_sent(self) -> Counter[str]:
        """How many times each custom_id was in the input of a created batch."""
        return Counter(line["custom_id"] for lines in self._inputs.values() for line in lines)

    # ------------------------------------------------------------------ bodies

    def preflight(self) -> None:
        """Nothing to check: the fake needs no configuration."""

    def output_schema(self, output_model: type) -> tuple[str, JSONObject]:
        """``(class name, model_json_schema())`` of a pydantic model class."""
        if not hasattr(output_model, "model_json_schema"):
            raise ConfigurationError(f"output_model must be a pydantic model, got {output_model!r}")
        return output_model.__name__, cast(_SchemaModel, output_model).model_json_schema()

    def enqueue_limit(self, model: str) -> int | None:
        """The limit given in ``enqueue_limits``, if any."""
        return self.enqueue_limits.get(model)

    def price(self, model: str) -> tuple[Price | None, str]:
        """A price from ``prices``, else batchor's table."""
        return price_for(model, self.prices)

    def shape_body(self, spec: RequestSpec, body: Mapping[str, object]) -> JSONObject:
        """Options, then the body, then ``model``; plus ``response_format`` with a schema."""
        shaped: JSONObject = {**spec.request_options, **body, "model": spec.model}
        if spec.output_schema is not None:
            shaped["response_format"] = {"schema": spec.output_schema}
        return shaped

    def parse_line(self, endpoint: str, line: bytes) -> ParsedLine:
        """Parse a line of this fake's own output format (see the module docstring).

        Raises:
            ProviderError: The line is not a JSON object with a ``custom_id``.
        """
        try:
            obj = json.loads(line)
        except ValueError as exc:
            raise ProviderError(f"bad fake output line {line[:80]!r}", retryable=False) from exc
        if not isinstance(obj, dict) or not isinstance(obj.get("custom_id"), str):
            raise ProviderError(f"fake output line without custom_id: {line[:80]!r}")
        error = obj.get("error")
        if error is not None:
            item_error = ItemError(str(error.get("code")), str(error.get("message")))
            return ParsedLine(obj["custom_id"], None, item_error, None)
        usage = obj.get("usage") or {}
        return ParsedLine(
            obj["custom_id"],
            obj.get("text"),
            None,
            Usage(usage.get("input_tokens", 0), usage.get("output_tokens", 0)),
        )

    # ------------------------------------------------------------------ files

    def upload_file(self, stream: BinaryIO, *, filename: str) -> str:
        """Read ``stream`` fully and keep it; return a ``file-<n>`` id."""
        self.calls.append("upload_file")
        content = stream.read()
        if self._upload_faults:
            error, commit = self._upload_faults.popleft()
            if commit:
                self._store(filename, content)  # kept, but the caller never learns its id
            raise error
        return self._store(filename, content)

    def delete_file(self, file_id: str) -> None:
        """Forget a file; a missing one is not an error."""
        self.calls.append("delete_file")
        self.files.pop(file_id, None)

    def find_files(self, filename: str, *, max_pages: int = 5) -> list[str]:
        """Ids of the files named ``filename``, newest first."""
        self.calls.append("find_files")
        return [fid for fid, (name, _) in reversed(self.files.items()) if name == filename]

    def download_file(self, file_id: str) -> Iterator[bytes]:
        """Yield a file's bytes in chunks of ``chunk_size``.

        Raises:
            ProviderError: No such file (on the first iteration).
        """
        self.calls.append("download_file")
        if file_id not in self.files:
            raise ProviderError(f"no file {file_id}", status_code=404, retryable=False)
        content = self.files[file_id][1]
        for start in range(0, len(content), self.chunk_size):
            yield content[start : start + self.chunk_size]

    # ------------------------------------------------------------------ batches

    def create_batch(
        self, *, file_id: str, endpoint: str, completion_window: str, metadata: Mapping[str, str]
    ) -> ProviderBatch:
        """Create a ``validating`` batch over ``file_id``, or raise a scripted fault."""
        self.calls.append("create_batch")
        fault = self._create_faults.popleft() if self._create_faults else None
        if fault is not None and not fault[1]:
            raise fault[0]
        if file_id not in self.files:
            raise ProviderError(f"no input file {file_id}", status_code=400, retryable=False)
        content = self.files[file_id][1]
        requests = [json.loads(raw) for raw in content.splitlines() if raw.strip()]
        batch = ProviderBatch(
            batch_id=self._next_id("batch"),
            status="validating",
            input_file_id=file_id,
            output_file_id=None,
            error_file_id=None,
            total=len(requests),
            completed=0,
            failed=0,
            errors=(),
            metadata=dict(metadata),
        )
        self._batches[batch.batch_id] = batch
        self._inputs[batch.batch_id] = requests
        self.created_batches.append(batch)
        if fault is not None:
            raise fault[0]
        return batch

    def get_batch(self, batch_id: str) -> ProviderBatch:
        """Read a batch; a live one finishes now unless held (see :meth:`finish_next`)."""
        self.calls.append("get_batch")
        if self._get_faults:
            raise self._get_faults.popleft()
        batch = self._batch(batch_id)
        if batch.status in _TERMINAL:
            return batch
        if self._held:
            return self._set(replace(batch, status="in_progress"))
        return self._finish(batch, self._finishes.popleft() if self._finishes else None)

    def find_batches(
        self, metadata: Mapping[str, str], *, max_pages: int = 20
    ) -> list[ProviderBatch]:
        """Batches whose metadata contains every pair of ``metadata``, newest first."""
        self.calls.append("find_batches")
        return [
            b
            for b in reversed(self._batches.values())
            if all(b.metadata.get(k) == v for k, v in metadata.items())
        ]

    def cancel_batch(self, batch_id: str) -> ProviderBatch:
        """Cancel a live batch at once (none of its requests ran)."""
        self.calls.append("cancel_batch")
        batch = self._batch(batch_id)
        if batch.status in _TERMINAL:
            return batch
        return self._finish(batch, _Finish("cancelled", 0.0, ()))

    # ------------------------------------------------------------------ internals

    def _next_id(self, kind: str) -> str:
        self._ids[kind] += 1
        return f"{kind}-{self._ids[kind]}"

    def _store(self, filename: str, content: bytes) -> str:
        file_id = self._next_id("file")
        self.files[file_id] = (filename, content)
        return file_id

    def _batch(self, batch_id: str) -> ProviderBatch:
        if batch_id not in self._batches:
            raise ProviderError(f"no batch {batch_id}", status_code=404, retryable=False)
        return self._batches[batch_id]

    def _set(self, batch: ProviderBatch) -> ProviderBatch:
        self._batches[batch.batch_id] = batch
        return batch

    def _finish(self, batch: ProviderBatch, finish: _Finish | None) -> ProviderBatch:
        finish = finish or _Finish("completed", 1.0, ())
        requests = self._inputs[batch.batch_id]
        ran = requests[: int(len(requests) * finish.completed_fraction)]
        outputs: list[bytes] = []
        errors: list[bytes] = []
        for request in reversed(ran):  # like the real service, order is not kept
            answer = self.responder(request["body"])
            if isinstance(answer, ItemError):
                error = {"code": answer.code, "message": answer.message}
                errors.append(_line({"custom_id": request["custom_id"], "error": error}))
            else:
                usage = {"input_tokens": 1, "output_tokens": 1}
                line = {"custom_id": request["custom_id"], "text": answer, "usage": usage}
                outputs.append(_line(line))
        name = batch.batch_id
        out_id = self._store(f"{name}_output.jsonl", b"".join(outputs)) if outputs else None
        err_id = self._store(f"{name}_error.jsonl", b"".join(errors)) if errors else None
        finished = replace(
            batch,
            status=finish.status,
            errors=finish.errors,
            completed=len(outputs),
            failed=len(errors),
            output_file_id=out_id,
            error_file_id=err_id,
        )
        return self._set(finished)


def _line(obj: JSONObject) -> bytes:
    return json.dumps(obj).encode() + b"\n"
