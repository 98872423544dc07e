"""The artifact-store contract, written once and run on local files, memory:// and S3.

S3 is a real S3-compatible HTTP server (moto) on 127.0.0.1. A second store instance on
the same location stands for another host: it shares the bucket, never the first one's
process or scratch files.
"""

from __future__ import annotations

import contextlib
import hashlib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from batchor_core import ArtifactError, ConfigurationError, FsspecArtifactStore, LocalArtifactStore
from batchor_core.packing import chunk_key, output_key
from batchor_core.ports import ArtifactStore

Factory = Callable[[], ArtifactStore]
KEY = "runs/r1/requests/c00000.jsonl"


@pytest.fixture(params=["local", "memory", "s3"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Factory:
    """A factory of store instances on one shared location (each call: another 'host')."""
    if request.param == "local":
        return lambda: LocalArtifactStore(tmp_path / "artifacts")
    if request.param == "memory":
        url = f"memory://batchor-{uuid.uuid4().hex[:8]}"
        return lambda: FsspecArtifactStore(url)
    bucket = request.getfixturevalue("s3_bucket")
    return lambda: FsspecArtifactStore(f"s3://{bucket}/some/prefix")


def _build(store: ArtifactStore, key: str, *parts: bytes, truncate_to: int | None = 0) -> int:
    writer = store.open_append(key, truncate_to=truncate_to)
    size = writer.sync()
    for part in parts:
        writer.write(part)
        size = writer.sync()
    writer.close()
    return size


class _Interrupted(Exception):
    """What a provider download might raise half-way."""


def _read(store: ArtifactStore, key: str) -> bytes:
    with store.open_read(key) as fh:
        return fh.read()


def test_a_built_file_is_invisible_until_published_then_whole(make_store: Factory) -> None:
    store = make_store()
    lines = [b'{"custom_id":"i%ds1"}\n' % n for n in range(500)]
    assert _build(store, KEY, b"".join(lines[:250]), b"".join(lines[250:])) == len(b"".join(lines))
    assert not store.exists(KEY)
    with pytest.raises(ArtifactError):
        store.open_read(KEY)
    digest = store.publish(KEY)
    assert digest == hashlib.sha256(b"".join(lines)).hexdigest() == store.sha256(KEY)
    assert store.exists(KEY)
    with store.open_read(KEY) as fh:
        assert list(fh) == lines  # line iteration, as collect and retries read
    # Publishing again (a replay after a crash) keeps the published file.
    assert store.publish(KEY) == digest
    assert make_store().sha256(KEY) == digest


def test_truncate_to_drops_uncommitted_bytes_for_the_next_holder(make_store: Factory) -> None:
    first = make_store()
    committed = _build(first, KEY, b"line 1\n", b"line 2\n")
    writer = first.open_append(KEY, truncate_to=committed)
    writer.write(b"written, never committed\n")
    writer.sync()
    writer.close()
    # The holder dies here (its uncommitted bytes were even uploaded). Another host
    # resumes at the committed size and goes on.
    second = make_store()
    _build(second, KEY, b"line 3\n", truncate_to=committed)
    third = make_store()
    third.publish(KEY)
    assert _read(make_store(), KEY) == b"line 1\nline 2\nline 3\n"


def test_a_cut_inside_an_uploaded_part_is_durable(make_store: Factory) -> None:
    _build(make_store(), KEY, b"abcdef", b"ghij")
    _build(make_store(), KEY, truncate_to=3)  # cut, then the holder dies before publishing
    other = make_store()
    assert other.publish(KEY) == hashlib.sha256(b"abc").hexdigest()
    assert _read(other, KEY) == b"abc"


def test_resuming_in_the_same_process_keeps_appending(make_store: Factory) -> None:
    store = make_store()
    size = _build(store, KEY, b"one\n")
    assert _build(store, KEY, b"two\n", truncate_to=size) == 8
    assert _build(store, KEY, truncate_to=None) == 8  # no cut: append at the end
    store.publish(KEY)
    assert _read(store, KEY) == b"one\ntwo\n"


def test_a_file_that_lost_committed_bytes_is_refused_not_padded(make_store: Factory) -> None:
    store = make_store()
    _build(store, KEY, b"12345")
    with pytest.raises(ArtifactError, match="committed"):
        make_store().open_append(KEY, truncate_to=6)


def test_write_stream_is_all_or_nothing(make_store: Factory) -> None:
    store = make_store()
    key = output_key("r1", "c00000", "batch_1", "output")
    assert store.write_stream(key, iter([b"old\n"])) == 4

    def failing() -> Iterator[bytes]:
        yield b"x" * (9 * 2**20)  # past one S3 part: a multipart upload was started
        raise _Interrupted("download interrupted")

    with pytest.raises(_Interrupted):
        store.write_stream(key, failing())
    assert _read(store, key) == b"old\n"
    fresh = output_key("r1", "c00001", "batch_2", "output")
    with pytest.raises(_Interrupted):
        store.write_stream(fresh, failing())
    assert not store.exists(fresh)
    assert not make_store().exists(fresh)


def test_delete_removes_published_and_unpublished_files(make_store: Factory) -> None:
    store = make_store()
    _build(store, KEY, b"a\n")
    store.publish(KEY)
    other = chunk_key("r1", "c00001")
    _build(store, other, b"b\n")
    assert store.delete(KEY) and store.delete(other)
    assert not store.exists(KEY) and not store.delete(KEY)
    with pytest.raises(ArtifactError, match="committed"):
        make_store().open_append(other, truncate_to=2)  # its uploaded parts are gone too


def test_missing_files_are_artifact_errors(make_store: Factory) -> None:
    store = make_store()
    with pytest.raises(ArtifactError):
        store.open_read("runs/nope/requests/c00000.jsonl")
    with pytest.raises(ArtifactError):
        store.sha256("runs/nope/requests/c00000.jsonl")
    with pytest.raises(ArtifactError):
        store.publish("runs/nope/requests/c00000.jsonl")


def test_run_ids_never_share_a_file(make_store: Factory) -> None:
    store = make_store()
    ids = ["a", "a/", "/a", "a//", "a%2F", "a~2f", ".", "..", ".staging", "x" * 199 + "é"]
    for run_id in ids:
        store.write_stream(output_key(run_id, "c00000", "b", "output"), iter([run_id.encode()]))
        _build(store, chunk_key(run_id, "c00000"), run_id.encode())
        store.publish(chunk_key(run_id, "c00000"))
    for run_id in ids:
        assert _read(store, output_key(run_id, "c00000", "b", "output")) == run_id.encode()
        assert _read(store, chunk_key(run_id, "c00000")) == run_id.encode()


# ---------------------------------------------------------------------------- object stores


def test_a_corrupted_part_is_refused_at_publish(s3_bucket: str) -> None:
    import s3fs

    url = f"s3://{s3_bucket}/p"
    _build(FsspecArtifactStore(url), KEY, b"first\n", b"second\n")
    fs = s3fs.S3FileSystem()
    (part,) = [p for p in fs.find(f"{s3_bucket}/p/.staging") if "-000000000000006-" in p]
    fs.pipe(part, b"FIRST\n")  # same size, different bytes
    with pytest.raises(ArtifactError, match="corrupt"):
        FsspecArtifactStore(url).publish(KEY)
    assert not FsspecArtifactStore(url).exists(KEY)


_STREAMING = """
import sys, tracemalloc
from batchor_core import FsspecArtifactStore
store = FsspecArtifactStore(sys.argv[1])
block = bytes(range(256)) * 4096  # 1 MiB
store.write_stream("warmup", iter([block]))
with store.open_read("warmup") as fh:
    fh.read()
tracemalloc.start()
store.write_stream("big", (block for _ in range(32)))
w = store.open_append("built", truncate_to=0)
for n in range(32):
    w.write(block)
    if n % 8 == 7:
        w.sync()
w.close()
store.publish("built")
total = 0
for key in ("big", "built"):
    with store.open_read(key) as fh:
        while data := fh.read(1 << 20):
            total += len(data)
streamed = tracemalloc.get_traced_memory()[1]
tracemalloc.reset_peak()
with store.open_read("big") as fh:
    whole = fh.read()  # the sensitivity check: holding one file whole does show
print(total, streamed, tracemalloc.get_traced_memory()[1])
"""


def test_32_mib_files_stream_through_bounded_memory(s3_bucket: str) -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _STREAMING, f"s3://{s3_bucket}/stream"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, done.stderr[-3000:]
    total, streamed, whole = map(int, done.stdout.split())
    assert total == 2 * 32 * 2**20
    # A few 5 MiB parts in flight, never the file.
    assert streamed < 24 * 2**20, f"peak memory grew by {streamed / 2**20:.0f} MiB"
    assert whole > 32 * 2**20  # the measurement does see a file held whole


def test_an_object_replaced_mid_read_is_an_artifact_error(s3_bucket: str) -> None:
    store = FsspecArtifactStore(f"s3://{s3_bucket}/p")
    store.write_stream("out", iter([b"a" * (12 * 2**20)]))
    with store.open_read("out") as fh:
        assert fh.read(2**20) == b"a" * 2**20
        store.write_stream("out", iter([b"b" * (12 * 2**20)]))  # overwritten meanwhile
        with pytest.raises(ArtifactError, match="cannot read"):
            fh.read()  # never a file mixing both versions


@pytest.mark.parametrize("kind", ["memory", "s3"])
def test_parts_a_stale_holder_uploads_late_never_reach_the_published_file(
    kind: str, request: pytest.FixtureRequest
) -> None:
    if kind == "s3":
        url = f"s3://{request.getfixturevalue('s3_bucket')}/p"
    else:
        url = f"memory://stale-{uuid.uuid4().hex[:8]}"
    stale, holder = FsspecArtifactStore(url), FsspecArtifactStore(url)
    committed = _build(stale, KEY, b"committed\n")
    zombie = stale.open_append(KEY, truncate_to=committed)
    zombie.write(b"AAAAAA")  # as long as the next holder's lines: parts line up
    zombie.sync()
    # The stale holder's lease expired; the next holder cuts back to the committed size,
    # writes its own lines and prepares to publish...
    size = _build(holder, KEY, b"BBBBB\n", truncate_to=committed)
    _build(holder, KEY, truncate_to=size)
    # ...when the stale holder wakes up and uploads one more part, right at that end.
    zombie.write(b"ZZZZZ")
    zombie.sync()
    zombie.close()
    holder.publish(KEY)
    assert _read(holder, KEY) == b"committed\nBBBBB\n"


def test_url_spellings_users_write_reach_the_same_prefix(s3_bucket: str) -> None:
    # S3:// is s3://, and a doubled slash is one: s3fs writes "bucket//p/key" but lists
    # "bucket/p/key", so parts uploaded under a doubled slash were never found again.
    written = FsspecArtifactStore(f"S3://{s3_bucket}//p//")
    _build(written, KEY, b"line\n")
    FsspecArtifactStore(f"s3://{s3_bucket}//p").publish(KEY)
    assert _read(FsspecArtifactStore(f"s3://{s3_bucket}/p"), KEY) == b"line\n"
    assert repr(written) == f"FsspecArtifactStore('s3://{s3_bucket}/p')"
    for no_bucket in ("s3://", "s3:///p", "S3://"):
        with pytest.raises(ConfigurationError, match="names no bucket"):
            FsspecArtifactStore(no_bucket)


def test_a_relative_file_url_shows_where_it_resolved(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    store = FsspecArtifactStore("file://rel//art/")
    assert store.url == f"file://{tmp_path}/rel/art"
    store.write_stream(KEY, iter([b"x"]))
    assert (tmp_path / "rel" / "art" / KEY).read_bytes() == b"x"


@pytest.fixture
def hung_endpoint() -> Iterator[str]:
    """An HTTP endpoint on 127.0.0.1 that accepts connections and never answers."""
    import socket
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held: list[socket.socket] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                held.append(server.accept()[0])

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    server.close()
    for conn in held:
        conn.close()


def test_an_endpoint_that_hangs_fails_as_artifact_error_in_bounded_time(
    s3_endpoint: str, hung_endpoint: str
) -> None:
    import time

    # The user shortens the read timeout; batchor bounds the number of tries (s3fs and
    # botocore would make 5 x 5 per request: about 60 s here, an hour with the default
    # timeout of 60 s; bounded, 3 per request: a few seconds here, 90 s by default).
    config = {"read_timeout": 0.5, "connect_timeout": 0.5}
    options = {"endpoint_url": hung_endpoint, "config_kwargs": config}
    store = FsspecArtifactStore("s3://bucket/p", storage_options=options)
    started = time.monotonic()
    with pytest.raises(ArtifactError, match="timeout"):
        store.exists(KEY)
    assert time.monotonic() - started < 30
    # An upload too: aiohttp would wait for a "100 Continue" with no timeout at all.
    started = time.monotonic()
    with pytest.raises(ArtifactError, match="timeout"):
        store.write_stream(KEY, iter([b"x\n"]))
    assert time.monotonic() - started < 30


def test_delete_aborts_uploads_a_killed_process_left_unfinished(s3_bucket: str) -> None:
    import boto3

    store = FsspecArtifactStore(f"s3://{s3_bucket}/p")
    _build(store, KEY, b"a\n")
    store.publish(KEY)
    client = boto3.client("s3")
    # What a process SIGKILLed while publishing (or uploading a part) leaves: a multipart
    # upload begun, never completed nor aborted. Invisible, but stored and billed.
    part_key = f"p/.staging/{KEY.replace('/', '~2f')}/000000000000000-00000009-0badf00d"
    for key in (f"p/{KEY}", part_key, "p/runs/r1/requests/c00001.jsonl"):
        upload = client.create_multipart_upload(Bucket=s3_bucket, Key=key)
        client.upload_part(
            Bucket=s3_bucket, Key=key, UploadId=upload["UploadId"], PartNumber=1, Body=b"x"
        )
    assert store.delete(KEY)
    left = client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", [])
    assert [u["Key"] for u in left] == ["p/runs/r1/requests/c00001.jsonl"]  # another file's


def test_stores_on_one_bucket_share_one_cached_filesystem(s3_bucket: str) -> None:
    import s3fs

    # fsspec keeps every filesystem it builds for good: a runner per Dagster sensor tick
    # must not add one each time.
    FsspecArtifactStore(f"s3://{s3_bucket}/p")
    cached = len(s3fs.S3FileSystem._cache)
    for _ in range(3):
        FsspecArtifactStore(f"s3://{s3_bucket}/p").write_stream(KEY, iter([b"x"]))
    assert len(s3fs.S3FileSystem._cache) == cached
