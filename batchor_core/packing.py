"""Packing request lines into chunk files (one chunk = one provider batch).

At most one chunk is open for appends at a time. A chunk whose limits are reached is
closed: its final size is committed with the items that went into it, and only then is
its file published (renamed into place) and the chunk marked ``sealed``. A crash between
the two is repaired by :func:`seal_chunk`, which cuts the file back to the committed size
before publishing, so bytes written after the last commit never reach the provider.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from datetime import datetime

from batchor_core import failpoints
from batchor_core.models import ChunkPolicy
from batchor_core.ports import ArtifactStore, ArtifactWriter, ChunkRecord, ChunkState, StateStore

__all__ = [
    "ChunkPacker",
    "batch_metadata",
    "chunk_key",
    "custom_id",
    "key_segment",
    "output_key",
    "parse_custom_id",
    "request_file_problem",
    "request_line_template",
    "seal_chunk",
    "upload_name",
]


def key_segment(value: str) -> str:
    """``value`` as ONE segment of a ``/``-separated artifact key, injectively.

    ``%`` and ``/`` are percent-encoded (``%25``, ``%2F``), so ``"a"``, ``"a/"`` and
    ``"a%2F"`` name three different directories. Ids without either character are
    unchanged, so runs started before this encoding keep their files.
    """
    return value.replace("%", "%25").replace("/", "%2F")


def chunk_key(run_id: str, chunk_id: str) -> str:
    """Artifact key of a chunk's request JSONL."""
    return f"runs/{key_segment(run_id)}/requests/{key_segment(chunk_id)}.jsonl"


def output_key(run_id: str, chunk_id: str, batch_id: str, kind: str) -> str:
    """Artifact key of a batch's downloaded ``output`` or ``error`` file."""
    name = "-".join(key_segment(p) for p in (chunk_id, batch_id, kind))
    return f"runs/{key_segment(run_id)}/outputs/{name}.jsonl"


def custom_id(seq: int, submission: int) -> str:
    """The provider custom_id of one submission of one item (unique per attempt)."""
    return f"i{seq}s{submission}"


# At most 18 digits of seq (BIGINT) and 9 of submission (INTEGER): a longer number is not
# one we made, and taken for an item it would overflow the store's update (or int()).
_OUR_CUSTOM_ID = re.compile(r"i([0-9]{1,18})s([0-9]{1,9})").fullmatch


def parse_custom_id(value: str) -> tuple[int, int] | None:
    """``(seq, submission)`` from a custom_id we made (``i<seq>s<submission>``), or None."""
    found = _OUR_CUSTOM_ID(value)
    return None if found is None else (int(found[1]), int(found[2]))


def request_line(cid: str, endpoint: bytes, body_json: bytes) -> bytes:
    """One JSONL request line; ``custom_id`` comes first so retries can swap it cheaply."""
    return b'{"custom_id":"%s","method":"POST","url":"%s","body":%s}\n' % (
        cid.encode(),
        endpoint,
        body_json,
    )


def request_line_template(endpoint: bytes, submission: int = 1) -> bytes:
    """A ``%`` template of the request lines of one submission: ``template % (seq,
    body_json)`` is ``request_line(custom_id(seq, submission), endpoint, body_json)``,
    with the framing formatted once instead of once per line."""
    url = endpoint.replace(b"%", b"%%")
    return b'{"custom_id":"i%%ds%d","method":"POST","url":"%s","body":%%s}\n' % (submission, url)


def swap_custom_id(line: bytes, new_id: str) -> bytes:
    """The same request line with another custom_id; the body bytes are untouched."""
    prefix = b'{"custom_id":"'
    if not line.startswith(prefix):
        raise ValueError("request line does not start with its custom_id")
    end = line.index(b'"', len(prefix))
    return prefix + new_id.encode() + line[end:]


def seal_chunk(store: StateStore, artifacts: ArtifactStore, chunk: ChunkRecord) -> ChunkRecord:
    """Publish a closed chunk's file at its committed size and mark it sealed."""
    key = chunk_key(chunk.run_id, chunk.chunk_id)
    if artifacts.exists(key):
        digest = artifacts.sha256(key)  # published before a crash; the rename was atomic
    else:
        writer = artifacts.open_append(key, truncate_to=chunk.byte_count)
        writer.sync()
        writer.close()
        digest = artifacts.publish(key)
        failpoints.reach("seal.published")
    sealed = dataclasses.replace(chunk, state=ChunkState.SEALED, sha256=digest)
    store.save_chunk(sealed, expected=ChunkState.BUILDING)
    return sealed


