"""The floor: the least work the end-to-end job needs, in plain Python, and our ratio to it.

Same job as bench/bench_e2e.py (N chat requests with a small structured output), with
none of the durability, packing, retries or provider calls: write the request JSONL,
insert the item rows with executemany into SQLite, parse an output file like the one the
emulator returns (made before the clock starts: that is the provider's work), validate
each line's content with the Pydantic model, update the rows with executemany, and read
the results back as model objects. Our side is measured as the issue asks: the runner's
own time is bench_e2e's wall time (end to end + read back) minus the emulator's CPU
time. Run by hand:

    .venv/bin/python bench/floor.py --items 100000            # floor only
    .venv/bin/python bench/floor.py --items 100000 --compare  # also bench_e2e, and the ratio
"""

from __future__ import annotations

import argparse
import re
import resource
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
from pydantic import BaseModel


class Label(BaseModel):
    """The output model bench_e2e uses."""

    label: str
    score: int


def _output_file(path: Path, n: int) -> None:
    """What the provider would return for the N requests (not timed)."""
    with open(path, "wb") as fh:
        for i in range(n):
            content = orjson.dumps({"label": f"l{i % 7}", "score": i % 100}).decode()
            body = {
                "id": f"chatcmpl-{i}",
                "object": "chat.completion",
                "model": "gpt-4o-mini",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content, "refusal": None},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21},
            }
            line = {
                "id": f"batch_req_{i}",
                "custom_id": f"i{i}s1",
                "response": {"status_code": 200, "request_id": f"req_{i}", "body": body},
                "error": None,
            }
            fh.write(orjson.dumps(line) + b"\n")


def floor(n: int, workdir: Path) -> dict[str, float]:
    """Run the floor job; return seconds per phase."""
    out_file = workdir / "output.jsonl"
    _output_file(out_file, n)
    db = sqlite3.connect(workdir / "floor.sqlite3", isolation_level=None)
    db.execute("pragma journal_mode=wal")
    db.execute("pragma synchronous=normal")
    db.execute(
        "create table items (seq integer primary key, item_id text not null unique, "
        "payload_json text not null, status text not null, output_json text, "
        "input_tokens integer, output_tokens integer)"
    )
    phases: dict[str, float] = {}

    t = time.perf_counter()
    rows = []
    with open(workdir / "requests.jsonl", "wb") as fh:
        for i in range(n):
            payload = {"text": f"short text number {i}"}
            body = {
                "model": "gpt-4o-mini",
                "messages": [{"role": "user", "content": payload["text"]}],
            }
            fh.write(
                orjson.dumps(
                    {
                        "custom_id": f"i{i}s1",
                        "method": "POST",
                        "url": "/v1/chat/completions",
                        "body": body,
                    }
                )
                + b"\n"
            )
            rows.append((i, f"item-{i}", orjson.dumps(payload).decode(), "queued"))
    db.execute("begin")
    db.executemany("insert into items (seq, item_id, payload_json, status) values (?,?,?,?)", rows)
    db.execute("commit")
    phases["ingest"] = time.perf_counter() - t

    t = time.perf_counter()
    updates = []
    with open(out_file, "rb") as fh:
        for raw in fh:
            line = orjson.loads(raw)
            body = line["response"]["body"]
            content = body["choices"][0]["message"]["content"]
            Label.model_validate_json(content)
            usage = body["usage"]
            seq = int(line["custom_id"][1:].partition("s")[0])
            updates.append(
                ("completed", content, usage["prompt_tokens"], usage["completion_tokens"], seq)
            )
    db.execute("begin")
    db.executemany(
        "update items set status=?, output_json=?, input_tokens=?, output_tokens=? "
        "where seq=? and status='queued'",
        updates,
    )
    db.execute("commit")
    phases["collect"] = time.perf_counter() - t

    t = time.perf_counter()
    read = 0
    for item_id, status, output in db.execute(
        "select item_id, status, output_json from items order by seq"
    ):
        result = (item_id, status, Label.model_validate_json(output))
        read += result is not None
    assert read == n
    phases["read"] = time.perf_counter() - t
    db.close()
    return phases


def _ours(n: int) -> dict[str, float]:
    """Run bench_e2e.py in its own process; return its phase seconds."""
    out = subprocess.run(
        [sys.executable, str(Path(__file__).with_name("bench_e2e.py")), "--items", str(n)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    print(out, end="")

    def grab(label: str) -> float:
        found = re.search(rf"{label}.*?([0-9.]+)s", out)
        assert found, (label, out)
        return float(found.group(1))

    return {
        "end_to_end": grab("end to end:"),
        "read": grab("read results:"),
        "emulator": grab("emulator CPU:"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--compare", action="store_true", help="also run bench_e2e.py")
    args = parser.parse_args()
    # Ours first: Linux carries a process's peak RSS over fork and exec, so bench_e2e
    # started after the floor (which holds every update in memory) would report the
    # floor's peak as its own.
    ours = _ours(args.items) if args.compare else None
    with tempfile.TemporaryDirectory(prefix="batchor-floor-") as tmp:
        phases = floor(args.items, Path(tmp))
    total = sum(phases.values())
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        "floor: "
        + ", ".join(f"{k} {v:.2f}s" for k, v in phases.items())
        + f"; total {total:.2f}s = {args.items / total:,.0f} items/s; peak RSS {peak:.0f} MB"
    )
    if ours is not None:
        wall = ours["end_to_end"] + ours["read"]
        # The measure: the runner's own time is the wall time minus the time the
        # emulator (the provider's stand-in, its own process) spent answering, taken as
        # its CPU time. On a loaded machine that undercounts the emulator's share.
        own = wall - ours["emulator"]
        print(
            f"ours: end to end + read back {wall:.2f}s, of which the emulator's CPU "
            f"{ours['emulator']:.2f}s; runner's own time {own:.2f}s vs floor {total:.2f}s"
        )
        print(
            f"throughput ratio (floor time / runner's own time) = {total / own:.2f} of the "
            f"floor (wall time, emulator included: {total / wall:.2f})"
        )


if __name__ == "__main__":
    main()
