"""A real batchor run end to end, offline: SQLite + local artifacts + the bundled emulator.

Run it with ``bash scripts/demo.sh`` (or ``python examples/quickstart.py`` in the venv).
The official ``openai`` SDK talks real HTTP to the emulator on 127.0.0.1; swap the
provider for ``OpenAIProviderConfig()`` (reads OPENAI_API_KEY) to run against OpenAI.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path
from typing import Literal

from pydantic import BaseModel

from batchor_core import (
    BatchItem,
    BatchJob,
    BatchRunner,
    LocalArtifactStore,
    OpenAIProviderConfig,
    SQLiteStorage,
)
from batchor_core.testing import OpenAIEmulator


class Review(BaseModel):
    """What we want back for every review."""

    sentiment: Literal["positive", "neutral", "negative"]
    score: int
    summary: str
    complaint: str | None


PHRASES = ["great value", "broke after a week", "does the job", "love it", "too loud", "meh"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items", type=int, default=2_000)
    parser.add_argument("--dir", type=Path, default=None, help="where the SQLite file goes")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    for noisy in ("httpx", "httpx2", "openai"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    workdir = args.dir or Path(tempfile.mkdtemp(prefix="batchor-demo-"))

    items = (
        BatchItem(
            item_id=f"review-{i}", payload={"text": f"Review {i}: {PHRASES[i % len(PHRASES)]}"}
        )
        for i in range(args.items)
    )
    job = BatchJob(
        model="gpt-4o-mini",
        endpoint="/v1/chat/completions",
        build_request=lambda item: {
            "messages": [
                {"role": "system", "content": "Classify the product review."},
                {"role": "user", "content": item.payload["text"]},
            ]
        },
        output_model=Review,
        request_options={"temperature": 0},
    )
    with OpenAIEmulator(processing="stepwise") as emu:
        runner = BatchRunner(
            storage=SQLiteStorage(workdir / "runs.sqlite3"),
            artifacts=LocalArtifactStore(workdir / "artifacts"),
            provider=OpenAIProviderConfig(api_key="sk-demo", base_url=emu.base_url),
        )
        started = time.perf_counter()
        run = runner.start(
            job,
            items=items,
            run_id="demo-reviews",
            on_progress=lambda s: print(f"  ingested {s.total_items} items"),
        )
        summary = run.wait(
            timeout=300,
            poll_interval=0.2,
            on_progress=lambda s: print(
                f"  progress: {s.completed_items + s.failed_items}/{s.total_items} done, "
                f"{s.batches_in_flight} batch(es) in flight"
            ),
        )
        elapsed = time.perf_counter() - started

    print()
    print(f"run {summary.run_id}: {summary.status.value} in {elapsed:.1f}s")
    print(
        f"  items {summary.total_items}: {summary.completed_items} completed, "
        f"{summary.failed_items} failed, {summary.batches_total} provider batch(es)"
    )
    print(f"  tokens in/out: {summary.usage.input_tokens}/{summary.usage.output_tokens}")
    if summary.cost is not None:
        print(f"  cost at Batch API prices: {summary.cost:.4f} USD (docs/cost.md)")
    for result in list(run.results())[:3]:
        review = result.output
        assert isinstance(review, Review)
        print(f"  {result.item_id}: {review.sentiment} score={review.score} ({review.summary!r})")
    print(
        "  (the emulator's answers are synthetic but schema-valid;"
        " point the provider at OpenAI for real ones)"
    )
    print(f"  state: {workdir / 'runs.sqlite3'}   artifacts: {workdir / 'artifacts'}")


if __name__ == "__main__":
    main()
