"""The Files and Batches endpoints, independent of HTTP plumbing.

:class:`Router` maps ``(method, path)`` to a handler that returns a :class:`JsonReply`,
a :class:`FileReply` (streamed from disk by the server) or :data:`DROP` (close the
connection without answering), or raises :class:`~.wire.ApiError`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, TypeVar

from .faults import FaultPlan
from .lifecycle import BatchLifecycle
from .multipart import BodyReader, boundary_of, parse_form
from .state import BatchRecord, FileRecord, Store
from .wire import JSONObject, bad_request, not_found, status_error

UPLOAD_PURPOSES: Final = ("assistants", "batch", "fine-tune", "vision", "user_data")
MAX_JSON_BODY = 1 << 20
BATCH_PAGE_DEFAULT = 20
BATCH_PAGE_MAX = 100
FILE_PAGE_DEFAULT = 10_000


@dataclass
class Request:
    """One HTTP request as the routes see it."""

    method: str
    path: str
    query: dict[str, str]
    content_type: str
    body: BodyReader


@dataclass
class JsonReply:
    """A JSON response."""

    status: int
    body: JSONObject
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class FileReply:
    """A file's bytes, streamed from disk."""

    path: Path
    size: int


class DropReply:
    """Close the connection without sending a response."""


DROP: Final = DropReply()
Reply = JsonReply | FileReply | DropReply
Handler = Callable[[Request, str], Reply]


