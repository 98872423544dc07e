"""Run the emulator standalone: ``python -m batchor_core.testing.emulator --port 8765``.

Prints ``batchor emulator listening on <base_url>`` once ready and serves until Ctrl-C
(or SIGTERM).
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from types import FrameType

from .emulator import OpenAIEmulator


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, serve until interrupted, and return the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m batchor_core.testing.emulator",
        description="Serve an emulated OpenAI Files + Batches API.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind")
    parser.add_argument("--port", type=int, default=0, help="port to bind (0: any free port)")
    parser.add_argument("--processing", choices=("instant", "stepwise"), default="instant")
    parser.add_argument("--data-dir", default=None, help="directory for file bytes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--api-key", default=None, help="require this bearer token")
    parser.add_argument("--in-progress-polls", type=int, default=1)
    parser.add_argument("--enqueued-token-limit", type=int, default=None)
    args = parser.parse_args(argv)

    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    emulator = OpenAIEmulator(
        host=args.host,
        port=args.port,
        processing=args.processing,
        seed=args.seed,
        data_dir=args.data_dir,
        api_key=args.api_key,
        in_progress_polls=args.in_progress_polls,
        enqueued_token_limit=args.enqueued_token_limit,
    )
    with emulator:
        print(f"batchor emulator listening on {emulator.base_url}", flush=True)
        try:
            while not stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
    print("batchor emulator stopped", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
