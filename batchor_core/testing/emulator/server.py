"""HTTP plumbing: a threaded ``http.server`` that speaks HTTP/1.1 keep-alive.

Per request the handler authenticates, applies scripted HTTP faults, hands the request to
the :class:`~.routes.Router`, and writes the reply: JSON, a file streamed from disk with
``sendfile``, or nothing at all (a dropped connection). Request bodies are always consumed
so a kept-alive connection stays in sync.
"""

from __future__ import annotations

import contextlib
import json
import logging
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socketserver import BaseServer
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import parse_qsl

from .faults import FaultPlan
from .generation import Rng
from .multipart import BodyReader
from .routes import FileReply, JsonReply, Reply, Request, Router
from .wire import SERVER_ERROR_MESSAGE, ApiError, JSONObject, error_body, status_error

if TYPE_CHECKING:
    from socketserver import _RequestType

logger = logging.getLogger("batchor_core.testing.emulator")

_MISSING_KEY = (
    "You didn't provide an API key. You need to provide your API key in an Authorization "
    "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
)


class EmulatorHTTPServer(ThreadingHTTPServer):
    """The emulator's HTTP server: one thread per connection, all closable on stop.

    Args:
        address: ``(host, port)``; port 0 picks a free port.
        router: Handles the API endpoints.
        faults: Scripted HTTP faults.
        api_key: Required bearer token, or ``None`` to accept any non-empty one.
        seed: Seed for ``x-request-id`` values.
    """

    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int],
        *,
        router: Router,
        faults: FaultPlan,
        api_key: str | None,
        seed: int,
    ) -> None:
        super().__init__(address, _Handler)
        self.router = router
        self.faults = faults
        self.api_key = api_key
        self._request_ids = Rng(seed ^ 0x5EED5EED)
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()

    def next_request_id(self) -> str:
        """A fresh ``req_...`` id for the ``x-request-id`` header."""
        with self._lock:
            return f"req_{self._request_ids.next():016x}{self._request_ids.next():016x}"

    def process_request(self, request: _RequestType, client_address: Any) -> None:
        """Track the connection, then serve it on its own thread."""
        if isinstance(request, socket.socket):
            with self._lock:
                self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request: _RequestType) -> None:
        """Forget and close a finished connection."""
        if isinstance(request, socket.socket):
            with self._lock:
                self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        """Shut down every open connection (idle keep-alive ones included)."""
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "batchor-emulator"
    # Headers and body are separate writes; with Nagle on, each reply waits ~40 ms for
    # the client's delayed ACK.
    disable_nagle_algorithm = True

    def __init__(self, request: Any, client_address: Any, server: BaseServer) -> None:
        # Set before ``super().__init__``, which serves the whole connection.
        self.emulator = cast(EmulatorHTTPServer, server)
        super().__init__(request, client_address, server)

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s - " + format, self.address_string(), *args)

    def _dispatch(self, method: str) -> None:
        server = self.emulator
        request_id = server.next_request_id()
        path, _, query = self.path.partition("?")
        try:
            reader = self._body_reader()
        except ApiError as exc:
            self.close_connection = True
            self._send_json(exc.status, exc.body(), exc.headers, request_id)
            return
        try:
            self._authorize()
            fault = server.faults.take_http_fault(method, path)
            if fault is not None:
                reader.drain()
                if fault.drop:
                    self._drop()
                    return
                raise status_error(
                    fault.status,
                    message=fault.message,
                    code=fault.code,
                    retry_after=fault.retry_after,
                )
            reply: Reply = server.router.handle(
                Request(
                    method=method,
                    path=path,
                    query=dict(parse_qsl(query)),
                    content_type=self.headers.get("Content-Type", ""),
                    body=reader,
                )
            )
            reader.drain()
        except ApiError as exc:
            self._finish_body(reader)
            self._send_json(exc.status, exc.body(), exc.headers, request_id)
            return
        except Exception:
            logger.exception("emulator failed on %s %s", method, self.path)
            self._finish_body(reader)
            self._send_json(500, error_body(SERVER_ERROR_MESSAGE, "server_error"), {}, request_id)
            return
        if isinstance(reply, JsonReply):
            self._send_json(reply.status, reply.body, reply.headers, request_id)
        elif isinstance(reply, FileReply):
            self._send_file(reply, request_id)
        else:
            self._drop()

    def _body_reader(self) -> BodyReader:
        chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
        raw_length = self.headers.get("Content-Length")
        try:
            length = int(raw_length) if raw_length is not None else None
        except ValueError:
            raise ApiError(400, "Invalid Content-Length header.") from None
        return BodyReader(self.rfile, length=length, chunked=chunked)

    def _authorize(self) -> None:
        scheme, _, token = self.headers.get("Authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise ApiError(401, _MISSING_KEY)
        expected = self.emulator.api_key
        if expected is not None and token != expected:
            shown = token[:4] + "*" * 4 + token[-4:] if len(token) > 8 else "*" * len(token)
            raise ApiError(
                401,
                f"Incorrect API key provided: {shown}. You can find your API key at "
                "https://platform.openai.com/account/api-keys.",
                code="invalid_api_key",
            )

    def _finish_body(self, reader: BodyReader) -> None:
        try:
            reader.drain()
        except (ApiError, OSError):
            self.close_connection = True

    def _drop(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    def _send_json(
        self, status: int, body: JSONObject, headers: dict[str, str], request_id: str
    ) -> None:
        data = json.dumps(body).encode("utf-8")
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("x-request-id", request_id)
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _send_file(self, reply: FileReply, request_id: str) -> None:
        try:
            handle = open(reply.path, "rb")  # noqa: SIM115 - closed below, after sendfile
        except FileNotFoundError:  # deleted between lookup and read
            self._send_json(
                404, error_body("No such File object.", "invalid_request_error"), {}, request_id
            )
            return
        with handle:
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(reply.size))
            self.send_header("x-request-id", request_id)
            self.end_headers()
            self.wfile.flush()
            self.connection.sendfile(handle)
