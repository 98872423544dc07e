"""Crash tests: real subprocesses killed with SIGKILL at chosen points, resumed in fresh ones."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def run_worker(
    module: str, tmp_path: Path, *args: str, crash: str | None = None, **env_extra: str
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m <module> DB ARTIFACTS *args`` to completion or to its crash point."""
    env = {**os.environ, "PYTHONPATH": os.getcwd(), **env_extra}
    env.pop("BATCHOR_CRASH_AT", None)
    if crash:
        env["BATCHOR_CRASH_AT"] = crash
    return subprocess.run(
        [
            sys.executable,
            "-m",
            module,
            str(tmp_path / "runs.sqlite3"),
            str(tmp_path / "artifacts"),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
