"""Schema versions of the SQL store: check on open, upgrade with Alembic when behind.

The applied revision lives in ``batchor_alembic_version`` (its own name, so a Postgres
database shared with an application's own Alembic history does not clash). Opening a
store that is already at the head costs two small queries and never imports Alembic;
only a store that is behind (new, created by an older batchor, or the release before
migrations) runs the scripts in :mod:`batchor_core.storage.migrations`. A store at a
revision this batchor does not know was written by a newer batchor and is refused.

Any number of processes may open one store at once: the upgrade runs in one transaction
that first takes the schema lock (``pg_advisory_xact_lock`` on Postgres; SQLite's
``BEGIN IMMEDIATE`` write lock), then looks at the revision again, so the second process
finds the work done. An upgrade can take minutes on a large store: a process opening it
meanwhile waits (on SQLite past the 30 s busy timeout, up to an hour). Postgres and SQLite
both roll DDL back with the transaction, so a crash mid-upgrade leaves the store at the
old revision.
"""

from __future__ import annotations

import functools
import logging
import re
import time
from pathlib import Path

from sqlalchemy import (
    Column,
    Connection,
    Engine,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    insert,
    inspect,
    select,
    text,
)
from sqlalchemy.exc import OperationalError
from sqlalchemy.sql import column, table

from batchor_core.errors import ConfigurationError
from batchor_core.storage import schema
from batchor_core.storage.dialects import ReadOnlyTransaction

__all__ = ["MIGRATIONS", "VERSION_TABLE", "ensure_current", "known_revisions"]

MIGRATIONS = Path(__file__).with_name("migrations")
VERSION_TABLE = "batchor_alembic_version"
# pg_advisory_xact_lock key for schema changes: the bytes of "batchor" as an integer.
_SCHEMA_LOCK = int.from_bytes(b"batchor", "big")
_REVISION_FILE = re.compile(r"rev_(\d{4})_\w+\.py")
_version = table(VERSION_TABLE, column("version_num"))
# The same shape Alembic gives its version table, for stamping a new store.
_version_table = Table(
    VERSION_TABLE,
    MetaData(),
    Column("version_num", String(32), nullable=False),
    PrimaryKeyConstraint("version_num", name=f"{VERSION_TABLE}_pkc"),
)
_meta = table("batchor_meta", column("key"), column("value"))
log = logging.getLogger("batchor.storage")
# How long opening a SQLite store behind the head waits for the write lock, held by
# another process upgrading it (a large store's upgrade takes minutes; see rev 0004).
_UPGRADE_WAIT_SECONDS = 3600.0


@functools.lru_cache(maxsize=8)
def known_revisions(directory: Path = MIGRATIONS) -> tuple[str, ...]:
    """Revision ids in ``directory``/versions, oldest first (from file names; no Alembic)."""
    found = sorted(
        m.group(1)
        for p in (directory / "versions").iterdir()
        if (m := _REVISION_FILE.fullmatch(p.name))
    )
    if not found:
        raise ConfigurationError(f"no schema revisions in {directory / 'versions'}")
    return tuple(found)


def ensure_current(
    engine: Engine, *, where: str, directory: Path = MIGRATIONS, create_fresh: bool = True
) -> str:
    """Bring the store behind ``engine`` to the head revision; return it.

    An empty database gets the schema of :mod:`batchor_core.storage.schema` directly,
    stamped at the head (Alembic's advice for new databases; a test checks that the
    scripts build the same schema). ``create_fresh=False`` runs the scripts instead.

    Raises:
        ConfigurationError: The store was written by a newer batchor, or is not a store
            batchor knows how to upgrade.
    """
    revisions = known_revisions(directory)
    head = revisions[-1]
    # Read-only first: opening a current store (every CLI command does) waits for no
    # writer; only an upgrade takes the write lock below.
    with ReadOnlyTransaction(engine) as conn:
        current = _current(conn)
    if current == head:
        return head
    _refuse_unknown(current, revisions, where)
    deadline = time.monotonic() + _UPGRADE_WAIT_SECONDS
    while True:
        try:
            return _upgrade_locked(engine, where, directory, revisions, create_fresh=create_fresh)
        except OperationalError as exc:
            # SQLite's BEGIN IMMEDIATE gave up after the busy timeout (30 s): another
            # process holds the write lock, upgrading the store most likely. Wait on
            # for it, as a Postgres upgrade waits on the advisory lock.
            if not _sqlite_locked(exc) or time.monotonic() > deadline:
                raise
            log.warning("the batchor store at %s is locked; waiting to upgrade it", where)


def _sqlite_locked(exc: OperationalError) -> bool:
    return "database is locked" in str(exc.orig)


def _upgrade_locked(
    engine: Engine,
    where: str,
    directory: Path,
    revisions: tuple[str, ...],
    *,
    create_fresh: bool,
) -> str:
    """Under the schema lock: the revision looked at again, then upgraded to the head."""
    head = revisions[-1]
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(select(text("pg_advisory_xact_lock(:key)")), {"key": _SCHEMA_LOCK})
        current = _current(conn)  # another process may have upgraded while we waited
        if current == head:
            return head
        _refuse_unknown(current, revisions, where)
        if current is None and create_fresh and not _has_tables(conn):
            schema.metadata.create_all(conn)
            conn.execute(
                insert(schema.meta).values(key="schema_version", value=str(schema.SCHEMA_VERSION))
            )
            _version_table.create(conn)
            conn.execute(insert(_version_table).values(version_num=head))
            return head
        if current is None:
            _check_unversioned(conn, where)
        _upgrade(conn, directory)
    return head


def _has_tables(conn: Connection) -> bool:
    names = set(inspect(conn).get_table_names())
    return any(t.name in names for t in schema.metadata.sorted_tables)


def _current(conn: Connection) -> str | None:
    if not inspect(conn).has_table(VERSION_TABLE):
        return None
    rows = list(conn.execute(select(_version.c.version_num)).scalars())
    return str(rows[0]) if len(rows) == 1 else (",".join(sorted(rows)) or None)


def _refuse_unknown(current: str | None, revisions: tuple[str, ...], where: str) -> None:
    if current is not None and current not in revisions:
        raise ConfigurationError(
            f"the store at {where} has schema revision {current}, newer than this batchor "
            f"knows (up to {revisions[-1]}); it was written by a newer batchor. Upgrade "
            "batchor (every process using this store needs the newer version)."
        )


def _check_unversioned(conn: Connection, where: str) -> None:
    """A store without a revision is new, or from the release before migrations."""
    if not inspect(conn).has_table("batchor_meta"):
        return
    version = conn.execute(select(_meta.c.value).where(_meta.c.key == "schema_version")).scalar()
    if version is not None and str(version) != "1":
        raise ConfigurationError(
            f"the store at {where} has schema version {version} but no migration history; "
            "this batchor can upgrade only stores of schema version 1. Use the batchor "
            "version that created it."
        )


def _upgrade(conn: Connection, directory: Path) -> None:
    # Imported here: only an upgrade pays for Alembic's import.
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(directory))
    config.attributes["connection"] = conn
    command.upgrade(config, "head")