def request_file_problem(artifacts: ArtifactStore, chunk: ChunkRecord) -> str | None:
    """Why a sealed chunk's request file must not be uploaded, or None if it is intact.

    A file deleted or changed (its sha256 differs from the one recorded at sealing) is
    a fault no retry fixes: the run pauses with this reason. A store that cannot be
    reached raises :class:`ArtifactError` instead, and the next step tries again.
    """
    key = chunk_key(chunk.run_id, chunk.chunk_id)
    what = f"request file {key} of chunk {chunk.chunk_id}"
    fix = "restore it and resume() the run, or cancel it"
    if not artifacts.exists(key):
        return f"{what} is missing (deleted since it was prepared); {fix}"
    digest = artifacts.sha256(key)
    if chunk.sha256 and digest != chunk.sha256:
        return (
            f"{what} changed since it was prepared (sha256 {digest[:12]} != "
            f"{chunk.sha256[:12]}); {fix}"
        )
    return None


_WRITE_LINES = 1000


class ChunkPacker:
    """Appends request lines to chunks, opening a new chunk when the policy says so.

    Args:
        run_id: The run.
        store: Control-plane store (used to seal closed chunks after a commit).
        artifacts: Where chunk files live.
        policy: Request and byte limits per chunk.
        open_chunk: The chunk still open from an earlier session, if any.
        next_chunk_seq: Sequence number for the next new chunk.
        now: Timestamp for new chunk records.
        model: The requests' model, recorded on each chunk (the budget's key).
        max_tokens: Most estimated input tokens in one chunk (the enqueued-token
            limit), or None.
    """

    def __init__(
        self,
        *,
        run_id: str,
        store: StateStore,
        artifacts: ArtifactStore,
        policy: ChunkPolicy,
        open_chunk: ChunkRecord | None,
        next_chunk_seq: int,
        now: datetime,
        model: str | None = None,
        max_tokens: int | None = None,
    ) -> None:
        self._model = model
        self._max_tokens = max_tokens
        self._run_id = run_id
        self._store = store
        self._artifacts = artifacts
        self._policy = policy
        self._now = now
        self._next_seq = next_chunk_seq
        self._current: ChunkRecord | None = open_chunk
        self._writer: ArtifactWriter | None = None
        if open_chunk is not None:
            self._writer = artifacts.open_append(
                chunk_key(run_id, open_chunk.chunk_id), truncate_to=open_chunk.byte_count
            )
        self._count = open_chunk.request_count if open_chunk else 0
        self._bytes = open_chunk.byte_count if open_chunk else 0
        self._tokens = open_chunk.est_tokens if open_chunk else 0
        self._closed: list[ChunkRecord] = []
        self._touched: dict[str, ChunkRecord] = {}
        # Lines of the open chunk not yet handed to its writer: written in one call per
        # _WRITE_LINES lines, at sync() and when the chunk closes, not one call per line.
        self._unwritten: list[bytes] = []
        self._max_requests = policy.max_requests
        self._max_bytes = policy.max_bytes

    def fits_alone(self, line: bytes, tokens: int = 0) -> bool:
        """Whether a line (of ``tokens`` estimated tokens) fits in an empty chunk at all."""
        return len(line) <= self._policy.max_bytes and (
            self._max_tokens is None or tokens <= self._max_tokens
        )

    def would_open_new(self, line: bytes, tokens: int = 0) -> bool:
        """Whether ``line`` would not fit in the open chunk (or there is none)."""
        return self._current is None or self._full(line, tokens)

    def _full(self, line: bytes, tokens: int) -> bool:
        return (
            self._count >= self._policy.max_requests
            or self._bytes + len(line) > self._policy.max_bytes
            or (self._max_tokens is not None and self._tokens + tokens > self._max_tokens)
        )

    def add(self, line: bytes, tokens: int = 0) -> str:
        """Append ``line`` (``tokens`` estimated input tokens) to the open chunk, opening
        a new one if needed; return its id."""
        if self._current is not None and self._full(line, tokens):
            self._close_current()
        if self._current is None:
            self._open_new()
        assert self._current is not None
        self._unwritten.append(line)
        if len(self._unwritten) >= _WRITE_LINES:
            self._write_out()
        self._count += 1
        self._bytes += len(line)
        self._tokens += tokens
        return self._current.chunk_id

    def offer(self, line: bytes, tokens: int = 0) -> str | None:
        """:meth:`add` for a line that fits in an empty chunk; None (and nothing added)
        for one that does not fit even there (see :meth:`fits_alone`).

        One call per ingested item, so the limits are checked inline.
        """
        size = len(line)
        limit = self._max_tokens
        if size > self._max_bytes or (limit is not None and tokens > limit):
            return None
        current = self._current
        if current is None or (
            self._count >= self._max_requests
            or self._bytes + size > self._max_bytes
            or (limit is not None and self._tokens + tokens > limit)
        ):
            self._close_current()
            current = self._open_new()
        self._unwritten.append(line)
        if len(self._unwritten) >= _WRITE_LINES:
            self._write_out()
        self._count += 1
        self._bytes += size
        self._tokens += tokens
        return current.chunk_id

    def _write_out(self) -> None:
        """Hand the buffered lines of the open chunk to its writer."""
        if self._unwritten:
            assert self._writer is not None
            self._writer.write(b"".join(self._unwritten))
            self._unwritten = []

    def _snapshot(self) -> ChunkRecord:
        assert self._current is not None
        return dataclasses.replace(
            self._current,
            request_count=self._count,
            byte_count=self._bytes,
            est_tokens=self._tokens,
        )

    def sync(self) -> list[ChunkRecord]:
        """Make written lines durable; return the chunk records to commit with the items."""
        if self._writer is not None:
            self._write_out()
            self._writer.sync()
        if self._current is not None and self._count > 0:
            self._touched[self._current.chunk_id] = self._snapshot()
        return list(self._touched.values())

    def after_commit(self) -> list[ChunkRecord]:
        """Seal the chunks closed since the last commit; return them sealed."""
        sealed = [seal_chunk(self._store, self._artifacts, c) for c in self._closed]
        self._closed = []
        self._touched = {}
        return sealed

    def finish(self) -> list[ChunkRecord]:
        """Close the open chunk too, then commit and seal everything (end of input)."""
        if self._current is not None and self._count > 0:
            self._close_current()
        elif self._writer is not None:
            self._writer.close()
            self._writer = None
        for chunk in self._closed:
            self._store.save_chunk(chunk, expected=None)
        return self.after_commit()

    def abandon(self) -> None:
        """Close file handles without sealing (the caller failed before committing)."""
        self._unwritten = []
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def _open_new(self) -> ChunkRecord:
        chunk_id = f"c{self._next_seq:05d}"
        chunk = ChunkRecord(
            run_id=self._run_id,
            chunk_id=chunk_id,
            seq=self._next_seq,
            state=ChunkState.BUILDING,
            request_count=0,
            byte_count=0,
            sha256=None,
            file_id=None,
            batch_id=None,
            provider_status=None,
            not_before=None,
            last_error=None,
            created_at=self._now,
            updated_at=self._now,
            model=self._model,
        )
        self._next_seq += 1
        self._writer = self._artifacts.open_append(chunk_key(self._run_id, chunk_id), truncate_to=0)
        self._current = chunk
        self._count = 0
        self._bytes = 0
        self._tokens = 0
        return chunk

    def _close_current(self) -> None:
        if self._current is None:
            return
        if self._writer is not None:
            self._write_out()
            self._writer.sync()
            self._writer.close()
            self._writer = None
        final = self._snapshot()
        self._touched[final.chunk_id] = final
        self._closed.append(final)
        self._current = None


def upload_name(run_id: str, chunk: ChunkRecord) -> str:
    """The provider filename of a chunk's upload (found again after a crash)."""
    run_hash = hashlib.sha256(run_id.encode()).hexdigest()[:12]
    return f"batchor-{run_hash}-{chunk.chunk_id}-{(chunk.sha256 or '')[:12]}.jsonl"


def batch_metadata(run_id: str, chunk: ChunkRecord) -> dict[str, str]:
    """The metadata a chunk's batch is created with (found again by it)."""
    return {
        "batchor_run_id": run_id[:512],
        "batchor_chunk": chunk.chunk_id,
        "batchor_sha256": (chunk.sha256 or "")[:32],
    }
