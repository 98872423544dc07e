"""Token estimates, prices, the pre-run estimate and the budget's wait reason, on the
memory store with the fake provider (no sockets)."""

from __future__ import annotations

import hashlib
import re
import sys
import time
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from batchor_core import (
    BatchItem,
    BatchJob,
    BatchRunner,
    ChunkPolicy,
    ConfigurationError,
    EnqueueLimit,
    FakeClock,
    LocalArtifactStore,
    MemoryStateStore,
    Price,
    RunStatus,
    RunTimeoutError,
    Usage,
)
from batchor_core import tokens as tok
from batchor_core.pricing import PRICES, PRICES_TAKEN_ON, price_for
from batchor_core.testing import FakeBatchProvider


@pytest.fixture
def runner(tmp_path: Path) -> Iterator[BatchRunner]:
    provider = FakeBatchProvider(enqueue_limits={"m": 60}, prices={"m": Price(1.0, 2.0)})
    provider.hold(True)  # batches stay in flight until released
    made = BatchRunner(
        storage=MemoryStateStore(),
        artifacts=LocalArtifactStore(tmp_path / "a"),
        provider=provider,
        clock=FakeClock(),
        handle_sigterm=False,
    )
    yield made
    made.close()


def _job(**kwargs: object) -> BatchJob:
    return BatchJob(model="m", build_prompt=lambda item: f"prompt {item.item_id}", **kwargs)  # type: ignore[arg-type]


def _items(n: int) -> list[BatchItem]:
    return [BatchItem(item_id=f"r{i:03d}") for i in range(n)]


def test_a_line_is_estimated_at_four_bytes_per_token_rounded_up() -> None:
    assert tok.estimate_line_tokens(b"") == 0
    assert tok.estimate_line_tokens(b"abcd") == 1
    assert tok.estimate_line_tokens(b"abcde") == 2
    assert tok.estimate_line_tokens("é".encode() * 4) == 2  # bytes, not characters


def test_tiktoken_without_a_local_encoding_is_tried_once_and_never_downloads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))  # an empty cache
    assert tok.tiktoken_counter("cl100k_base") is None
    reason = tok.unavailable_reason("cl100k_base")
    assert reason is not None and ("never downloads" in reason or "tiktoken" in reason)
    started = time.perf_counter()
    for _ in range(10_000):
        assert tok.tiktoken_counter("cl100k_base") is None  # remembered, not retried
    assert time.perf_counter() - started < 1.0
    assert tok.tiktoken_counter("no-such-encoding") is None


def test_prices_come_from_the_override_then_the_dated_table_else_none() -> None:
    assert PRICES_TAKEN_ON and "gpt-4o-mini" in PRICES
    mine = Price(input=9.0, output=9.0)
    assert price_for("gpt-4o-mini", {"gpt-4o-mini": mine})[0] is mine
    table, note = price_for("gpt-4o-mini")
    assert table == PRICES["gpt-4o-mini"] and PRICES_TAKEN_ON in note
    unknown, why = price_for("gpt-4o-mini-2099-01-01")
    assert unknown is None and "no price known" in why  # an unlisted snapshot: no guess
    # 1M uncached + 1M cached input + 1M output at 0.15 / 0.075 / 0.60, half price.
    usage = Usage(2_000_000, 1_000_000, cached_input_tokens=1_000_000)
    assert PRICES["gpt-4o-mini"].cost(usage) == pytest.approx((0.15 + 0.075 + 0.60) / 2)
    with pytest.raises(ConfigurationError):
        Price(input=-1.0, output=1.0)
    with pytest.raises(ConfigurationError):
        EnqueueLimit(tokens=0)
    with pytest.raises(ConfigurationError):
        _job(max_cost_usd=-1.0)


