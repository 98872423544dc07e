"""A tiny canned OpenAI Files/Batches server for the provider's wire-level tests.

Real HTTP on 127.0.0.1:0, so the real SDK (its retries, multipart upload and streaming)
runs unmodified. It knows just enough of the API for the provider's calls, plus faults
``OpenAIEmulator`` does not script: any status with any body and headers, a dropped
connection, a download shorter than announced, huge generated downloads.

Uploaded bodies are spooled to a temporary file, never held in memory, so memory
measurements of the client side are not polluted by the server.
"""

from __future__ import annotations

import json
import re
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qs, urlsplit

_CHUNK = 64 * 1024
_SMALL_BODY = 2 * 1024 * 1024


@dataclass
class Fault:
    """A scripted failure for the next ``count`` matching requests."""

    method: str
    path: str
    count: int
    status: int | None = None  # None: drop the connection without answering
    headers: dict[str, str] = field(default_factory=dict)
    body: dict[str, Any] | None = None
    commit: bool = False  # with status None: create the batch, then drop (commit-then-fail)


@dataclass
class StoredFile:
    file_id: str
    filename: str
    size: int
    content: bytes | None = None  # kept for small uploads only
    generator: Callable[[], Iterator[bytes]] | None = None


class FakeOpenAI:
    """``with FakeOpenAI() as fake: fake.base_url`` -- see the module docstring."""

    def __init__(self) -> None:
        self.files: dict[str, StoredFile] = {}
        self.batches: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str]] = []
        self.auth_headers: list[str] = []
        self._faults: list[Fault] = []
        self._lock = threading.Lock()
        self._ids = 0
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}/v1"

    def __enter__(self) -> FakeOpenAI:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    # ----------------------------------------------------------------- scripting

    def fail(
        self, method: str, path: str, *, status: int | None, count: int = 1, **kw: Any
    ) -> None:
        """Answer the next ``count`` requests to ``method path`` with ``status`` (None: drop)."""
        with self._lock:
            self._faults.append(Fault(method, path, count, status, **kw))

    def add_file(self, filename: str, size: int, generator: Callable[[], Iterator[bytes]]) -> str:
        """Register a (possibly huge) file served from ``generator``."""
        with self._lock:
            file_id = self._next_id("file")
            self.files[file_id] = StoredFile(file_id, filename, size, generator=generator)
        return file_id

    def calls(self, method: str, path: str) -> int:
        """How many requests ``method path`` received (faulted ones included)."""
        return sum(1 for m, p in self.requests if m == method and p == path)

    def _next_id(self, prefix: str) -> str:
        self._ids += 1
        return f"{prefix}-{self._ids:04d}"

    def _take_fault(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.method == method and re.fullmatch(fault.path, path):
                    fault.count -= 1
                    if fault.count <= 0:
                        self._faults.remove(fault)
                    return fault
        return None

    # ----------------------------------------------------------------- routes

    def new_batch(self, body: dict[str, Any]) -> dict[str, Any]:
        with self._lock:
            batch_id = self._next_id("batch")
            batch = {
                "id": batch_id,
                "object": "batch",
                "endpoint": body["endpoint"],
                "input_file_id": body["input_file_id"],
                "completion_window": body["completion_window"],
                "status": "validating",
                "created_at": int(time.time()),
                "metadata": body.get("metadata"),
                "request_counts": None,
                "errors": None,
            }
            self.batches[batch_id] = batch
        return batch

    def list_batches(self, query: dict[str, list[str]]) -> dict[str, Any]:
        limit = int(query.get("limit", ["20"])[0])
        after = query.get("after", [None])[0]
        with self._lock:
            newest_first = sorted(self.batches.values(), key=lambda b: b["id"], reverse=True)
        if after is not None:
            ids = [b["id"] for b in newest_first]
            newest_first = newest_first[ids.index(after) + 1 :]
        page = newest_first[:limit]
        return {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(newest_first) > limit,
        }


def _handler_for(fake: FakeOpenAI) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            return

        def _route(self) -> None:
            url = urlsplit(self.path)
            path, query = url.path, parse_qs(url.query)
            fake.requests.append((self.command, path))
            fake.auth_headers.append(self.headers.get("Authorization", ""))
            fault = fake._take_fault(self.command, path)
            with tempfile.SpooledTemporaryFile(max_size=_SMALL_BODY) as spooled:
                self._read_body(spooled)
                if fault is None:
                    self._dispatch(path, query, spooled)
                elif fault.status is not None:
                    body = fault.body or {"error": {"message": "injected", "code": None}}
                    self._json(fault.status, body, fault.headers)
                else:
                    if fault.commit:
                        fake.new_batch(json.loads(spooled.read()))
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)

        do_GET = do_POST = do_DELETE = _route

        def _read_body(self, spooled: tempfile.SpooledTemporaryFile[bytes]) -> None:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                while True:
                    size = int(self.rfile.readline().split(b";")[0], 16)
                    if size == 0:
                        self.rfile.readline()
                        break
                    self._copy(size, spooled)
                    self.rfile.readline()
            else:
                self._copy(int(self.headers.get("Content-Length") or 0), spooled)
            spooled.seek(0)

        def _copy(self, size: int, out: tempfile.SpooledTemporaryFile[bytes]) -> None:
            while size > 0:
                chunk = self.rfile.read(min(size, _CHUNK))
                if not chunk:
                    break
                out.write(chunk)
                size -= len(chunk)

        def _dispatch(
            self, path: str, query: dict[str, list[str]], body: tempfile.SpooledTemporaryFile[bytes]
        ) -> None:
            parts = path.strip("/").split("/")[1:]  # drop "v1"
            if parts == ["files"] and self.command == "POST":
                self._upload(body)
            elif len(parts) == 3 and parts[0] == "files" and parts[2] == "content":
                self._download(parts[1])
            elif len(parts) == 2 and parts[0] == "files" and self.command == "DELETE":
                if fake.files.pop(parts[1], None) is None:
                    self._json(404, {"error": {"message": "No such file", "code": None}})
                else:
                    self._json(200, {"id": parts[1], "object": "file", "deleted": True})
            elif parts == ["batches"] and self.command == "POST":
                self._json(200, fake.new_batch(json.loads(body.read())))
            elif parts == ["batches"]:
                self._json(200, fake.list_batches(query))
            elif len(parts) >= 2 and parts[0] == "batches" and parts[1] in fake.batches:
                batch = fake.batches[parts[1]]
                if parts[2:] == ["cancel"]:
                    batch["status"] = "cancelling"
                self._json(200, batch)
            else:
                self._json(404, {"error": {"message": f"No route {path}", "code": None}})

        def _upload(self, body: tempfile.SpooledTemporaryFile[bytes]) -> None:
            body.seek(0, 2)
            size = body.tell()
            body.seek(0)
            content = body.read() if size <= _SMALL_BODY else None
            filename = "upload.jsonl"
            if content is not None:
                match = re.search(rb'name="file"; filename="([^"]+)"', content)
                filename = match.group(1).decode() if match else filename
                content = _file_part(content)
            with fake._lock:
                file_id = fake._next_id("file")
                fake.files[file_id] = StoredFile(file_id, filename, size, content=content)
            self._json(
                200,
                {
                    "id": file_id,
                    "object": "file",
                    "bytes": size,
                    "created_at": int(time.time()),
                    "filename": filename,
                    "purpose": "batch",
                    "status": "processed",
                },
            )

        def _download(self, file_id: str) -> None:
            stored = fake.files.get(file_id)
            if stored is None:
                self._json(404, {"error": {"message": "No such file", "code": None}})
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            if stored.generator is None:
                data = stored.content or b""
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                return
            self.send_header("Content-Length", str(stored.size))
            self.end_headers()
            written = 0
            try:
                for chunk in stored.generator():
                    self.wfile.write(chunk)
                    written += len(chunk)
            except (BrokenPipeError, ConnectionResetError):
                written = -1
            if written != stored.size:  # short body: the client must see a dropped stream
                self.close_connection = True

        def _json(
            self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
        ) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("x-request-id", "req_fake")
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)

    return Handler


def _file_part(multipart: bytes) -> bytes | None:
    """The content of the ``file`` part of a small multipart body."""
    boundary = multipart.split(b"\r\n", 1)[0]
    for part in multipart.split(boundary):
        head, _, rest = part.partition(b"\r\n\r\n")
        if b'name="file"' in head:
            return rest.removesuffix(b"\r\n")
    return None
