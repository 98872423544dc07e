"""A run that cannot move says why: provider faults that no retry fixes pause the run.

The real SDK over HTTP against the emulator (or a socket that answers HTML, or nothing),
real SQLite files and Postgres. Steps are driven with ``refresh()`` a bounded number of
times, or ``wait()`` on a fake clock, so a silent loop fails the test instead of hanging.
"""

from __future__ import annotations

import http.server
import socket
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from batchor_core import (
    BatchItem,
    BatchJob,
    BatchRunner,
    ConfigurationError,
    FakeClock,
    ItemStatus,
    OpenAIBatchProvider,
    OpenAIProviderConfig,
    PostgresStorage,
    Run,
    RunStatus,
    RunTimeoutError,
)
from tests.conftest import POSTGRES_URL, SilentServer, postgres_param
from tests.integration.review_model import Review

pytestmark = pytest.mark.integration


def _items(n: int) -> list[BatchItem]:
    return [BatchItem(item_id=f"r{i}", payload={"text": f"review {i} please"}) for i in range(n)]


def _job(**kwargs: Any) -> BatchJob:
    return BatchJob(model="gpt-4o-mini", build_prompt=lambda it: it.payload["text"], **kwargs)


def _refresh(run: Run, times: int = 6) -> None:
    for _ in range(times):
        run.refresh()


def _finish(run: Run) -> None:
    summary = run.wait(timeout=60, poll_interval=0.05)
    assert summary.status is RunStatus.COMPLETED, summary
    assert summary.stalled_chunks == 0 and summary.last_error is None


def _one_result_each(run: Run, n: int) -> None:
    results = list(run.results())
    assert Counter(r.status for r in results) == {ItemStatus.COMPLETED: n}
    assert sorted(r.item_id for r in results) == sorted(f"r{i}" for i in range(n))


@pytest.mark.parametrize("store", ["sqlite", postgres_param()])
def test_a_404_on_the_output_download_pauses_with_the_call_and_resume_finishes(
    make_runner: Callable[..., BatchRunner], emulator: Any, store: str, run_id: str
) -> None:
    overrides: dict[str, Any] = {"permanent_error_budget_seconds": 0.0}
    if store == "postgres":
        assert POSTGRES_URL
        overrides["storage"] = PostgresStorage(POSTGRES_URL)
    emulator.faults.http_error(
        method="GET", path="/v1/files/{id}/content", status=404, count=1000, message="gone"
    )
    run = make_runner(**overrides).start(_job(), items=_items(4), run_id=run_id)
    _refresh(run)
    summary = run.summary()
    assert summary.status is RunStatus.PAUSED
    reason = summary.status_reason or ""
    assert "downloading file" in reason and "HTTP 404" in reason and "gone" in reason
    assert summary.stalled_chunks == 1
    assert summary.last_error is not None and "HTTP 404" in summary.last_error
    # wait() returns on a paused run whose only batch is stalled, instead of looping.
    assert run.wait(timeout=30, poll_interval=0.05).status is RunStatus.PAUSED

    emulator.faults.clear()
    run.resume()
    _finish(run)
    _one_result_each(run, 4)
    assert emulator.batch_create_count == 1


def test_a_permanent_error_is_retried_for_about_a_minute_then_pauses(
    make_runner: Callable[..., BatchRunner], emulator: Any
) -> None:
    clock = FakeClock()
    emulator.faults.http_error(method="GET", path="/v1/files/{id}/content", status=400, count=50)
    run = make_runner(clock=clock, transient_backoff_seconds=5.0).start(
        _job(), items=_items(2), run_id="permanent"
    )
    started = clock.now()
    summary = run.wait(timeout=3600, poll_interval=1.0)  # fake time: returns at once
    elapsed = (clock.now() - started).total_seconds()
    assert summary.status is RunStatus.PAUSED
    assert "HTTP 400" in (summary.status_reason or "")
    assert 60 <= elapsed < 120, elapsed  # a few retries within about a minute, then pause


def test_transient_errors_back_off_until_the_budget_then_pause(
    make_runner: Callable[..., BatchRunner], emulator: Any
) -> None:
    clock = FakeClock()
    emulator.faults.http_error(method="GET", path="/v1/batches/{id}", status=503, count=10_000)
    run = make_runner(clock=clock, transient_backoff_seconds=30.0).start(
        _job(), items=_items(2), run_id="transient"
    )
    summary = run.wait(timeout=7200, poll_interval=60.0)
    assert summary.status is RunStatus.PAUSED
    reason = summary.status_reason or ""
    assert "reading batch" in reason and "HTTP 503" in reason and "30 min" in reason

    emulator.faults.clear()
    run.resume()
    _finish(run)


