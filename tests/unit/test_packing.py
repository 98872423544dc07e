"""Chunk packing: as few batches as the limits allow, and crash-safe sealing."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime
from pathlib import Path

from batchor_core import ChunkPolicy, LocalArtifactStore, MemoryStateStore, RunStatus
from batchor_core.packing import (
    ChunkPacker,
    chunk_key,
    custom_id,
    parse_custom_id,
    request_line,
    request_line_template,
    seal_chunk,
    swap_custom_id,
)
from batchor_core.ports import ChunkState, RunRecord

NOW = datetime(2026, 1, 1, tzinfo=UTC)


def _store(run_id: str = "r") -> MemoryStateStore:
    store = MemoryStateStore()
    store.create_run(
        RunRecord(
            run_id,
            RunStatus.INGESTING,
            None,
            {},
            "f",
            None,
            None,
            False,
            0,
            0,
            0,
            0,
            0,
            0,
            None,
            NOW,
            NOW,
        )
    )
    return store


def _packer(store: MemoryStateStore, art: LocalArtifactStore, policy: ChunkPolicy) -> ChunkPacker:
    return ChunkPacker(
        run_id="r",
        store=store,
        artifacts=art,
        policy=policy,
        open_chunk=None,
        next_chunk_seq=0,
        now=NOW,
    )


def test_120k_requests_make_three_batches_not_one_per_slice(tmp_path: Path) -> None:
    store, art = _store(), LocalArtifactStore(tmp_path, fsync=False)
    packer = _packer(store, art, ChunkPolicy())
    line = request_line("i0s1", b"/v1/chat/completions", b'{"model":"m","messages":[]}')
    for start in range(0, 120_000, 7_000):  # ingest slices of 7,000
        for _ in range(min(7_000, 120_000 - start)):
            packer.add(line)
        store.append_items("r", [], chunks=packer.sync(), checkpoint=None)
        packer.after_commit()
    packer.finish()
    chunks = store.list_chunks("r")
    assert [c.request_count for c in chunks] == [50_000, 50_000, 20_000]
    assert all(c.state is ChunkState.SEALED and c.sha256 for c in chunks)
    assert art.path_for(chunk_key("r", "c00000")).stat().st_size == 50_000 * len(line)


def test_byte_limit_closes_chunks_too(tmp_path: Path) -> None:
    store, art = _store(), LocalArtifactStore(tmp_path, fsync=False)
    packer = _packer(store, art, ChunkPolicy(max_bytes=2048))
    line = request_line("i0s1", b"/v1/responses", b'{"input":"' + b"x" * 900 + b'"}')
    for _ in range(5):
        packer.add(line)
    store.append_items("r", [], chunks=packer.sync(), checkpoint=None)
    packer.after_commit()
    packer.finish()
    assert [c.request_count for c in store.list_chunks("r")] == [2, 2, 1]


def test_seal_cuts_uncommitted_bytes_after_a_crash(tmp_path: Path) -> None:
    store, art = _store(), LocalArtifactStore(tmp_path, fsync=False)
    packer = _packer(store, art, ChunkPolicy())
    packer.add(b'{"custom_id":"i0s1"}\n')
    (committed,) = packer.sync()
    store.append_items("r", [], chunks=[committed], checkpoint=None)
    packer.add(b'{"custom_id":"i1s1"}\n')  # written, never committed: the process "dies"
    packer.sync()
    packer.abandon()
    (chunk,) = store.list_chunks("r")
    sealed = seal_chunk(store, art, chunk)
    with art.open_read(chunk_key("r", chunk.chunk_id)) as fh:
        assert fh.read() == b'{"custom_id":"i0s1"}\n'
    assert sealed.state is ChunkState.SEALED
    # Sealing again (a replay) keeps the published file and changes nothing.
    assert not store.save_chunk(dataclasses.replace(sealed), expected=ChunkState.BUILDING)


def test_custom_ids_round_trip_and_swap_keeps_body_bytes() -> None:
    assert parse_custom_id(custom_id(42, 3)) == (42, 3)
    assert parse_custom_id("foreign-id") is None
    # Only ASCII digits: "²" is a digit to str.isdigit() but not to int().
    for foreign in ("i\u00b2s1", "i\u0661s1", "i5s", "is1", "i5s1\n", "i-5s1", "I5s1"):
        assert parse_custom_id(foreign) is None, foreign
    line = request_line("i5s1", b"/v1/chat/completions", b'{"a":"\\"quoted\\""}')
    swapped = swap_custom_id(line, "i5s2")
    assert swapped.startswith(b'{"custom_id":"i5s2"')
    assert swapped.split(b'"body":', 1)[1] == line.split(b'"body":', 1)[1]


def test_artifact_keys_cannot_escape_the_root(tmp_path: Path) -> None:
    art = LocalArtifactStore(tmp_path / "root")
    path = art.path_for("runs/../../etc/passwd/requests/x.jsonl")
    assert (tmp_path / "root") in path.parents
    writer = art.open_append("runs/a b/../c.jsonl")
    writer.write(b"x")
    writer.sync()
    writer.close()
    art.publish("runs/a b/../c.jsonl")
    published = art.path_for("runs/a b/../c.jsonl")
    assert published.stat().st_mode & 0o777 == 0o600
    assert published.parent.stat().st_mode & 0o777 == 0o700


def test_the_request_line_template_formats_exactly_like_request_line() -> None:
    body = b'{"messages":[{"role":"user","content":"100% \\"sure\\""}]}'
    for endpoint in (b"/v1/chat/completions", b"/v1/odd%sendpoint%d"):
        for seq, submission in ((0, 1), (123456789, 1), (7, 3)):
            template = request_line_template(endpoint, submission)
            assert template % (seq, body) == request_line(
                custom_id(seq, submission), endpoint, body
            )


def test_offer_packs_like_add_and_refuses_only_what_fits_no_chunk(tmp_path: Path) -> None:
    store, art = _store(), LocalArtifactStore(tmp_path, fsync=False)
    packer = ChunkPacker(
        run_id="r",
        store=store,
        artifacts=art,
        policy=ChunkPolicy(max_requests=1500, max_bytes=60_000),
        open_chunk=None,
        next_chunk_seq=0,
        now=NOW,
        max_tokens=10_000,
    )
    lines = [  # all of one length: 4-digit seqs
        request_line(custom_id(i, 1), b"/v1/responses", b'{"input":"x"}') for i in range(1000, 4100)
    ]
    assert packer.offer(b"x" * 60_001) is None  # more bytes than any chunk holds
    assert packer.offer(lines[0], 10_001) is None  # more tokens than any chunk holds
    placed = [packer.offer(line, 3) for line in lines[:2000]]
    placed += [packer.add(line, 3) for line in lines[2000:]]
    store.append_items("r", [], chunks=packer.sync(), checkpoint=None)
    packer.after_commit()
    packer.finish()
    chunks = store.list_chunks("r")
    # Split by the byte limit (not the token limit: 3 tokens a line stays under 10,000).
    per_chunk = 60_000 // len(lines[0])
    counts = [per_chunk] * (3100 // per_chunk) + [3100 % per_chunk]
    assert [c.request_count for c in chunks] == counts
    assert placed == [f"c{i:05d}" for i, n in enumerate(counts) for _ in range(n)]
    written = b""
    for chunk in chunks:
        with art.open_read(chunk_key("r", chunk.chunk_id)) as fh:
            written += fh.read()
    assert written == b"".join(lines)  # every line once, in order, none of the refused


def test_custom_ids_too_long_for_the_store_are_not_ours() -> None:
    """A line whose custom_id has more digits than a seq (BIGINT) or a submission
    (INTEGER) can hold is not one of ours: taken for an item it made int() raise (past
    4,300 digits) or the store's update overflow, failing the collection on every try."""
    from functools import partial

    from batchor_core.collect import LineSorter
    from batchor_core.providers.openai.parsing import parse_line

    assert parse_custom_id(custom_id(10**17, 10**8)) == (10**17, 10**8)
    sorter = LineSorter(
        parse=partial(parse_line, "/v1/chat/completions"), output_model=None, output_schema=None
    )
    body = b'"response":{"status_code":200,"body":{"choices":[{"message":{"content":"x"}}]}}'
    for cid in ("i" + "9" * 5000 + "s1", "i" + "9" * 20 + "s1", "i1s" + "9" * 11, "i1s1"):
        sorter.add(b'{"custom_id":"%s",%s}' % (cid.encode(), body))
    successes, failures = sorter.take()
    assert [(o.seq, o.submission) for o in successes] == [(1, 1)] and not failures
