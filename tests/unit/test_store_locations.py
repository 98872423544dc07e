"""One reading of store locations serves the runner, the Dagster resource and the CLI."""

from __future__ import annotations

from pathlib import Path

import pytest

from batchor_core import ConfigurationError, MemoryStateStore, SQLiteStorage
from batchor_core.defaults import open_storage, store_target


@pytest.mark.parametrize(
    ("location", "expected"),
    [
        ("memory", ("memory", "")),
        ("sqlite://", ("memory", "")),
        ("sqlite:///runs/x.db", ("sqlite", "runs/x.db")),
        ("sqlite:////tmp/x.db", ("sqlite", "/tmp/x.db")),
        ("runs/x.db", ("sqlite", "runs/x.db")),
        ("postgresql://u:p@h/db", ("postgres", "postgresql://u:p@h/db")),
        ("postgresql+psycopg://u:p@h/db", ("postgres", "postgresql+psycopg://u:p@h/db")),
        ("postgres://u:p@h/db", ("postgres", "postgresql://u:p@h/db")),
    ],
)
def test_store_targets(location: str, expected: tuple[str, str]) -> None:
    assert store_target(location) == expected


def test_home_is_expanded_and_bad_locations_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    assert store_target("~/x.db") == ("sqlite", str(tmp_path / "x.db"))
    store = open_storage("~/state/x.db")
    assert isinstance(store, SQLiteStorage) and (tmp_path / "state" / "x.db").exists()
    store.close()
    assert isinstance(open_storage("memory"), MemoryStateStore)
    for bad in ("", "   ", "mysql://u:p@h/db"):
        with pytest.raises(ConfigurationError):
            store_target(bad)
