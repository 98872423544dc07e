"""What estimating the input tokens of 1M requests costs (goal: under 2 s).

Two numbers:

- ``estimate lines``: the per-request estimate the runner adds to ingest (and to retry
  chunks), over 1M prepared JSONL request lines: the default estimator (4 bytes per token)
  as :func:`batchor_core.tokens.line_estimator` returns it in this process.
- ``runner.estimate``: :meth:`BatchRunner.estimate` end to end over 1M items: building
  each request body exactly as a run would (prompt builder, shaping, JSON) plus the
  estimate, with the OpenAI provider config (no network call is made).

Run by hand:

    .venv/bin/python bench/bench_estimate.py [--items 1000000]
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=1_000_000)
    args = parser.parse_args()
    n = args.items

    from batchor_core import BatchItem, BatchJob, BatchRunner, MemoryStateStore
    from batchor_core.providers.openai import OpenAIProviderConfig
    from batchor_core.tokens import line_estimator, unavailable_reason

    lines = [
        b'{"custom_id":"i%ds1","method":"POST","url":"/v1/chat/completions","body":'
        b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"Classify the '
        b'sentiment of review %d: the product arrived late but works well."}]}}\n' % (i, i)
        for i in range(n)
    ]
    estimate = line_estimator()
    started = time.perf_counter()
    total = sum(map(estimate, lines))
    lines_s = time.perf_counter() - started
    print(f"estimator: {getattr(estimate, '__name__', estimate)!s}")
    print(f"  (tiktoken: {unavailable_reason() or 'loaded or not tried'})")
    print(
        f"estimate lines     {n:>9,} lines  {lines_s:6.3f} s  {n / lines_s:>12,.0f}/s  "
        f"({total:,} tokens)"
    )

    items = [
        BatchItem(item_id=f"r{i}", payload={"text": f"review {i}: arrived late, works well"})
        for i in range(n)
    ]
    job = BatchJob(
        model="gpt-4o-mini", build_prompt=lambda item: f"Classify: {item.payload['text']}"
    )
    with BatchRunner(
        storage=MemoryStateStore(), provider=OpenAIProviderConfig(api_key="sk-bench")
    ) as runner:
        started = time.perf_counter()
        result = runner.estimate(job, items)
        full_s = time.perf_counter() - started
    print(
        f"runner.estimate    {n:>9,} items  {full_s:6.3f} s  {n / full_s:>12,.0f}/s  "
        f"({result.input_tokens:,} tokens, {result.cost_usd:.2f} USD)"
    )
    print(
        f"goal < 2 s for the estimate: {'met' if lines_s < 2 else 'missed'} "
        f"(lines), {'met' if full_s < 2 else 'missed'} (end to end)"
    )


if __name__ == "__main__":
    main()
