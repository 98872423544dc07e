"""The standalone emulator: ``python -m batchor_core.testing.emulator``."""

from __future__ import annotations

import queue
import re
import subprocess
import sys
import threading
from pathlib import Path

import openai
import pytest

from batchor_core.testing import OpenAIEmulator

pytestmark = pytest.mark.integration


def test_standalone_server_serves_until_terminated(tmp_path: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "batchor_core.testing.emulator",
        "--port",
        "0",
        "--processing",
        "stepwise",
        "--data-dir",
        str(tmp_path),
    ]
    with subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    ) as process:
        stdout = process.stdout
        assert stdout is not None
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=lambda: lines.put(stdout.readline()), daemon=True).start()
        try:
            first = lines.get(timeout=15)
            match = re.fullmatch(
                r"batchor emulator listening on (http://127\.0\.0\.1:(\d+)/v1)\n", first
            )
            assert match is not None, first
            assert int(match.group(2)) > 0
            with openai.OpenAI(api_key="k", base_url=match.group(1), max_retries=0) as client:
                file = client.files.create(file=("a.jsonl", b"{}\n"), purpose="batch")
                assert client.files.retrieve(file.id).bytes == 3
            assert (tmp_path / file.id).read_bytes() == b"{}\n"
        finally:
            process.terminate()
            _, stderr = process.communicate(timeout=15)
        assert process.returncode == 0, stderr


def test_lifecycle_guards(tmp_path: Path) -> None:
    emulator = OpenAIEmulator(data_dir=tmp_path / "data")
    with pytest.raises(RuntimeError):
        _ = emulator.port
    with emulator:
        with pytest.raises(RuntimeError):
            emulator.start()
        assert emulator.base_url == f"http://127.0.0.1:{emulator.port}/v1"
    emulator.stop()  # idempotent
    with pytest.raises(RuntimeError):
        emulator.start()
    assert (tmp_path / "data").is_dir()  # a caller's data_dir is kept
    with pytest.raises(ValueError):
        OpenAIEmulator(processing="eventually")  # type: ignore[arg-type]


def test_temporary_data_dir_is_removed_on_stop() -> None:
    with OpenAIEmulator() as emulator:
        data_dir = emulator.data_dir
        assert data_dir.is_dir()
    assert not data_dir.exists()