class Router:
    """Dispatches requests to the Files and Batches handlers.

    Args:
        store: Files and batches.
        lifecycle: The batch state machine.
        faults: The scripted faults (for commit-then-fail).
    """

    def __init__(self, store: Store, lifecycle: BatchLifecycle, faults: FaultPlan) -> None:
        self._store = store
        self._lifecycle = lifecycle
        self._faults = faults
        segment = r"([^/]+)"
        self._routes: list[tuple[str, re.Pattern[str], Handler]] = [
            ("POST", re.compile(r"/v1/files"), self._create_file),
            ("GET", re.compile(r"/v1/files"), self._list_files),
            ("GET", re.compile(rf"/v1/files/{segment}"), self._get_file),
            ("DELETE", re.compile(rf"/v1/files/{segment}"), self._delete_file),
            ("GET", re.compile(rf"/v1/files/{segment}/content"), self._file_content),
            ("POST", re.compile(r"/v1/batches"), self._create_batch),
            ("GET", re.compile(r"/v1/batches"), self._list_batches),
            ("GET", re.compile(rf"/v1/batches/{segment}"), self._get_batch),
            ("POST", re.compile(rf"/v1/batches/{segment}/cancel"), self._cancel_batch),
        ]

    def handle(self, request: Request) -> Reply:
        """Run the handler for ``request``.

        Raises:
            ApiError: For unknown routes (404) and every client or scripted error.
        """
        path = request.path.rstrip("/") or "/"
        for method, pattern, handler in self._routes:
            match = pattern.fullmatch(path)
            if match is not None and method == request.method:
                return handler(request, match.group(1) if match.groups() else "")
        raise not_found(f"Invalid URL ({request.method} {request.path})")

    # -- files -------------------------------------------------------------------------

    def _create_file(self, request: Request, _: str) -> Reply:
        boundary = boundary_of(request.content_type)
        staged = self._store.temp_path("upload")
        try:
            form = parse_form(request.body, boundary, staged)
            if form.filename is None:
                raise _missing("file")
            purpose = form.fields.get("purpose")
            if purpose is None:
                raise _missing("purpose")
            if purpose not in UPLOAD_PURPOSES:
                raise bad_request(
                    f"Invalid value for 'purpose': {purpose!r}. Supported values are: "
                    + ", ".join(UPLOAD_PURPOSES),
                    param="purpose",
                    code="invalid_value",
                )
            record = self._store.add_file(staged, filename=form.filename, purpose=purpose)
        finally:
            staged.unlink(missing_ok=True)
        return JsonReply(200, record.to_json())

    def _list_files(self, request: Request, _: str) -> Reply:
        files = self._store.list_files()
        purpose = request.query.get("purpose")
        if purpose:
            files = [f for f in files if f.purpose == purpose]
        order = request.query.get("order", "desc")
        if order not in ("asc", "desc"):
            raise bad_request("Invalid value for 'order': expected 'asc' or 'desc'.", param="order")
        if order == "desc":
            files.reverse()
        limit = _limit(request.query, default=FILE_PAGE_DEFAULT, maximum=FILE_PAGE_DEFAULT)
        page, has_more = _page(files, request.query.get("after"), limit)
        return JsonReply(
            200,
            {
                "object": "list",
                "data": [f.to_json() for f in page],
                "first_id": page[0].id if page else None,
                "last_id": page[-1].id if page else None,
                "has_more": has_more,
            },
        )

    def _get_file(self, request: Request, file_id: str) -> Reply:
        return JsonReply(200, self._file(file_id).to_json())

    def _delete_file(self, request: Request, file_id: str) -> Reply:
        if self._store.remove_file(file_id) is None:
            raise _no_file(file_id)
        return JsonReply(200, {"id": file_id, "object": "file", "deleted": True})

    def _file_content(self, request: Request, file_id: str) -> Reply:
        record = self._file(file_id)
        return FileReply(record.path, record.bytes)

    def _file(self, file_id: str) -> FileRecord:
        record = self._store.get_file(file_id)
        if record is None:
            raise _no_file(file_id)
        return record

    # -- batches -----------------------------------------------------------------------

    def _create_batch(self, request: Request, _: str) -> Reply:
        record = self._lifecycle.create(_json_body(request))
        snapshot = self._lifecycle.snapshot(record)
        self._lifecycle.process_in_background(record)
        failure = self._faults.take_commit_failure()
        if failure is not None:
            # The batch is committed; only the client's view of the outcome is lost.
            if failure.drop:
                return DROP
            raise status_error(failure.status)
        return JsonReply(200, snapshot)

    def _list_batches(self, request: Request, _: str) -> Reply:
        records = sorted(self._store.list_batches(), key=lambda b: b.seq, reverse=True)
        limit = _limit(request.query, default=BATCH_PAGE_DEFAULT, maximum=BATCH_PAGE_MAX)
        page, has_more = _page(records, request.query.get("after"), limit)
        body: JSONObject = {
            "object": "list",
            "data": [self._lifecycle.view(r, step=False) for r in page],
            "has_more": has_more,
        }
        if page:
            body["first_id"] = page[0].id
            body["last_id"] = page[-1].id
        return JsonReply(200, body)

    def _get_batch(self, request: Request, batch_id: str) -> Reply:
        return JsonReply(200, self._lifecycle.view(self._batch(batch_id), step=True))

    def _cancel_batch(self, request: Request, batch_id: str) -> Reply:
        return JsonReply(200, self._lifecycle.cancel(self._batch(batch_id)))

    def _batch(self, batch_id: str) -> BatchRecord:
        record = self._store.get_batch(batch_id)
        if record is None:
            raise not_found(f"No batch found with id '{batch_id}'.")
        return record


def _json_body(request: Request) -> JSONObject:
    raw = request.body.read_all(MAX_JSON_BODY)
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise bad_request(
            "We could not parse the JSON body of your request. The OpenAI API expects a "
            "JSON payload."
        )
    return body


def _missing(param: str) -> Exception:
    return bad_request(
        f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter"
    )


def _no_file(file_id: str) -> Exception:
    return not_found(f"No such File object: {file_id}", param="id")


def _limit(query: dict[str, str], *, default: int, maximum: int) -> int:
    raw = query.get("limit")
    if raw is None:
        return default
    try:
        limit = int(raw)
    except ValueError:
        raise bad_request(
            f"Invalid 'limit': expected an integer, got {raw!r}.", param="limit"
        ) from None
    if not 1 <= limit <= maximum:
        raise bad_request(
            f"Invalid 'limit': {limit}. It must be between 1 and {maximum}.",
            param="limit",
            code="integer_out_of_range",
        )
    return limit


_Item = TypeVar("_Item", FileRecord, BatchRecord)


def _page(items: list[_Item], after: str | None, limit: int) -> tuple[list[_Item], bool]:
    start = 0
    if after:
        ids = [item.id for item in items]
        start = ids.index(after) + 1 if after in ids else len(items)
    page = items[start : start + limit]
    return page, start + limit < len(items)