def test_the_estimate_before_a_run_matches_what_the_run_stores(runner: BatchRunner) -> None:
    job = _job(request_options={"max_tokens": 10})
    estimate = runner.estimate(job, _items(12))
    assert estimate.requests == 12 and estimate.output_tokens == 120
    assert estimate.enqueue_limit == 60
    assert estimate.waves == -(-estimate.input_tokens // 60)
    assert estimate.cost_usd == pytest.approx((estimate.input_tokens * 1.0 + 120 * 2.0) / 2e6)
    run = runner.start(job, items=_items(12), run_id="est")
    chunks = runner.storage.list_chunks(run.run_id)
    assert sum(c.est_tokens for c in chunks) == estimate.input_tokens
    assert all(c.est_tokens <= 60 and c.model == "m" for c in chunks)  # packed to the limit
    summary = run.summary()
    assert summary.cost == 0.0 and summary.estimated_cost == pytest.approx(estimate.cost_usd)


def test_a_run_waiting_for_budget_says_so_and_goes_on_when_batches_finish(
    runner: BatchRunner,
) -> None:
    provider = runner.provider
    assert isinstance(provider, FakeBatchProvider)
    run = runner.start(_job(chunk_policy=ChunkPolicy(max_requests=3)), items=_items(12), run_id="w")
    summary = run.refresh()
    assert summary.status is RunStatus.RUNNING
    assert summary.batches_in_flight >= 1
    assert summary.waiting_reason is not None
    assert "waiting for enqueued-token budget" in summary.waiting_reason
    in_flight = sum(c.est_tokens for c in runner.storage.list_chunks("w") if c.batch_id is not None)
    assert in_flight <= 60
    provider.hold(False)
    summary = run.wait(timeout=600, poll_interval=1.0)
    assert summary.status is RunStatus.COMPLETED and summary.waiting_reason is None


def test_set_max_cost_validates_and_changes_the_stored_cap(runner: BatchRunner) -> None:
    run = runner.start(_job(max_cost_usd=1.0), items=_items(2), run_id="cap")
    assert run.summary().max_cost_usd == 1.0
    assert run.set_max_cost(5.0).max_cost_usd == 5.0
    # Starting again with the same job keeps the raised cap; a job changed in code wins.
    assert (
        runner.start(_job(max_cost_usd=1.0), items=_items(2), run_id="cap").summary().max_cost_usd
        == 5.0
    )
    assert (
        runner.start(_job(max_cost_usd=2.0), items=_items(2), run_id="cap").summary().max_cost_usd
        == 2.0
    )
    assert run.set_max_cost(None).max_cost_usd is None
    with pytest.raises(ConfigurationError):
        run.set_max_cost(-2.0)


def test_tiktoken_is_asked_only_once_its_cache_file_is_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A stand-in for the optional tiktoken package records whether it was asked at all:
    # asking it without a local file is what would make it download.
    asked: list[str] = []

    class Encoding:
        def encode_ordinary(self, text: str) -> list[str]:
            return text.split()

    def get_encoding(name: str) -> Encoding:
        asked.append(name)
        return Encoding()

    monkeypatch.setitem(sys.modules, "tiktoken", types.SimpleNamespace(get_encoding=get_encoding))
    monkeypatch.setattr(tok, "_failed", {})
    monkeypatch.setattr(tok, "_loaded", {})
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    assert tok.tiktoken_counter("o200k_base") is None and asked == []
    assert tok.line_estimator() is tok.estimate_line_tokens

    monkeypatch.setattr(tok, "_failed", {})
    url = "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken"
    (tmp_path / hashlib.sha1(url.encode()).hexdigest()).write_bytes(b"ranks")
    counter = tok.tiktoken_counter("o200k_base")
    assert counter is not None and counter("a b c") == 3 and asked == ["o200k_base"]
    assert tok.line_estimator()(b"one two") == 2
    assert tok.tiktoken_counter("o200k_base") is counter and asked == ["o200k_base"]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), True, "1"])
def test_a_cost_cap_or_price_that_is_not_a_finite_number_is_refused(
    runner: BatchRunner, bad: object
) -> None:
    # An infinite cap is stored as JSON `Infinity` (not JSON: `status --json` emitted it),
    # True read as a cap of 1 USD, and a NaN or infinite price made every cost NaN or inf.
    with pytest.raises(ConfigurationError, match="finite"):
        _job(max_cost_usd=bad)
    run = runner.start(_job(), items=_items(2), run_id="bad-cap")
    with pytest.raises(ConfigurationError, match="finite"):
        run.set_max_cost(bad)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="finite"):
        Price(input=bad, output=1.0)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="finite"):
        Price(input=1.0, output=1.0, cached_input=bad)  # type: ignore[arg-type]


def test_the_cost_cap_reason_shows_small_amounts_as_they_are(runner: BatchRunner) -> None:
    # A cap of 0.000001 USD read "max_cost_usd 0.0000 USD reached: cost so far 0.0000
    # USD": the numbers the reason is there to give were all rounded away.
    run = runner.start(_job(max_cost_usd=0.000001), items=_items(2), run_id="tiny")
    summary = run.refresh()
    assert summary.status is RunStatus.PAUSED and summary.status_reason is not None
    assert "max_cost_usd 0.000001 USD" in summary.status_reason
    assert "0.0000 " not in summary.status_reason
    assert "the next batch would exceed" in summary.status_reason
    assert re.search(r"requests\) ~0\.0*[1-9]", summary.status_reason)  # not rounded to 0


def test_a_wait_that_times_out_while_waiting_for_budget_says_why(runner: BatchRunner) -> None:
    run = runner.start(_job(chunk_policy=ChunkPolicy(max_requests=3)), items=_items(12), run_id="t")
    with pytest.raises(RunTimeoutError, match="waiting for enqueued-token budget"):
        run.wait(timeout=5, poll_interval=1.0)