def test_a_404_listing_batches_while_reconciling_pauses_and_never_duplicates(
    make_runner: Callable[..., BatchRunner], emulator: Any
) -> None:
    emulator.faults.http_error(method="POST", path="/v1/batches", status=500, count=1)
    emulator.faults.http_error(method="GET", path="/v1/batches", status=404, count=1000)
    run = make_runner(permanent_error_budget_seconds=0.0).start(
        _job(), items=_items(3), run_id="reconcile"
    )
    _refresh(run)
    summary = run.summary()
    assert summary.status is RunStatus.PAUSED
    assert "listing batches" in (summary.status_reason or "")
    assert "HTTP 404" in (summary.status_reason or "")
    assert summary.stalled_chunks == 1

    emulator.faults.clear()
    run.resume()
    _finish(run)
    assert emulator.batch_create_count == 1


def test_a_404_listing_files_while_recovering_an_upload_pauses(
    make_runner: Callable[..., BatchRunner], emulator: Any
) -> None:
    emulator.faults.drop_connection(method="POST", path="/v1/files", count=1)
    emulator.faults.http_error(method="GET", path="/v1/files", status=404, count=1000)
    run = make_runner(permanent_error_budget_seconds=0.0).start(
        _job(), items=_items(3), run_id="orphans"
    )
    _refresh(run)
    summary = run.summary()
    assert summary.status is RunStatus.PAUSED
    assert "listing files" in (summary.status_reason or "")

    emulator.faults.clear()
    run.resume()
    _finish(run)
    _one_result_each(run, 3)


