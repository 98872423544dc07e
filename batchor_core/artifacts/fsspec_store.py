"""Artifacts on object storage through fsspec: ``s3://``, ``gs://``, ``az://``, ``file://``,
``memory://``.

Object stores cannot append, and a run started on one host may be resumed on another, so
a request file being built never lives only on the builder's disk. It is kept in the
bucket as a chain of immutable *parts* under ``<root>/.staging/<key>/``: every
:meth:`ArtifactWriter.sync` uploads the bytes written since the last one as a part
named ``<start>-<generation>-<token>-<end>-<sha256>``. Whoever opens the file next (this
process, or another one on another host holding the run's lease) rebuilds it from the
chain, cut to the size committed in the control-plane store. The writer also keeps a
private local copy, so the process that built a file publishes it without reading the
parts back.

Publishing streams the file (each part's bytes checked against the sha256 in its
name) into one object under its final key and only then deletes the parts: on S3,
GCS and Azure an object becomes visible only when its upload completes, and elsewhere
it is written under a temporary name and renamed, so no half-written object is ever
read as complete. Each open writer takes a new generation, higher than every part
listed; at each offset the chain follows the newest generation, so parts a dead
holder left beyond the committed size are never part of the published file.

Keys are mapped exactly as :class:`LocalArtifactStore` maps them (sanitised path segments,
injective per run id); no key can reach ``.staging`` or ``.tmp``. Credentials come from
the provider's standard environment or ``storage_options``, never from the store, and
are masked in ``repr``. fsspec and the protocol's library (s3fs, gcsfs, adlfs) are
imported only when a store is built.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import tempfile
import threading
import uuid
import weakref
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from batchor_core.artifacts.local import safe_segment
from batchor_core.artifacts.parts import (
    S3_PROTOCOLS,
    S3FS_TRIES,
    CallerError,
    ObjectReader,
    Part,
    bounded_options,
    mask_url,
    masked,
    normal_url,
    parse_part,
    part_name,
    passing,
)
from batchor_core.artifacts.parts import chain as chain_of
from batchor_core.errors import ArtifactError, BatchorError, ConfigurationError

__all__ = ["FsspecArtifactStore"]

# Protocols whose objects appear only when their upload completes (write in place).
_OBJECT_PROTOCOLS = frozenset({"s3", "s3a", "gs", "gcs", "az", "abfs", "abfss", "adl"})
_EXTRAS = {
    "s3": "s3",
    "s3a": "s3",
    "gs": "gcs",
    "gcs": "gcs",
    "az": "azure",
    "abfs": "azure",
    "abfss": "azure",
    "adl": "azure",
}
_STAGING = ".staging"
_TMP = ".tmp"
_BLOCK = 5 * 2**20  # the smallest S3 part; memory per open file is a few times this
_COPY = 1024 * 1024


@dataclass(slots=True)
class _Staged:
    """This process's local copy of a file being built (valid while it is the newest)."""

    path: Path
    gen: int
    token: str
    synced: int


class _FsspecWriter:
    def __init__(self, store: FsspecArtifactStore, key: str, staged: _Staged) -> None:
        self._store = store
        self._key = key
        self._staged = staged
        try:
            self._fh: BinaryIO = open(staged.path, "r+b", buffering=_COPY)  # noqa: SIM115
            self._fh.seek(0, os.SEEK_END)
        except OSError as exc:
            raise ArtifactError(f"cannot stage {key!r} locally: {exc}") from exc

    # The local copy is a scratch file; a full disk surfaces here as on LocalArtifactStore.
    def write(self, data: bytes) -> None:
        try:
            self._fh.write(data)
        except OSError as exc:
            raise ArtifactError(f"cannot stage {self._key!r} locally: {exc}") from exc

    def sync(self) -> int:
        try:
            self._fh.flush()
            size = self._fh.tell()
        except OSError as exc:
            raise ArtifactError(f"cannot stage {self._key!r} locally: {exc}") from exc
        if size > self._staged.synced:
            self._store._upload_segment(self._key, self._staged, self._staged.synced, size)
            self._staged.synced = size
        return size

    def close(self) -> None:
        try:
            self._fh.close()
        except OSError as exc:
            raise ArtifactError(f"cannot stage {self._key!r} locally: {exc}") from exc


