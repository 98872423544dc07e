"""Nothing crosses between runs, and nothing is lost without an error (issue 8, part 2)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict, RootModel

from batchor_core import (
    ArtifactError,
    BatchItem,
    BatchJob,
    BatchRunner,
    ChunkPolicy,
    ConfigurationError,
    FakeClock,
    ItemStatus,
    LocalArtifactStore,
    PostgresStorage,
    RetryPolicy,
    RunStatus,
    SourceChangedError,
    SourceError,
    SQLiteStorage,
)
from batchor_core.models import JSONObject
from batchor_core.ports import SourceSlice
from tests.conftest import POSTGRES_URL, postgres_param
from tests.integration.review_model import Review

pytestmark = pytest.mark.integration


def _job(**kwargs: Any) -> BatchJob:
    return BatchJob(
        model="gpt-4o-mini",
        build_prompt=lambda item: str(item.payload["text"]),
        output_model=Review,
        **kwargs,
    )


class _ScriptedSource:
    """An item source that yields fixed slices and runs a hook before each one."""

    def __init__(
        self,
        slices: list[list[BatchItem]],
        *,
        locations: Callable[[list[BatchItem]], list[str]] | None = None,
        before_slice: Callable[[int], None] | None = None,
    ) -> None:
        self._slices = slices
        self._locations = locations
        self._before = before_slice
        self.yielded = 0

    def identity(self) -> JSONObject:
        return {"kind": "scripted", "n": len(self._slices)}

    def read_slices(
        self, checkpoint: JSONObject | None, *, slice_size: int
    ) -> Iterator[SourceSlice]:
        start = int((checkpoint or {}).get("slice", 0))
        for index in range(start, len(self._slices)):
            if self._before is not None:
                self._before(index)
            items = self._slices[index]
            self.yielded += 1
            yield SourceSlice(
                items=items,
                checkpoint={"slice": index + 1},
                locations=self._locations(items) if self._locations else (),
            )


def _store(kind: str, tmp_path: Path) -> Any:
    if kind == "postgres":
        assert POSTGRES_URL
        return PostgresStorage(POSTGRES_URL)
    return SQLiteStorage(tmp_path / "runs.sqlite3")


# ---------------------------------------------------------------------------- run ids


def test_run_ids_differing_only_by_slash_keep_their_own_request_files(
    make_runner: Callable[..., BatchRunner], emulator: Any, tmp_path: Path
) -> None:
    runner = make_runner()
    first = runner.start(_job(), items=[BatchItem("x", {"text": "first-run"})], run_id="a")
    assert first.wait(timeout=30, poll_interval=0.01).status is RunStatus.COMPLETED
    second = runner.start(_job(), items=[BatchItem("x", {"text": "second-run"})], run_id="a/")
    assert second.wait(timeout=30, poll_interval=0.01).status is RunStatus.COMPLETED

    uploaded = [emulator.file_content(f["id"]) for f in emulator.files() if f["purpose"] == "batch"]
    assert len(uploaded) == 2
    assert b"first-run" in uploaded[0] and b"second-run" in uploaded[1]
    requests = sorted((tmp_path / "artifacts").rglob("requests/*.jsonl"))
    assert len(requests) == 2  # one file per run, not one shared file


@pytest.mark.parametrize("bad", ["", " ", "\t", "a\x00b", "x" * 201, "a\ud800"])
def test_unusable_run_ids_are_refused(make_runner: Callable[..., BatchRunner], bad: str) -> None:
    runner = make_runner()
    with pytest.raises(ConfigurationError, match="run_id"):
        runner.start(_job(), items=[BatchItem("x", {"text": "t"})], run_id=bad)
    assert runner.list_runs() == []  # an empty id did not become a fresh random run


# ---------------------------------------------------------------------------- ingest


def test_a_request_file_deleted_during_ingest_is_never_uploaded(
    make_runner: Callable[..., BatchRunner], emulator: Any, tmp_path: Path
) -> None:
    runner = make_runner(ingest_slice_size=100)
    requests = tmp_path / "artifacts" / "runs" / "vanish" / "requests"

    def delete_part_file(index: int) -> None:
        if index == 2:  # two slices are committed into the open chunk by now
            for part in requests.glob("*.part"):
                part.unlink()

    slices = [[BatchItem(f"i{s}-{n}", {"text": f"t{s}-{n}"}) for n in range(100)] for s in range(3)]
    source = _ScriptedSource(slices, before_slice=delete_part_file)
    with pytest.raises(ArtifactError, match="deleted or truncated"):
        runner.start(_job(), items=source, run_id="vanish")
    # Starting again fails the same way instead of sealing zero bytes.
    with pytest.raises(ArtifactError, match="deleted or truncated"):
        runner.start(_job(), items=_ScriptedSource(slices), run_id="vanish")
    assert emulator.files() == [] and emulator.batches() == []


def test_a_source_with_fewer_locations_than_items_is_refused(
    make_runner: Callable[..., BatchRunner],
) -> None:
    runner = make_runner()
    items = [BatchItem(f"i{n}", {"text": "t"}) for n in range(5)]
    source = _ScriptedSource([items], locations=lambda got: [f"row {n}" for n in range(3)])
    with pytest.raises(SourceError, match="5 items but 3 locations"):
        runner.start(_job(), items=source, run_id="short-locations")
    assert runner.get_run("short-locations").summary().total_items == 0


@pytest.mark.parametrize("kind", ["sqlite", postgres_param()])
def test_nul_in_item_ids_and_payloads_fails_only_that_item(
    make_runner: Callable[..., BatchRunner], tmp_path: Path, run_id: str, kind: str
) -> None:
    runner = make_runner(storage=_store(kind, tmp_path))
    items = [
        BatchItem("good", {"text": "fine"}),
        BatchItem("bad\x00id", {"text": "fine"}),
        BatchItem("nul-payload", {"text": "has \x00 inside"}, metadata={"m": "\x00"}),
        BatchItem("surrogate\ud800", {"text": "fine"}),
    ]
    run = runner.start(_job(), items=items, run_id=run_id)
    summary = run.wait(timeout=30, poll_interval=0.01)
    assert summary.status is RunStatus.COMPLETED
    assert (summary.completed_items, summary.failed_items) == (2, 2)
    results = {r.item_id: r for r in run.results()}
    assert results["nul-payload"].status is ItemStatus.COMPLETED
    assert results["nul-payload"].metadata == {"m": "\x00"}
    failed = [r for r in results.values() if r.status is ItemStatus.FAILED]
    assert {r.error.code for r in failed if r.error} == {"invalid_input"}
    # Restarting does not trip over the stored rows either.
    assert runner.start(_job(), items=items, run_id=run_id).summary().total_items == 4


def test_a_payload_that_is_not_a_json_object_fails_only_that_item(
    make_runner: Callable[..., BatchRunner], run_id: str
) -> None:
    runner = make_runner()
    items = [
        BatchItem("good", {"text": "fine"}),
        BatchItem("text", "just text"),  # type: ignore[arg-type]
        BatchItem("list", ["a", "b"]),  # type: ignore[arg-type]
        BatchItem("none", None),  # type: ignore[arg-type]
        BatchItem("number", 3),  # type: ignore[arg-type]
    ]
    run = runner.start(_job(), items=items, run_id=run_id)
    summary = run.wait(timeout=30, poll_interval=0.01)
    assert (summary.status, summary.completed_items, summary.failed_items) == (
        RunStatus.COMPLETED,
        1,
        4,
    )
    errors = {r.item_id: r.error for r in run.results() if r.status is ItemStatus.FAILED}
    assert sorted(errors) == ["list", "none", "number", "text"]
    assert all(e is not None and e.code == "invalid_input" for e in errors.values())
    assert errors["text"] is not None and "payload is not a JSON object" in errors["text"].message
    assert "a str; BatchItem.payload must be a dict" in errors["text"].message
    # The same items again resume the run (their digest is stable); others are refused.
    assert runner.start(_job(), items=items, run_id=run_id).summary().total_items == 5
    with pytest.raises(SourceChangedError):
        changed = [*items[:1], BatchItem("text", "other"), *items[2:]]  # type: ignore[arg-type]
        runner.start(_job(), items=changed, run_id=run_id)


@pytest.mark.parametrize("kind", ["sqlite", postgres_param()])
def test_items_ready_to_retry_do_not_wait_behind_items_backing_off(
    make_runner: Callable[..., BatchRunner], emulator: Any, tmp_path: Path, run_id: str, kind: str
) -> None:
    clock = FakeClock()
    runner = make_runner(storage=_store(kind, tmp_path), clock=clock)
    emulator.faults.line_fault(contains="alpha", kind="error", times=2)
    emulator.faults.line_fault(contains="beta", kind="error", times=1)
    job = _job(
        chunk_policy=ChunkPolicy(max_requests=2),
        retry_policy=RetryPolicy(max_attempts=3, backoff_seconds=100),
    )
    items = [BatchItem(f"{w}{n}", {"text": f"{w} {n}"}) for w in ("alpha", "beta") for n in (0, 1)]
    run = runner.start(job, items=items, run_id=run_id)
    run.refresh()  # both batches fail every line: all four items back off until t=100
    clock.advance(100)
    run.refresh()  # alpha (lower seqs) goes out again
    assert emulator.batch_create_count == 3
    run.refresh()  # alpha fails again (backing off until t=200); beta is ready since t=100
    assert emulator.batch_create_count == 4
    clock.advance(100)
    assert run.wait(timeout=60, poll_interval=0.01).completed_items == 4


# ---------------------------------------------------------------------------- cancel


def test_cancel_stops_an_ingest_in_progress_within_a_slice(
    make_runner: Callable[..., BatchRunner], emulator: Any
) -> None:
    runner = make_runner(ingest_slice_size=10)
    operator = make_runner(owner_id="operator")

    def cancel_during_third(index: int) -> None:
        if index == 2:
            operator.cancel("cancel-ingest", "stop")

    slices = [[BatchItem(f"i{s}-{n}", {"text": "t"}) for n in range(10)] for s in range(50)]
    source = _ScriptedSource(slices, before_slice=cancel_during_third)
    run = runner.start(_job(), items=source, run_id="cancel-ingest")
    summary = run.summary()
    assert summary.status is RunStatus.CANCELLED
    assert source.yielded == 3 and summary.total_items == 30
    assert summary.cancelled_items == 30
    assert emulator.batches() == []


# ---------------------------------------------------------------------------- disk


_FULL_DISK_SCRIPT = textwrap.dedent(
    """
    import resource, signal, sys
    from batchor_core import (ArtifactError, BatchItem, BatchJob, BatchRunner,
                              LocalArtifactStore, OpenAIProviderConfig, SQLiteStorage)

    root, base_url = sys.argv[1:3]
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (300_000, resource.RLIM_INFINITY))
    runner = BatchRunner(
        storage=SQLiteStorage(root + "/runs.sqlite3"),
        artifacts=LocalArtifactStore(root + "/artifacts"),
        provider=OpenAIProviderConfig(api_key="sk-test", base_url=base_url, max_retries=0),
        ingest_slice_size=10,
    )
    job = BatchJob(model="gpt-4o-mini", build_prompt=lambda item: "x" * 20_000)
    items = [BatchItem(f"i{n}", {"n": n}) for n in range(40)]  # ~800 kB of requests
    try:
        runner.start(job, items=items, run_id="disk")
    except ArtifactError as exc:
        print("ArtifactError:", exc.message)
    # Space is freed: the same call resumes and finishes.
    resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    summary = runner.start(job, items=items, run_id="disk").wait(timeout=60, poll_interval=0.01)
    print("done", summary.status.value, summary.completed_items, summary.total_items)
    """
)


def test_a_full_disk_is_an_artifact_error_and_the_run_recovers(
    emulator: Any, tmp_path: Path
) -> None:
    done = subprocess.run(
        [sys.executable, "-c", _FULL_DISK_SCRIPT, str(tmp_path), emulator.base_url],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("ArtifactError: cannot write") and "File too large" in lines[0]
    assert lines[-1] == "done completed 40 40"


# ---------------------------------------------------------------------------- schemas


class _FreeFormDict(BaseModel):
    counts: dict[str, int]


class _AnyValue(BaseModel):
    label: str
    value: Any


class _ExtraAllowed(BaseModel):
    model_config = ConfigDict(extra="allow")
    label: str


class _ListRoot(RootModel[list[int]]):
    pass


class _Nested(BaseModel):
    reviews: list[_FreeFormDict]


@pytest.mark.parametrize(
    ("model", "named"),
    [
        (_FreeFormDict, "_FreeFormDict.counts"),
        (_AnyValue, "_AnyValue.value"),
        (_ExtraAllowed, "_ExtraAllowed allows extra keys"),
        (_ListRoot, "root is array"),
        (_Nested, "_Nested.reviews[].counts"),
    ],
)
def test_output_models_strict_outputs_cannot_express_are_refused(
    model: type[BaseModel], named: str
) -> None:
    with pytest.raises(ConfigurationError, match=named.replace("[", r"\[").replace("]", r"\]")):
        _job_with(model)
    with pytest.raises(ValueError):  # ConfigurationError is also a ValueError
        _job_with(model)


def _job_with(model: type[BaseModel]) -> BatchJob:
    return BatchJob(model="gpt-4o-mini", build_prompt=lambda item: "t", output_model=model)


def test_models_validation_raises_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="max_requests"):
        ChunkPolicy(max_requests=0)
    with pytest.raises(ConfigurationError, match="max_attempts"):
        RetryPolicy(max_attempts=0)
    assert _job_with(Review).output_model is Review


def test_artifact_stores_share_nothing_between_run_ids(tmp_path: Path) -> None:
    from batchor_core.packing import chunk_key, output_key

    store = LocalArtifactStore(tmp_path)
    ids = ["a", "a/", "/a", "a//", "a%2F", "a%252F", "a~2f", ".", "..", "x" * 199 + "é"]
    paths = {store.path_for(chunk_key(r, "c00000")) for r in ids}
    assert len(paths) == len(ids)
    outputs = {store.path_for(output_key(r, "c00000", "batch_1", "output")) for r in ids}
    assert len(outputs) == len(ids)
    assert store.path_for(chunk_key("plain-id_1.0", "c00000")) == (
        tmp_path.resolve() / "runs" / "plain-id_1.0" / "requests" / "c00000.jsonl"
    )


def test_a_long_run_id_written_by_the_previous_release_keeps_its_files(tmp_path: Path) -> None:
    from batchor_core.artifacts import LocalArtifactStore
    from batchor_core.artifacts.local import _legacy_segment, safe_segment

    run_id = "reviews: customer feedback (EU) " * 5  # escapes to over 200 characters
    legacy = _legacy_segment(run_id)
    assert legacy is not None and legacy != safe_segment(run_id)
    old_file = tmp_path / "runs" / legacy / "requests" / "c00000.jsonl"
    old_file.parent.mkdir(parents=True)
    old_file.write_bytes(b'{"custom_id": "i0s1"}\n')
    store = LocalArtifactStore(tmp_path)
    key = f"runs/{run_id}/requests/c00000.jsonl"
    assert store.exists(key)
    with store.open_read(key) as fh:
        assert fh.read() == b'{"custom_id": "i0s1"}\n'
    fresh = "another " * 30
    assert safe_segment(fresh) in str(store.path_for(f"runs/{fresh}/x"))


class _Opaque:
    """A payload value JSON cannot hold, whose repr holds its address."""

    def __init__(self, value: int) -> None:
        self.value = value


def test_odd_payload_values_fail_alone_and_a_stopped_ingest_says_why(
    make_runner: Callable[..., BatchRunner], run_id: str
) -> None:
    runner = make_runner(ingest_slice_size=2)

    def items(stop_at: int | None = None) -> Iterator[BatchItem]:
        for k in range(8):
            if k == stop_at:
                raise RuntimeError("the source went away")
            payload: dict[Any, Any] = {"text": f"t{k}"}
            if k == 1:
                payload[2] = "an int key beside str keys"
            if k == 2:
                payload["object"] = _Opaque(k)
            yield BatchItem(f"i{k}", payload)

    with pytest.raises(RuntimeError, match="went away"):
        runner.start(_job(), items=items(stop_at=5), run_id=run_id)
    stuck = runner.get_run(run_id).summary()
    assert stuck.status is RunStatus.INGESTING and stuck.total_items == 4
    assert stuck.status_reason is not None
    assert "reading the items stopped after 4: RuntimeError: the source went away" in (
        stuck.status_reason
    )
    assert "start() again with the same items" in stuck.status_reason
    # The same items, in a new generator (new objects, new addresses), resume the run;
    # while they are read again, the old reason is gone.
    reasons: list[str | None] = []
    run = runner.start(
        _job(), items=items(), run_id=run_id, on_progress=lambda s: reasons.append(s.status_reason)
    )
    assert reasons and set(reasons) == {None}
    summary = run.wait(timeout=30, poll_interval=0.01)
    assert (summary.status, summary.status_reason) == (RunStatus.COMPLETED, None)
    assert summary.total_items == 8
    failed = {r.item_id: r.error for r in run.results() if r.status is ItemStatus.FAILED}
    assert list(failed) == ["i2"]  # the object is not JSON; the int key is written as "2"
    assert failed["i2"] is not None and failed["i2"].code == "invalid_input"
