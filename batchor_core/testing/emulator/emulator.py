"""``OpenAIEmulator``: the public face of the emulator (lifecycle and inspection)."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import weakref
from pathlib import Path
from types import TracebackType
from typing import Self

from .faults import FaultPlan
from .lifecycle import BatchLifecycle, ProcessingMode, Settings
from .routes import Router
from .server import EmulatorHTTPServer
from .state import Store
from .wire import JSONObject


class OpenAIEmulator:
    """A local HTTP server that behaves like OpenAI's Files and Batches API.

    Point the official SDK at it: ``OpenAI(api_key="sk-test", base_url=emu.base_url)``.
    Everything is deterministic in ``seed`` (ids, answers, output order) except timestamps.

    Example:
        >>> with OpenAIEmulator(processing="instant", seed=0) as emu:  # doctest: +SKIP
        ...     client = OpenAI(api_key="sk-test", base_url=emu.base_url)

    Args:
        host: Interface to bind.
        port: Port to bind; 0 picks a free one (see :attr:`port`).
        processing: ``"instant"``: a batch is terminal when first read. ``"stepwise"``:
            each retrieve moves it one step (validating, in_progress, finalizing, completed).
        seed: Seed for everything that is generated.
        data_dir: Where file bytes are stored; a temporary directory (removed on
            :meth:`stop`) by default. Only bytes live there; metadata is in memory.
        api_key: If set, requests must carry ``Authorization: Bearer <api_key>``; if not,
            any non-empty bearer token is accepted.
        enqueued_token_limit: If set, a batch whose estimated input tokens (input bytes / 4)
            plus those of in-flight batches of the same model exceed it ends ``failed`` with
            ``token_limit_exceeded``.
        shuffle_output: Emit output lines in a seeded order that differs from input order.
        max_requests_per_file: Requests allowed in one input file.
        max_file_bytes: Size allowed for one input file.
        in_progress_polls: In stepwise mode, how many retrieves see ``in_progress``.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        processing: ProcessingMode = "instant",
        seed: int = 0,
        data_dir: str | os.PathLike[str] | None = None,
        api_key: str | None = None,
        enqueued_token_limit: int | None = None,
        shuffle_output: bool = True,
        max_requests_per_file: int = 50_000,
        max_file_bytes: int = 200 * 1024 * 1024,
        in_progress_polls: int = 1,
    ) -> None:
        if processing not in ("instant", "stepwise"):
            raise ValueError(f"processing must be 'instant' or 'stepwise', not {processing!r}")
        if in_progress_polls < 1:
            raise ValueError("in_progress_polls must be at least 1")
        self._host = host
        self._requested_port = port
        self._api_key = api_key
        self._seed = seed
        if data_dir is None:
            path = Path(tempfile.mkdtemp(prefix="batchor-emulator-"))
            self._cleanup: weakref.finalize[[str], OpenAIEmulator] | None = weakref.finalize(
                self, _remove_tree, str(path)
            )
        else:
            path = Path(data_dir)
            path.mkdir(parents=True, exist_ok=True)
            self._cleanup = None
        self._data_dir = path
        self.faults = FaultPlan()
        """The scripted faults (see :class:`FaultPlan`)."""
        settings = Settings(
            processing=processing,
            seed=seed,
            in_progress_polls=in_progress_polls,
            enqueued_token_limit=enqueued_token_limit,
            shuffle_output=shuffle_output,
            max_requests_per_file=max_requests_per_file,
            max_file_bytes=max_file_bytes,
        )
        self._store = Store(path, seed=seed)
        self._lifecycle = BatchLifecycle(self._store, self.faults, settings)
        self._server: EmulatorHTTPServer | None = None
        self._stopped = False
        self._thread: threading.Thread | None = None

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> Self:
        """Bind the socket and serve in a background thread; returns ``self``."""
        if self._server is not None:
            raise RuntimeError("the emulator is already running")
        if self._stopped:
            raise RuntimeError("a stopped emulator cannot be restarted; create a new one")
        server = EmulatorHTTPServer(
            (self._host, self._requested_port),
            router=Router(self._store, self._lifecycle, self.faults),
            faults=self.faults,
            api_key=self._api_key,
            seed=self._seed,
        )
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.02},
            name=f"batchor-emulator-{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, close connections and remove the temporary data directory.

        Stopping is final: state lives only in this object and its temporary directory.
        """
        self._stopped = True
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.close_connections()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._cleanup is not None:
            self._cleanup()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The bound port (only known once started)."""
        if self._server is None:
            raise RuntimeError("the emulator is not running; call start() first")
        return int(self._server.server_address[1])

    @property
    def host(self) -> str:
        """The interface the server binds."""
        return self._host

    @property
    def base_url(self) -> str:
        """Base URL for the SDK, e.g. ``http://127.0.0.1:PORT/v1``."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}/v1"

    @property
    def data_dir(self) -> Path:
        """Directory holding the file bytes."""
        return self._data_dir

    # -- inspection --------------------------------------------------------------------

    def batches(self) -> list[JSONObject]:
        """Current batch objects, oldest first (instant mode settles them first)."""
        return [self._lifecycle.view(r, step=False) for r in self._store.list_batches()]

    def batch(self, batch_id: str) -> JSONObject:
        """The current batch object for ``batch_id`` without stepping it.

        Raises:
            KeyError: If there is no such batch.
        """
        record = self._store.get_batch(batch_id)
        if record is None:
            raise KeyError(batch_id)
        return self._lifecycle.view(record, step=False)

    @property
    def batch_create_count(self) -> int:
        """Batches created so far, including commit-then-fail ones."""
        return self._store.batch_create_count

    def files(self) -> list[JSONObject]:
        """Current file objects, oldest first."""
        return [f.to_json() for f in self._store.list_files()]

    def file_content(self, file_id: str) -> bytes:
        """The bytes of a stored file (for assertions on small files).

        Raises:
            KeyError: If there is no such file.
        """
        record = self._store.get_file(file_id)
        if record is None:
            raise KeyError(file_id)
        return record.path.read_bytes()

    def custom_id_counts(self) -> dict[str, int]:
        """How many times each ``custom_id`` was received, over all created batches."""
        self._count_all()
        return self._store.custom_id_counts()

    def request_bodies_seen(self) -> int:
        """Request lines received, over all created batches."""
        self._count_all()
        return self._store.request_lines()

    def release_batches(self) -> None:
        """Stop holding batches in ``in_progress`` (see ``FaultPlan.hold_batches``)."""
        self.faults.hold_batches(False)

    def _count_all(self) -> None:
        for record in self._store.list_batches():
            self._lifecycle.ensure_counted(record)


def _remove_tree(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)
