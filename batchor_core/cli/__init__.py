"""The ``batchor`` operator CLI: CSV/JSONL/Parquet workflows over the public Python API.

The commands live in :mod:`batchor_core.cli.app`; this package only holds the console
script's entry point, which imports them when called.
"""

from __future__ import annotations

__all__ = ["main"]


def main() -> None:
    """Run the ``batchor`` command line (the console script's entry point)."""
    from batchor_core.cli.app import main as run_main

    run_main()