class _CorruptingProvider(OpenAIBatchProvider):
    """The real provider; the first output file it downloads has two corrupt lines."""

    corrupted = False

    def download_file(self, file_id: str) -> Iterator[bytes]:
        data = b"".join(super().download_file(file_id))
        if self.corrupted or not data:
            return iter([data])
        self.corrupted = True
        lines = data.splitlines(keepends=True)
        # A line cut short (its custom_id still readable), and one with no id at all.
        lines[0] = lines[0][: len(lines[0]) // 2] + b"\n"
        lines[1] = b"<html>proxy error</html>\n"
        return iter([b"".join(lines)])


def test_corrupt_output_lines_fail_their_items_not_the_batch(
    make_runner: Callable[..., BatchRunner], emulator: Any
) -> None:
    provider = _CorruptingProvider(
        OpenAIProviderConfig(api_key="sk-test", base_url=emulator.base_url, max_retries=0)
    )
    run = make_runner(provider=provider).start(
        _job(output_model=Review), items=_items(5), run_id="corrupt"
    )
    _finish(run)
    _one_result_each(run, 5)
    attempts = Counter(r.attempts for r in run.results())
    assert attempts == {1: 3, 2: 2}  # the two corrupt lines' items were retried once
    assert emulator.batch_create_count == 2


class _HtmlHandler(http.server.BaseHTTPRequestHandler):
    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        self.rfile.read(length)
        body = b"<html><body>Welcome to nginx!</body></html>"
        self.send_response(200)
        self.send_header("content-type", "text/html")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_DELETE = _answer

    def log_message(self, *_args: Any) -> None:
        return


@pytest.fixture
def html_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _HtmlHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_a_base_url_answering_html_pauses_the_run_with_a_reason(
    make_runner: Callable[..., BatchRunner], html_server: str
) -> None:
    config = OpenAIProviderConfig(api_key="sk-test", base_url=html_server, max_retries=0)
    runner = make_runner(provider=config, permanent_error_budget_seconds=0.0)
    run = runner.start(_job(), items=_items(2), run_id="html")  # no AttributeError
    _refresh(run, 2)
    summary = run.summary()
    assert summary.status is RunStatus.PAUSED
    assert "unexpected" in (summary.status_reason or "")
    assert "uploading" in (summary.status_reason or "")


def test_nothing_listening_at_base_url_pauses_when_the_transient_budget_is_spent(
    make_runner: Callable[..., BatchRunner], tmp_path: Path
) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = OpenAIProviderConfig(
        api_key="sk-test", base_url=f"http://127.0.0.1:{port}/v1", max_retries=0
    )
    runner = make_runner(provider=config, transient_error_budget_seconds=0.0)
    run = runner.start(_job(), items=_items(2), run_id="nobody")
    _refresh(run, 2)
    summary = run.summary()
    assert summary.status is RunStatus.PAUSED
    reason = summary.status_reason or ""
    assert "Connection to OpenAI failed while uploading" in reason
    assert summary.last_error is not None


class _LateCommitProvider(OpenAIBatchProvider):
    """The real provider, on a service that lists a new batch only a while after creating it."""

    hidden_lookups = 2

    def find_batches(self, metadata: Any, *, max_pages: int = 20) -> list[Any]:
        if self.hidden_lookups > 0:
            self.hidden_lookups -= 1
            return []
        return super().find_batches(metadata, max_pages=max_pages)


def test_an_ambiguous_create_committed_late_does_not_become_a_second_batch(
    make_runner: Callable[..., BatchRunner], emulator: Any
) -> None:
    clock = FakeClock()
    emulator.faults.commit_then_fail(status=502)
    provider = _LateCommitProvider(
        OpenAIProviderConfig(api_key="sk-test", base_url=emulator.base_url, max_retries=0)
    )
    run = make_runner(provider=provider, clock=clock, create_grace_seconds=60.0).start(
        _job(), items=_items(3), run_id="late"
    )
    summary = run.wait(timeout=600, poll_interval=1.0)
    assert summary.status is RunStatus.COMPLETED
    assert provider.hidden_lookups == 0
    assert emulator.batch_create_count == 1  # adopted once listed, never created again


def test_a_cancel_whose_batch_cannot_be_read_still_finishes(
    make_runner: Callable[..., BatchRunner], emulator: Any
) -> None:
    clock = FakeClock()
    emulator.faults.hold_batches()
    run = make_runner(clock=clock).start(_job(), items=_items(3), run_id="cancel-unreadable")
    assert run.summary().batches_in_flight == 1
    emulator.faults.http_error(
        method="*", path="/v1/batches/*", status=404, count=10**6, message="No such batch"
    )
    run.cancel("stop")
    for _ in range(6):  # past the permanent-error budget, on the fake clock
        clock.advance(30)
        summary = run.refresh()
    assert summary.status is RunStatus.CANCELLED, summary
    assert summary.cancelled_items == 3 and summary.batches_in_flight == 0
    assert run.wait(timeout=1).status is RunStatus.CANCELLED


def test_wait_keeps_its_timeout_while_every_step_records_another_error(
    make_runner: Callable[..., BatchRunner], emulator: Any
) -> None:
    # No backoff and a provider that always fails the upload: every step "changes"
    # something (a new error), so wait() used to loop without ever checking its timeout.
    emulator.faults.http_error(method="POST", path="/v1/files", status=500, count=10**6)
    runner = make_runner(transient_backoff_seconds=0.0)
    run = runner.start(_job(), items=_items(2), run_id="no-backoff")
    outcome: list[BaseException] = []

    def waiter() -> None:
        try:
            run.wait(timeout=1.0, poll_interval=0.05)
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=waiter, daemon=True)
    thread.start()
    thread.join(timeout=60)
    assert not thread.is_alive(), "wait() ignored its timeout"
    assert len(outcome) == 1 and isinstance(outcome[0], RunTimeoutError), outcome


def test_wait_refuses_a_timeout_or_interval_that_is_not_a_number_of_seconds(
    make_runner: Callable[..., BatchRunner],
) -> None:
    runner = make_runner()
    run = runner.start(_job(), items=_items(1), run_id="bad-wait")
    for bad in ({"timeout": float("nan")}, {"timeout": -1.0}, {"poll_interval": float("nan")}):
        with pytest.raises(ConfigurationError, match="must be a number of seconds"):
            run.wait(**bad)  # NaN used to wait for ever: no comparison with it is true
    assert run.wait(timeout=float("inf"), poll_interval=0.01).is_finished


def test_a_provider_that_never_answers_holds_a_step_for_one_call_not_one_per_batch(
    make_runner: Callable[..., BatchRunner], emulator: Any, silent_server: SilentServer
) -> None:
    from batchor_core import ChunkPolicy

    emulator.faults.hold_batches()
    runner = make_runner()
    job = _job(chunk_policy=ChunkPolicy(max_requests=1))
    run = runner.start(job, items=_items(3), run_id="silent")
    assert run.summary().batches_in_flight == 3
    stuck = make_runner(
        provider=OpenAIProviderConfig(
            api_key="sk-test", base_url=silent_server.base_url, timeout_seconds=0.5
        )
    )
    summary = stuck.get_run("silent").refresh()
    assert len(silent_server.accepted) == 1  # one batch's poll, not one timeout per batch
    assert summary.last_error is not None and "timed out" in summary.last_error
    assert summary.batches_in_flight == 3
