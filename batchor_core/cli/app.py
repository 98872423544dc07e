"""The ``batchor`` command: a thin operator shell over the public Python API.

Every failure a user can foresee ends in one line on stderr (``batchor: error: ...``)
and an exit code from :class:`~batchor_core.cli.errors.ExitCode`; only a bug shows a
traceback.
"""

from __future__ import annotations

import sys

import typer

from batchor_core.cli import control_commands, read_commands, run_commands
from batchor_core.cli.emulator_command import emulator
from batchor_core.cli.errors import CliError, ExitCode, exit_code_for
from batchor_core.errors import BatchorError

__all__ = ["app", "main", "run"]

_EPILOG = (
    "Exit codes: 0 ok, 2 usage or configuration, 3 not found, 4 bad input file, "
    "5 conflict (changed job or input, finished run, unexported data), 6 store or "
    "provider unavailable, 7 run completed with failed items, 8 run cancelled, "
    "9 run paused, 10 timeout, 11 run busy in another process."
)

app = typer.Typer(
    name="batchor",
    help="Durable runs over the OpenAI Batch API: start, follow, inspect and control them.",
    epilog=_EPILOG,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback(invoke_without_command=True)
def _root(ctx: typer.Context) -> None:
    # Plain ``batchor`` shows the help (on stdout, exit 0) instead of a usage error.
    if ctx.invoked_subcommand is None:
        print(ctx.get_help())


app.command("start")(run_commands.start)
app.command("wait")(run_commands.wait)
app.command("status")(read_commands.status)
app.command("list")(read_commands.list_runs)
app.command("results")(read_commands.results)
app.command("item")(read_commands.item)
app.command("pause")(control_commands.pause)
app.command("resume")(control_commands.resume)
app.command("cancel")(control_commands.cancel)
app.command("prune")(control_commands.prune)
app.command("break-lease")(control_commands.break_lease)
db_app = typer.Typer(help="The control-plane store itself.", no_args_is_help=True)
db_app.command("upgrade")(control_commands.db_upgrade)
app.add_typer(db_app, name="db")
app.command("emulator")(emulator)


def run(argv: list[str] | None = None) -> int:
    """Run the CLI on ``argv`` (``sys.argv[1:]`` by default) and return the exit code."""
    command = typer.main.get_command(app)
    try:
        result = command.main(args=argv, prog_name="batchor", standalone_mode=False)
    except (typer.Abort, KeyboardInterrupt):
        return _fail("interrupted", ExitCode.INTERRUPTED)
    except typer.TyperException as exc:  # bad flags: typer's usage errors
        where = getattr(getattr(exc, "ctx", None), "command_path", None) or "batchor"
        return _fail(f"{exc.format_message()} (see '{where} --help')", ExitCode.USAGE)
    except CliError as exc:
        return _fail(exc.message, exc.code)
    except BatchorError as exc:
        return _fail(for_the_shell(exc.message), exit_code_for(exc))
    return int(result) if isinstance(result, int) else ExitCode.OK


# Advice in the library's messages that names Python, and what a shell user does instead.
_SHELL_ADVICE = (
    ("pass OpenAIProviderConfig(api_key=...) or set OPENAI_API_KEY", "set OPENAI_API_KEY"),
    ("(OpenAIProviderConfig(api_key=...) or OPENAI_API_KEY)", "(OPENAI_API_KEY)"),
    ("(run.export(path)); pass force=True", "(batchor results RUN --output FILE); pass --force"),
    ("call wait() again later", "run batchor wait again later"),
)


def for_the_shell(message: str) -> str:
    """A library message with its Python advice put as what to type in a shell."""
    for python, shell in _SHELL_ADVICE:
        message = message.replace(python, shell)
    return message


def main() -> None:
    """Console-script entry point (``batchor``)."""
    sys.exit(run())


def _fail(message: str, code: ExitCode) -> int:
    first = message.strip().splitlines()[0] if message.strip() else "failed"
    print(f"batchor: error: {first}", file=sys.stderr, flush=True)
    return code
