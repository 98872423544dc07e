"""The emulator's store of files and batches.

File bytes live on disk (``data_dir/<file_id>``); only metadata is kept in memory.
:class:`Store` guards its maps with one lock; each :class:`BatchRecord` has its own lock
that the lifecycle holds while it moves the batch along (processing can take a while and
must not block unrelated requests). Lock order: a record's lock, then the store's lock.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from .faults import BatchFault
from .wire import IdFactory, JSONObject

BATCH_PURPOSES = frozenset({"batch", "batch_output"})
FILE_TTL_SECONDS = 30 * 24 * 3600  # batch files expire after 30 days on OpenAI
BATCH_WINDOW_SECONDS = 24 * 3600
IN_FLIGHT = frozenset({"in_progress", "finalizing", "cancelling"})
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})


def now() -> int:
    """Current Unix time in whole seconds."""
    return int(time.time())


@dataclass
class FileRecord:
    """Metadata of one stored file."""

    id: str
    filename: str
    purpose: str
    bytes: int
    created_at: int
    path: Path

    def to_json(self) -> JSONObject:
        """Render as an ``OpenAIFile`` object (absent optional fields are omitted)."""
        data: JSONObject = {
            "id": self.id,
            "object": "file",
            "bytes": self.bytes,
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
        }
        if self.purpose in BATCH_PURPOSES:
            data["expires_at"] = self.created_at + FILE_TTL_SECONDS
        return data


@dataclass(eq=False)
class BatchRecord:
    """Everything the emulator knows about one batch."""

    id: str
    seq: int
    input_file_id: str
    input_path: Path
    input_purpose: str
    input_bytes: int
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None
    created_at: int
    fault: BatchFault | None
    seed: int
    status: str = "validating"
    timestamps: dict[str, int] = field(default_factory=dict)
    model: str | None = None
    total: int = 0
    completed: int = 0
    failed: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: list[JSONObject] | None = None
    validated: bool = False
    in_progress_polls: int = 0
    progress: float = 0.0
    cancel_fraction: float = 0.0
    enqueued_tokens: int = 0
    ids_counted: bool = False
    lock: threading.RLock = field(default_factory=threading.RLock, repr=False)

    def to_json(self) -> JSONObject:
        """Render as a ``Batch`` object, omitting absent optional fields (the spec types them)."""
        data: JSONObject = {
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "input_file_id": self.input_file_id,
            "completion_window": self.completion_window,
            "status": self.status,
            "created_at": self.created_at,
            "expires_at": self.created_at + BATCH_WINDOW_SECONDS,
        }
        if self.model is not None:
            data["model"] = self.model
        if self.errors is not None:
            data["errors"] = {"object": "list", "data": [dict(e) for e in self.errors]}
        if self.output_file_id is not None:
            data["output_file_id"] = self.output_file_id
        if self.error_file_id is not None:
            data["error_file_id"] = self.error_file_id
        for name in (
            "in_progress_at",
            "finalizing_at",
            "completed_at",
            "failed_at",
            "expired_at",
            "cancelling_at",
            "cancelled_at",
        ):
            if name in self.timestamps:
                data[name] = self.timestamps[name]
        completed, failed = self.completed, self.failed
        if self.status == "in_progress":
            completed = int(self.total * self.progress)
        data["request_counts"] = {"total": self.total, "completed": completed, "failed": failed}
        data["usage"] = {
            "input_tokens": self.input_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": self.output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": self.input_tokens + self.output_tokens,
        }
        data["metadata"] = dict(self.metadata) if self.metadata is not None else None
        return data


class Store:
    """Files and batches of one emulator, plus the counters tests inspect.

    Args:
        data_dir: Directory for file bytes.
        seed: Seed of the id factory.
    """

    def __init__(self, data_dir: Path, *, seed: int) -> None:
        self.data_dir = data_dir
        self.ids = IdFactory(seed)
        self.lock = threading.RLock()
        self._files: dict[str, FileRecord] = {}
        self._batches: dict[str, BatchRecord] = {}
        self._custom_ids: Counter[str] = Counter()
        self._request_lines = 0
        self.batch_create_count = 0
        self._temp_names = 0

    # -- files ---------------------------------------------------------------------------

    def temp_path(self, label: str) -> Path:
        """A fresh path inside the data directory for a file being written."""
        with self.lock:
            self._temp_names += 1
            return self.data_dir / f".{label}.{self._temp_names}.part"

    def snapshot_input(self, file: FileRecord, batch_id: str) -> Path:
        """Give a batch its own link to the input bytes, so deleting the file is harmless.

        OpenAI keeps processing a batch whose input file was deleted; a hard link (or a copy
        where links are unsupported) gives the emulator the same behaviour at no cost.
        """
        path = self.data_dir / f".{batch_id}.input"
        try:
            os.link(file.path, path)
        except OSError:
            shutil.copyfile(file.path, path)
        return path

    def add_file(self, staged: Path, *, filename: str, purpose: str) -> FileRecord:
        """Move a fully written file into the store and register it."""
        file_id = self.ids.file_id()
        path = self.data_dir / file_id
        os.replace(staged, path)
        record = FileRecord(
            id=file_id,
            filename=filename,
            purpose=purpose,
            bytes=path.stat().st_size,
            created_at=now(),
            path=path,
        )
        with self.lock:
            self._files[file_id] = record
        return record

    def get_file(self, file_id: str) -> FileRecord | None:
        """The file with this id, if it exists."""
        with self.lock:
            return self._files.get(file_id)

    def remove_file(self, file_id: str) -> FileRecord | None:
        """Unregister a file and delete its bytes."""
        with self.lock:
            record = self._files.pop(file_id, None)
        if record is not None:
            record.path.unlink(missing_ok=True)
        return record

    def list_files(self) -> list[FileRecord]:
        """All files, oldest first."""
        with self.lock:
            return list(self._files.values())

    # -- batches ---------------------------------------------------------------------------

    def add_batch(self, record: BatchRecord) -> None:
        """Register a newly created batch."""
        with self.lock:
            self._batches[record.id] = record
            self.batch_create_count += 1

    def new_batch_seq(self) -> int:
        """Sequence number for the next batch (orders the list endpoint)."""
        with self.lock:
            return len(self._batches)

    def get_batch(self, batch_id: str) -> BatchRecord | None:
        """The batch with this id, if it exists."""
        with self.lock:
            return self._batches.get(batch_id)

    def list_batches(self) -> list[BatchRecord]:
        """All batches, oldest first."""
        with self.lock:
            return list(self._batches.values())

    def batches_reading(self, file_id: str) -> list[BatchRecord]:
        """Batches whose input is ``file_id``."""
        with self.lock:
            return [b for b in self._batches.values() if b.input_file_id == file_id]

    def in_flight_tokens(self, *, excluding: BatchRecord) -> int:
        """Enqueued-token estimate of every other batch of the same model that is still
        being worked on (OpenAI's limit is per model)."""
        with self.lock:
            others: Iterable[BatchRecord] = list(self._batches.values())
        return sum(
            b.enqueued_tokens
            for b in others
            if b is not excluding and b.status in IN_FLIGHT and b.model == excluding.model
        )

    # -- counters ----------------------------------------------------------------------------

    def record_requests(self, custom_ids: Counter[str], lines: int) -> None:
        """Add the requests of one created batch to the inspection counters."""
        with self.lock:
            self._custom_ids.update(custom_ids)
            self._request_lines += lines

    def custom_id_counts(self) -> dict[str, int]:
        """How often each ``custom_id`` was received, over all counted batches."""
        with self.lock:
            return dict(self._custom_ids)

    def request_lines(self) -> int:
        """Requests received, over all counted batches."""
        with self.lock:
            return self._request_lines
