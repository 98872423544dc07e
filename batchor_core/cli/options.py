"""Option types shared by several commands (typer ``Annotated`` aliases)."""

from __future__ import annotations

from typing import Annotated

import typer

from batchor_core.cli.config import ARTIFACTS_ENV, STORE_ENV, Settings

__all__ = [
    "ArtifactsOpt",
    "BaseUrlOpt",
    "JsonOpt",
    "ReasonOpt",
    "RunIdArg",
    "StoreOpt",
    "settings",
]

StoreOpt = Annotated[
    str | None,
    typer.Option(
        "--store",
        envvar=STORE_ENV,
        help="SQLite file, sqlite:///PATH or postgresql://... "
        "[default: ./.batchor/batchor.sqlite3]",
        show_default=False,
    ),
]
ArtifactsOpt = Annotated[
    str | None,
    typer.Option(
        "--artifacts",
        envvar=ARTIFACTS_ENV,
        help="Directory or URL (s3://bucket/prefix, gs://..., az://...) for request files "
        "and raw outputs [default: beside the SQLite file]",
        show_default=False,
    ),
]
BaseUrlOpt = Annotated[
    str | None,
    typer.Option(
        "--base-url",
        envvar="OPENAI_BASE_URL",
        help="OpenAI API root, e.g. the emulator's URL [default: the SDK's]",
        show_default=False,
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON (one object per line).")]
RunIdArg = Annotated[str, typer.Argument(help="The run's id.", show_default=False)]
ReasonOpt = Annotated[
    str | None, typer.Option("--reason", help="Why (stored with the run).", show_default=False)
]


def settings(store: str | None, artifacts: str | None, base_url: str | None = None) -> Settings:
    """The connection flags as :class:`Settings`."""
    return Settings(store=store, artifacts=artifacts, base_url=base_url)
