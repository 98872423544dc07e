"""Collecting finished batches: the runner's cost per output line, alone.

Starts a run of N items on an in-process fake provider that holds its batches, then
lets them finish with output files in the OpenAI Batch format (written before the clock
starts) and times ``run.wait()``: downloading each file into the artifact store,
parsing its lines with the OpenAI provider's parser, validating outputs and recording
the outcomes in the store. Prints wall and CPU seconds per 100k lines. Run by hand:

    .venv/bin/python bench/bench_collect.py --items 100000
    .venv/bin/python bench/bench_collect.py --items 100000 --store postgresql+psycopg://...
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import orjson
from pydantic import BaseModel

from batchor_core import BatchItem, BatchJob, BatchRunner, LocalArtifactStore, SQLiteStorage
from batchor_core.ports import ParsedLine, StateStore
from batchor_core.providers.openai.parsing import parse_line
from batchor_core.testing import FakeBatchProvider


class Label(BaseModel):
    """The output model bench_e2e uses."""

    label: str
    score: int


class _OpenAIShapedProvider(FakeBatchProvider):
    """The fake provider, with output lines in the OpenAI format and its real parser."""

    def parse_line(self, endpoint: str, line: bytes) -> ParsedLine:
        return parse_line(endpoint, line)

    def openai_outputs(self) -> None:
        """Finish every batch now and rewrite its output file the way OpenAI writes it."""
        self.hold(False)
        for created in self.created_batches:
            batch = self.get_batch(created.batch_id)
            assert batch.output_file_id is not None
            name, content = self.files[batch.output_file_id]
            lines = []
            for i, raw in enumerate(content.splitlines()):
                fake = orjson.loads(raw)
                body = {
                    "id": f"chatcmpl-{i}",
                    "object": "chat.completion",
                    "model": "gpt-4o-mini",
                    "choices": [
                        {
                            "index": 0,
                            "message": {
                                "role": "assistant",
                                "content": fake["text"],
                                "refusal": None,
                            },
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {
                        "prompt_tokens": 12,
                        "completion_tokens": 9,
                        "total_tokens": 21,
                        "prompt_tokens_details": {"cached_tokens": 0},
                        "completion_tokens_details": {"reasoning_tokens": 0},
                    },
                }
                line = {
                    "id": f"batch_req_{i}",
                    "custom_id": fake["custom_id"],
                    "response": {"status_code": 200, "request_id": f"req_{i}", "body": body},
                    "error": None,
                }
                lines.append(orjson.dumps(line) + b"\n")
            self.files[batch.output_file_id] = (name, b"".join(lines))


def _respond(body: object) -> str:
    text = str(body["messages"][0]["content"])  # type: ignore[index]
    return orjson.dumps({"label": text[-3:], "score": len(text)}).decode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--store", default=None, help="SQLAlchemy URL (default: a SQLite file)")
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="batchor-collect-"))
    storage: StateStore
    if args.store:
        from batchor_core import PostgresStorage

        storage = PostgresStorage(args.store)
    else:
        storage = SQLiteStorage(workdir / "runs.sqlite3")
    provider = _OpenAIShapedProvider(_respond)
    provider.hold(True)
    runner = BatchRunner(
        storage=storage, artifacts=LocalArtifactStore(workdir / "artifacts"), provider=provider
    )
    job = BatchJob(
        model="gpt-4o-mini",
        build_request=lambda item: {"messages": [{"role": "user", "content": item.payload["t"]}]},
        output_model=Label,
    )
    items = (BatchItem(f"item-{i}", {"t": f"short text number {i}"}) for i in range(args.items))
    run = runner.start(job, items=items)
    # start() ingests and submits every chunk; the provider holds the batches.
    assert sum(b.total for b in provider.created_batches) == args.items
    provider.openai_outputs()

    cpu = resource.getrusage(resource.RUSAGE_SELF)
    t = time.perf_counter()
    summary = run.wait(timeout=3600, poll_interval=0)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_SELF)
    cpu_s = after.ru_utime - cpu.ru_utime + after.ru_stime - cpu.ru_stime
    assert summary.completed_items == args.items, summary
    per = 100_000 / args.items
    print(f"store: {storage!r}")
    print(f"collect {args.items:,} lines: {wall:.2f}s wall, {cpu_s:.2f}s CPU")
    print(f"per 100k lines: {wall * per:.2f}s wall, {cpu_s * per:.2f}s CPU")


if __name__ == "__main__":
    main()
