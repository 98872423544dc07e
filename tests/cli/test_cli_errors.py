"""Every foreseeable failure: one line on stderr, a documented exit code, no traceback.

In-process (``batchor_core.cli.app.run``), so the many cases stay fast; the subprocess
tests show the same holds for the real console script.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from batchor_core.cli.app import run as cli
from batchor_core.cli.errors import ExitCode

from .helpers import write_csv

START = ["start", "in.csv", "--model", "gpt-4o-mini"]


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, dict[str, str]]]:
    """One directory with a completed 20-item run ``done`` (from ``in.csv``, prompt field
    ``text``) and the environment that reaches it, shared by the error cases."""
    from batchor_core.testing import OpenAIEmulator

    workdir = tmp_path_factory.mktemp("cli-errors")
    write_csv(workdir / "in.csv", 20)
    (workdir / "in.txt").write_text("id,text\n1,x\n")
    with OpenAIEmulator(processing="instant") as emu, pytest.MonkeyPatch.context() as mp:
        env = {
            "OPENAI_BASE_URL": emu.base_url,
            "OPENAI_API_KEY": "sk-test",
            "BATCHOR_STORE": str(workdir / "batchor.sqlite3"),
            "BATCHOR_ARTIFACTS": str(workdir / "artifacts"),
        }
        for key, value in env.items():
            mp.setenv(key, value)
        mp.chdir(workdir)
        assert cli([*START, "--prompt-field", "text", "--run-id", "done", "--wait"]) == 0
        yield workdir, env


@pytest.fixture
def finished_run(
    shared: tuple[Path, dict[str, str]], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> str:  # fmt: skip
    workdir, env = shared
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(workdir)
    capsys.readouterr()
    return "done"


CASES: list[tuple[str, list[str], ExitCode, str]] = [
    ("unknown command", ["bogus"], ExitCode.USAGE, "No such command 'bogus'"),
    ("missing --model", ["start", "in.csv", "--prompt-field", "text"], ExitCode.USAGE,
     "Missing option '--model'"),
    ("template and field", [*START, "--prompt-field", "text", "--prompt-template", "{text}"],
     ExitCode.USAGE, "exactly one of --prompt-template and --prompt-field"),
    ("neither template nor field", START, ExitCode.USAGE, "exactly one of"),
    ("positional template field", [*START, "--prompt-template", "say {}"], ExitCode.USAGE,
     "named after columns"),
    ("bad endpoint", [*START, "--prompt-field", "text", "--endpoint", "embeddings"],
     ExitCode.USAGE, "Invalid value for '--endpoint'"),
    ("output model not importable", [*START, "--prompt-field", "text", "--output-model",
     "no_such_module:Model"], ExitCode.USAGE, "cannot import 'no_such_module'"),
    ("output model not a model", [*START, "--prompt-field", "text", "--output-model",
     "json:JSONDecoder"], ExitCode.USAGE, "is not a pydantic model class"),
    ("output model without class", [*START, "--prompt-field", "text", "--output-model", "json"],
     ExitCode.USAGE, "module:Class"),
    ("bad store URL", ["status", "done", "--store", "mysql://u:secret@h/db"], ExitCode.USAGE,
     "bad store URL 'mysql://***@h/db'"),
    ("unreachable store", ["status", "done", "--store", "postgresql://u:secret@127.0.0.1:1/db"],
     ExitCode.UNAVAILABLE, "cannot open the batchor store at postgresql://u:***@127.0.0.1:1/db"),
    ("no store file", ["status", "done", "--store", "nowhere.sqlite3"], ExitCode.NOT_FOUND,
     "no batchor store at nowhere.sqlite3"),
    ("unknown run", ["status", "nope"], ExitCode.NOT_FOUND, "no run 'nope'"),
    ("unknown run to wait on", ["wait", "nope"], ExitCode.NOT_FOUND, "no run 'nope'"),
    ("unknown item", ["item", "done", "zzz"], ExitCode.NOT_FOUND, "run 'done' has no item 'zzz'"),
    ("missing input file", ["start", "gone.csv", "--model", "m", "--prompt-field", "text"],
     ExitCode.INPUT, "input file not found: gone.csv"),
    ("unknown input format", ["start", "in.txt", "--model", "m", "--prompt-field", "text"],
     ExitCode.INPUT, "cannot tell the format of in.txt"),
    ("missing column", [*START, "--prompt-field", "body"], ExitCode.INPUT,
     "no payload column 'body'"),
    ("missing template column", [*START, "--prompt-template", "Say {body}"], ExitCode.INPUT,
     "no payload column 'body'"),
    ("missing id column", [*START, "--prompt-field", "text", "--id-column", "key"],
     ExitCode.INPUT, "'key'"),
    ("changed job", [*START, "--prompt-template", "Other: {text}", "--run-id", "done"],
     ExitCode.CONFLICT, "was started with a different job: the request builder"),
    ("changed model", [*START[:-1], "gpt-4o", "--prompt-field", "text", "--run-id", "done"],
     ExitCode.CONFLICT, "model ('gpt-4o-mini' -> 'gpt-4o')"),
    ("pause a finished run", ["pause", "done"], ExitCode.CONFLICT, "it is already completed"),
    ("cancel a finished run", ["cancel", "done"], ExitCode.CONFLICT, "it is already completed"),
    ("prune unexported outputs", ["prune", "done", "--raw-outputs"], ExitCode.CONFLICT,
     "(batchor results RUN --output FILE); pass --force to delete them anyway"),
    ("results to an unknown format", ["results", "done", "-o", "out.txt"], ExitCode.USAGE,
     "cannot tell the format of out.txt"),
    ("bad list status", ["list", "--status", "sleeping"], ExitCode.USAGE,
     "Invalid value for '--status'"),
    ("bad owner filter", ["list", "--owner", "asset"], ExitCode.USAGE, "KEY=VALUE"),
    ("bad line fault", ["emulator", "--line-fault", "explode:x"], ExitCode.USAGE,
     "--line-fault takes KIND:TEXT"),
]  # fmt: skip


@pytest.mark.integration
@pytest.mark.parametrize(
    ("args", "code", "message"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_error_is_one_line_with_its_exit_code(
    finished_run: str,
    args: list[str],
    code: ExitCode,
    message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert cli(args) == code
    captured = capsys.readouterr()
    lines = captured.err.splitlines()
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("batchor: error: ")
    assert message in lines[0]
    assert "secret" not in captured.err


@pytest.mark.integration
def test_an_empty_store_file_stays_empty_and_a_directory_is_no_output_file(
    finished_run: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty.sqlite3"
    empty.touch()
    assert cli(["status", "done", "--store", str(empty)]) == ExitCode.NOT_FOUND
    assert capsys.readouterr().err.splitlines() == [
        f"batchor: error: {empty} is empty, not a batchor store"
    ]
    assert empty.stat().st_size == 0  # a read command wrote a schema into it before
    (tmp_path / "out.csv").mkdir()
    assert cli(["results", "done", "-o", str(tmp_path / "out.csv")]) == ExitCode.USAGE
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("batchor: error: cannot export to") and "is a directory" in line


def test_no_api_key(
    tmp_path: Path, cli_env: dict[str, str], monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    monkeypatch.delenv("OPENAI_API_KEY")
    write_csv(tmp_path / "in.csv", 3)
    assert cli([*START, "--prompt-field", "text", "--run-id", "nokey"]) == ExitCode.USAGE
    assert capsys.readouterr().err.splitlines() == [
        "batchor: error: No OpenAI API key: set OPENAI_API_KEY"
    ]
    assert not (tmp_path / "state").exists()  # no store and no artifact directory
    assert cli(["list", "--json"]) == ExitCode.NOT_FOUND  # no store was made


def test_a_misspelled_field_of_a_jsonl_input_fails_before_a_run_exists(
    tmp_path: Path, cli_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "in.jsonl").write_text('{"id": "a", "text": "x"}\n{"id": "b", "text": "y"}\n')
    base = ["start", "in.jsonl", "--model", "gpt-4o-mini", "--run-id", "j"]
    assert cli([*base, "--id-column", "ident", "--prompt-field", "text"]) == ExitCode.INPUT
    (line,) = capsys.readouterr().err.splitlines()
    assert "the first record of in.jsonl has no field 'ident'; its fields are 'id', 'text'" in line
    assert cli([*base, "--id-column", "id", "--prompt-template", "Say {txt}"]) == ExitCode.INPUT
    assert "no field 'txt'" in capsys.readouterr().err
    # Nothing was taken: the right flags start the run under the same id.
    assert cli([*base, "--id-column", "id", "--prompt-field", "text", "--wait"]) == ExitCode.OK


def test_results_of_a_run_still_going_say_they_are_partial(
    tmp_path: Path, cli_env: dict[str, str], emulator: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    emulator.faults.hold_batches()
    write_csv(tmp_path / "in.csv", 3)
    assert cli([*START, "--prompt-field", "text", "--run-id", "going"]) == ExitCode.OK
    capsys.readouterr()
    assert cli(["results", "going"]) == ExitCode.OK
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [
        "batchor: note: run going is running with 3 of 3 items pending: these results are partial"
    ]
    assert cli(["results", "going", "-o", "early.jsonl"]) == ExitCode.OK
    assert "wrote 0 results" in capsys.readouterr().out


def test_empty_input_file(
    tmp_path: Path, cli_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "in.csv").write_text("")
    assert cli([*START, "--prompt-field", "text"]) == ExitCode.INPUT
    assert len(capsys.readouterr().err.splitlines()) == 1


def test_help_and_usage(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli(["--help"]) == 0
    out = capsys.readouterr().out
    for command in ("start", "wait", "status", "list", "results", "item", "pause", "resume",
                    "cancel", "prune", "emulator", "Exit codes"):  # fmt: skip
        assert command in out
    assert cli([]) == 0
    assert capsys.readouterr().out.startswith("Usage: batchor")
