"""Offline by default: the example talks to batchor's bundled OpenAI emulator.

With no ``BATCHOR_EXAMPLE_BASE_URL`` set, the first run or sensor tick that needs the
provider starts ``python -m batchor_core.testing.emulator`` on 127.0.0.1:8089 as its own
background process (so it outlives the Dagster run that started it), unless something is
already listening there. Set ``BATCHOR_EXAMPLE_BASE_URL`` (or ``OPENAI_BASE_URL`` with a
real ``OPENAI_API_KEY``) to use another endpoint.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg

from batchor_dagster import BatchorResource

__all__ = ["DEFAULT_EMULATOR_PORT", "ExampleBatchorResource", "ensure_emulator"]

DEFAULT_EMULATOR_PORT = 8089


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def ensure_emulator(port: int, log_dir: Path) -> str:
    """Start the bundled emulator on ``port`` unless something listens there; its URL."""
    if not _listening(port):
        log_dir.mkdir(parents=True, exist_ok=True)
        with open(log_dir / "emulator.log", "ab") as log:
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "batchor_core.testing.emulator",
                    "--port",
                    str(port),
                    "--processing",
                    "stepwise",
                    "--in-progress-polls",
                    "2",
                    "--seed",
                    str(int(time.time())),  # fresh batch ids after a restart
                ],
                stdout=log,
                stderr=log,
                start_new_session=True,  # outlives the run or tick that started it
            )
        deadline = time.monotonic() + 15
        while not _listening(port):
            if time.monotonic() > deadline:
                raise dg.Failure(
                    description=f"the bundled emulator did not start on port {port}; see "
                    f"{log_dir / 'emulator.log'}"
                )
            time.sleep(0.1)
    return f"http://127.0.0.1:{port}/v1"


class ExampleBatchorResource(BatchorResource):
    """The batchor resource, starting the local emulator first when no endpoint is set."""

    start_emulator: bool = True
    emulator_port: int = DEFAULT_EMULATOR_PORT

    def setup_for_execution(self, context: dg.InitResourceContext) -> None:
        """Make sure the emulator is up, then build the runner."""
        if self.start_emulator:
            ensure_emulator(self.emulator_port, Path(self.storage_url).parent)
        super().setup_for_execution(context)


def default_base_url(port: int = DEFAULT_EMULATOR_PORT) -> str | None:
    """The endpoint runs use: ``BATCHOR_EXAMPLE_BASE_URL``, else the local emulator."""
    return os.environ.get("BATCHOR_EXAMPLE_BASE_URL") or f"http://127.0.0.1:{port}/v1"