class FsspecArtifactStore:
    """Artifact store on any fsspec filesystem, for runs carried by several hosts.

    Args:
        url: Where artifacts live: ``s3://bucket/prefix``, ``gs://bucket/prefix``,
            ``az://container/prefix``, ``file:///path`` or ``memory://name``.
        storage_options: Passed to the fsspec filesystem (for S3 for example
            ``endpoint_url``, ``key``, ``secret``, ``client_kwargs``). Leave credentials
            out to use the standard environment (``AWS_ACCESS_KEY_ID``,
            ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``, instance roles, ...).

    Raises:
        ConfigurationError: fsspec or the protocol's library is not installed, or the URL
            is not one fsspec understands.
    """

    def __init__(self, url: str, *, storage_options: Mapping[str, Any] | None = None) -> None:
        url = normal_url(url)
        self.url = url if url.rstrip("/").endswith(":") else url.rstrip("/")
        self._options = dict(storage_options or {})
        scheme = url.split("://", 1)[0] if "://" in url else "file"
        options = bounded_options(scheme, self._options)
        path = url.split("://", 1)[1] if "://" in url else url
        if scheme in _OBJECT_PROTOCOLS and (path.startswith("/") or not path.strip("/")):
            raise ConfigurationError(
                f"artifacts URL {mask_url(url)!r} names no bucket: use {scheme}://bucket/prefix"
            )
        try:
            import fsspec
            from fsspec.core import url_to_fs
        except ImportError as exc:
            raise ConfigurationError(
                f"artifacts at {mask_url(url)} need fsspec: pip install "
                f"'batchor[{_EXTRAS.get(scheme, 's3')}]'"
            ) from exc
        try:
            fs, root = url_to_fs(url, **options)
        except ImportError as exc:
            raise ConfigurationError(
                f"artifacts at {mask_url(url)} need the {scheme}:// filesystem: pip install "
                f"'batchor[{_EXTRAS.get(scheme, scheme)}]' ({exc})"
            ) from exc
        except (ValueError, TypeError) as exc:
            raise ConfigurationError(f"cannot use artifacts at {self!r}: {exc}") from exc
        self._fs: fsspec.AbstractFileSystem = fs
        if scheme in S3_PROTOCOLS and getattr(fs, "retries", 0) > S3FS_TRIES:
            # s3fs retries each call (5 times by default) around botocore's own retries:
            # against an endpoint that accepts connections and never answers, that is
            # 25 read timeouts (25 minutes) per request. This instance is ours (built
            # with our config_kwargs), so bounding it touches no other S3 client.
            fs.retries = S3FS_TRIES
        protocols = fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)
        self._protocol = str(protocols[0])
        self._in_place = self._protocol in _OBJECT_PROTOCOLS
        self._root = str(root).rstrip("/")
        if self._protocol == "file":
            self.url = f"file://{self._root}"  # a relative file:// URL, as resolved here
        self._lock = threading.Lock()
        self._staged: dict[str, _Staged] = {}
        self._digests: dict[str, tuple[str, str]] = {}
        self._scratch: Path | None = None
        if not self._in_place:
            with self._translating("create", self.url):
                self._fs.makedirs(self._root or "/", exist_ok=True)

    def __repr__(self) -> str:
        options = f", storage_options={masked(self._options)!r}" if self._options else ""
        return f"FsspecArtifactStore({mask_url(self.url)!r}{options})"

    # ------------------------------------------------------------------ paths

    def url_for(self, key: str) -> str:
        """The URL of a published key (credentials masked), for logs and metadata."""
        return f"{mask_url(self.url)}/{self._relative(key)}"

    def _relative(self, key: str) -> str:
        segments = [safe_segment(p) for p in key.split("/") if p]
        if not segments:
            raise ArtifactError(f"empty artifact key {key!r}", retryable=False)
        return "/".join(segments)

    def _join(self, relative: str) -> str:
        return f"{self._root}/{relative}" if self._root else relative

    def _path(self, key: str) -> str:
        return self._join(self._relative(key))

    def _staging_dir(self, key: str) -> str:
        # The whole key as ONE escaped segment: a flat, injective staging namespace.
        normal = "/".join(p for p in key.split("/") if p)
        return self._join(f"{_STAGING}/{safe_segment(normal)}")

    @contextlib.contextmanager
    def _translating(self, action: str, what: str) -> Iterator[None]:
        """Turn whatever the filesystem library raises into :class:`ArtifactError`."""
        try:
            yield
        except BatchorError:
            raise  # ours, or the caller's (a ProviderError from a download)
        except CallerError as exc:
            raise exc.original from None
        except FileNotFoundError as exc:  # a vanished object or bucket: no retry fixes it
            raise ArtifactError(
                f"cannot {action} {what}: not found in {mask_url(self.url)} ({exc})",
                retryable=False,
            ) from exc
        except Exception as exc:  # the adapter edge: s3fs, gcsfs, adlfs, botocore, aiohttp
            # The library's text may quote an endpoint URL: never show its userinfo.
            detail = mask_url(f"{type(exc).__name__}: {exc}")
            raise ArtifactError(f"cannot {action} {what}: {detail}") from exc

    # ------------------------------------------------------------------ objects

    def _write_object(self, path: str, chunks: Iterator[bytes]) -> tuple[int, str]:
        """Write ``path`` all-or-nothing from ``chunks``; return its size and sha256."""
        target = path if self._in_place else self._join(f"{_TMP}/{uuid.uuid4().hex}")
        digest = hashlib.sha256()
        size = 0
        if not self._in_place:
            self._fs.makedirs(self._fs._parent(target), exist_ok=True)
        fh = self._fs.open(target, "wb", block_size=_BLOCK)
        try:
            for chunk in chunks:
                fh.write(chunk)
                digest.update(chunk)
                size += len(chunk)
            fh.close()  # on object stores the object appears here, whole, or not at all
        except BaseException:
            if self._in_place:
                with contextlib.suppress(Exception):
                    fh.discard()  # abort the multipart upload; nothing becomes visible
                fh.closed = True  # never let close() (or the GC) complete the upload
            else:
                with contextlib.suppress(Exception):
                    fh.close()
                with contextlib.suppress(Exception):
                    self._fs.rm(target)
            raise
        if not self._in_place:
            try:
                self._fs.makedirs(self._fs._parent(path), exist_ok=True)
                self._fs.mv(target, path)  # a rename: atomic on one filesystem
            except BaseException:
                with contextlib.suppress(Exception):
                    self._fs.rm(target)
                raise
        self._fs.invalidate_cache(path)
        return size, digest.hexdigest()

    def _read_blocks(self, path: str) -> Iterator[bytes]:
        with self._fs.open(path, "rb", block_size=_BLOCK) as fh:
            while block := fh.read(_COPY):
                yield block

    def _segments(self, key: str) -> list[Part]:
        directory = self._staging_dir(key)
        self._fs.invalidate_cache(directory)
        try:
            names = self._fs.ls(directory, detail=False)
        except FileNotFoundError:
            return []
        found = (parse_part(directory, str(name)) for name in names)
        return [part for part in found if part is not None]

    def _upload_segment(self, key: str, staged: _Staged, start: int, end: int) -> None:
        def blocks() -> Iterator[bytes]:
            with open(staged.path, "rb") as fh:
                fh.seek(start)
                left = end - start
                while left > 0 and (block := fh.read(min(_COPY, left))):
                    left -= len(block)
                    yield block

        digest = hashlib.sha256()
        for block in blocks():
            digest.update(block)
        name = part_name(start, staged.gen, staged.token, end, digest.hexdigest())
        with self._translating("upload", f"a part of {self.url_for(key)}"):
            self._write_object(f"{self._staging_dir(key)}/{name}", blocks())

    # ------------------------------------------------------------------ local copies

    def _scratch_dir(self) -> Path:
        with self._lock:
            if self._scratch is None:
                self._scratch = Path(tempfile.mkdtemp(prefix="batchor-staging-"))
                weakref.finalize(self, shutil.rmtree, str(self._scratch), True)
            return self._scratch

    def _drop_staged(self, key: str) -> None:
        with self._lock:
            staged = self._staged.pop(key, None)
        if staged is not None:
            staged.path.unlink(missing_ok=True)

    def _current(
        self, key: str, chain: list[Part], segments: list[Part], size: int | None = None
    ) -> _Staged | None:
        """This process's local copy, if nobody opened the file since it did (no listed
        part is newer) and it holds the first ``size`` bytes (default: all it uploaded).

        Parts past the copy's end can only be an older holder's leftovers: they are
        ignored here, and cut by the next :meth:`open_append`.
        """
        with self._lock:
            staged = self._staged.get(key)
        if staged is None or not staged.path.exists():
            return None
        newest = max((s.rank for s in segments), default=(0, ""))
        if newest > (staged.gen, staged.token):
            return None
        if staged.synced not in {0, *(s.end for s in chain)}:
            return None
        return staged if size is None or size <= staged.synced else None

    # ------------------------------------------------------------------ port

    def open_append(self, key: str, *, truncate_to: int | None = None) -> _FsspecWriter:
        """Open ``key``'s unpublished file for appending, first cutting it to ``truncate_to``.

        The file is rebuilt from the segments in the bucket unless this process holds the
        newest local copy. Raises :class:`ArtifactError` if fewer than ``truncate_to``
        bytes were ever uploaded (committed lines were lost); it never pads a file.
        """
        with self._translating("open", f"{self.url_for(key)} for writing"):
            segments = self._segments(key)
            chain = chain_of(segments)
            end = chain[-1].end if chain else 0
            size = end if truncate_to is None else truncate_to
            if size > end:
                raise ArtifactError(
                    f"{self.url_for(key)} holds {end} uploaded bytes but {size} were committed "
                    "to it: its parts were deleted while the run was being prepared. Restore "
                    "them, or cancel the run and start it again under a new run id.",
                    retryable=False,
                )
            staged = self._current(key, chain, segments, size)
            if staged is None:
                path = self._scratch_dir() / uuid.uuid4().hex
                self._download(chain, path, size)
            else:
                path = staged.path
                with open(path, "r+b") as fh:
                    fh.truncate(size)
            newest = max((s.gen for s in segments), default=0)
            staged = _Staged(path, newest + 1, uuid.uuid4().hex[:8], size)
            with self._lock:
                old = self._staged.get(key)
                self._staged[key] = staged
            if old is not None and old.path != path:
                old.path.unlink(missing_ok=True)
            if size < end:
                self._cut(key, staged, chain, segments, size)
        return _FsspecWriter(self, key, staged)

    def _download(self, chain: list[Part], path: Path, size: int) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            for seg in chain:
                if seg.start >= size:
                    break
                digest = hashlib.sha256()
                written = seg.start
                for block in self._read_blocks(seg.path):
                    digest.update(block)
                    keep = block[: max(0, size - written)]
                    out.write(keep)
                    written += len(keep)
                self._check(seg, digest.hexdigest())

    def _cut(
        self,
        key: str,
        staged: _Staged,
        chain: list[Part],
        segments: list[Part],
        size: int,
    ) -> None:
        """Make a truncation durable: re-upload the part of the segment it cuts, then
        delete every segment from the cut on (a crash in between leaves a chain that
        already ends at ``size``: nothing else starts there)."""
        cut = next((s for s in chain if s.start < size < s.end), None)
        if cut is not None:
            self._upload_segment(key, staged, cut.start, size)
        doomed = [
            s.path for s in segments if s.end > size and s.start >= (cut.start if cut else size)
        ]
        if doomed:
            self._fs.rm(doomed)

    @staticmethod
    def _check(seg: Part, digest: str) -> None:
        if digest != seg.sha256:
            raise ArtifactError(
                f"part {seg.path} is corrupt (sha256 {digest[:12]} != {seg.sha256[:12]}); "
                "cancel the run and start it again under a new run id",
                retryable=False,
            )

    def publish(self, key: str) -> str:
        """Upload the built ``key`` as one object, all-or-nothing; return its sha256.

        Every part is checked against the sha256 it was uploaded with on the way.
        """
        path = self._path(key)
        with self._translating("publish", self.url_for(key)):
            segments = self._segments(key)
            chain = chain_of(segments)
            staged = self._current(key, chain, segments)
            if staged is None and not chain:
                if self._fs.exists(path):
                    return self.sha256(key)  # published before a crash
                raise ArtifactError(f"nothing to publish for {self.url_for(key)}", retryable=False)
            source = (
                self._checked_local(staged.path, [s for s in chain if s.end <= staged.synced])
                if staged is not None
                else self._checked_chain(chain)
            )
            _, digest = self._write_object(path, source)
            self._remember(path, digest)
            self._drop_staged(key)
            if segments:
                self._fs.rm([s.path for s in segments])
        return digest

    def _checked_local(self, path: Path, chain: list[Part]) -> Iterator[bytes]:
        """The local copy's bytes; those that were uploaded are checked against their parts."""
        with open(path, "rb") as fh:
            for seg in chain:
                digest = hashlib.sha256()
                left = seg.end - seg.start
                while left > 0 and (block := fh.read(min(_COPY, left))):
                    left -= len(block)
                    digest.update(block)
                    yield block
                self._check(seg, digest.hexdigest())
            while block := fh.read(_COPY):
                yield block

    def _checked_chain(self, chain: list[Part]) -> Iterator[bytes]:
        for seg in chain:
            digest = hashlib.sha256()
            for block in self._read_blocks(seg.path):
                digest.update(block)
                yield block
            self._check(seg, digest.hexdigest())

    def write_stream(self, key: str, chunks: Iterator[bytes]) -> int:
        """Write ``key`` from ``chunks`` as one object, all-or-nothing; return its size."""
        path = self._path(key)
        with self._translating("write", self.url_for(key)):
            size, digest = self._write_object(path, passing(chunks))
            self._remember(path, digest)
        return size

    def open_read(self, key: str) -> BinaryIO:
        """Open a published artifact for buffered, streaming reads."""
        from fsspec.spec import AbstractBufferedFile

        path = self._path(key)
        with self._translating("read", self.url_for(key)):
            self._fs.invalidate_cache(path)
            if self._protocol == "memory":
                return io.BytesIO(self._fs.cat_file(path))  # memory files share one position
            raw = self._fs.open(path, "rb", block_size=_BLOCK)
            if not isinstance(raw, AbstractBufferedFile):
                return raw  # type: ignore[no-any-return]  # a local file: already buffered
            # fsspec's readline reads a whole block per line; BufferedReader does not.
            return io.BufferedReader(ObjectReader(raw, self.url_for(key)), buffer_size=_COPY)

    def exists(self, key: str) -> bool:
        """Whether ``key`` is published."""
        path = self._path(key)
        with self._translating("look up", self.url_for(key)):
            self._fs.invalidate_cache(path)
            return bool(self._fs.exists(path))

    def delete(self, key: str) -> bool:
        """Delete ``key`` and any unpublished parts; return whether something was removed."""
        path = self._path(key)
        removed = False
        with self._translating("delete", self.url_for(key)):
            self._fs.invalidate_cache(path)
            if self._fs.exists(path):
                self._fs.rm(path)
                removed = True
            segments = self._segments(key)
            if segments:
                self._fs.rm([s.path for s in segments])
                removed = True
            if self._protocol in S3_PROTOCOLS:
                self._abort_uploads(path, self._staging_dir(key) + "/")
        with self._lock:
            self._digests.pop(path, None)
        self._drop_staged(key)
        return removed

    def _abort_uploads(self, path: str, directory: str) -> None:
        """Abort the unfinished S3 multipart uploads of ``path`` and of the parts under
        ``directory``: a process killed mid-upload leaves them behind, invisible but
        stored (and billed) until aborted."""
        bucket, key, _ = self._fs.split_path(path)
        under = self._fs.split_path(directory)[1].rstrip("/") + "/"
        for prefix in (key, under):
            found = self._fs.call_s3("list_multipart_uploads", Bucket=bucket, Prefix=prefix)
            for upload in found.get("Uploads", []):
                if upload["Key"] == key or upload["Key"].startswith(under):
                    self._fs.call_s3(
                        "abort_multipart_upload",
                        Bucket=bucket,
                        Key=upload["Key"],
                        UploadId=upload["UploadId"],
                    )

    def sha256(self, key: str) -> str:
        """sha256 hex digest of a published artifact.

        Read from the object, except when this process wrote it and the object's ETag
        (which changes on every overwrite) is still the one it had then.
        """
        path = self._path(key)
        with self._translating("hash", self.url_for(key)):
            self._fs.invalidate_cache(path)
            tag = self._etag(path)
            with self._lock:
                known = self._digests.get(path)
            if tag is not None and known is not None and known[0] == tag:
                return known[1]
            digest = hashlib.sha256()
            for block in self._read_blocks(path):
                digest.update(block)
            return digest.hexdigest()

    def _etag(self, path: str) -> str | None:
        info = self._fs.info(path)
        tag = info.get("ETag") or info.get("etag")
        return str(tag) if tag else None

    def _remember(self, path: str, digest: str) -> None:
        tag = self._etag(path) if self._in_place else None
        with self._lock:
            if tag is not None:
                self._digests[path] = (tag, digest)
            else:
                self._digests.pop(path, None)
