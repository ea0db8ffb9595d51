"""Which revision of the tables a database holds, and bringing it to the one this code needs.

The revisions are Alembic migrations in db/migrations/ (shipped inside this package; no alembic.ini
is read). Every process that opens the database calls `prepare`:

- an empty database gets every table at once from the models and is stamped with the newest
  revision (quick: the tests make hundreds of databases);
- a database an older Broadcaster made before it kept a revision (tables, but no alembic_version)
  is brought to the baseline by the baseline revision itself, which adds what it lacks and keeps
  its rows;
- a database at the newest revision is used as it is;
- a database at an older revision is refused: migrating is `broadcaster db upgrade` (`upgrade`),
  run on purpose, with the servers stopped and a backup made, never a side effect of a start;
- a database at a revision this code does not know was migrated by a newer Broadcaster, and is
  refused.
"""

import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from sqlalchemy import Connection, inspect, text
from sqlalchemy.ext.asyncio import AsyncEngine

from broadcaster.errors import BroadcasterError

from .models import Base

MIGRATIONS = str(Path(__file__).parent / "migrations")  # the script location
SHIPPED = MIGRATIONS
# The newest revision shipped in db/migrations/ (tests/unit/test_schema.py keeps it so). A server
# whose database is already there checks that with one query and never imports Alembic, which
# would stay in its memory for good (11 MB).
SHIPPED_HEAD = "0007"
BASELINE = "0001"  # the first revision: what a database from before migrations is brought to
SCHEMA_LOCK = 0x62635F736368656D  # PostgreSQL advisory lock key of schema changes ("bc_schem")

T = TypeVar("T")

# Alembic tells at INFO of every database opened (its plugins, the dialect); `db upgrade` reports what it did itself.
logging.getLogger("alembic").setLevel(logging.WARNING)


class SchemaMismatch(BroadcasterError):
    """The database holds another revision of the tables than this code needs."""


async def prepare(engine: AsyncEngine, location: str | None = None) -> None:
    """Create a new database's tables, adopt one from before migrations, or refuse any other revision than the newest."""
    location = location or MIGRATIONS
    if location == SHIPPED and await _current(engine) == SHIPPED_HEAD:
        return
    await _in_one_transaction(engine, _prepare, location)


async def _current(engine: AsyncEngine) -> str | None:
    """The database's revision as Alembic records it, or None (no table yet: a new or a pre-migration database)."""
    async with engine.connect() as conn:
        if not await conn.run_sync(lambda sync: inspect(sync).has_table("alembic_version")):
            return None
        return (await conn.execute(text("SELECT version_num FROM alembic_version"))).scalar()


async def upgrade(engine: AsyncEngine, location: str | None = None) -> tuple[str | None, str]:
    """Run every migration the database lacks; returns its revision before (None: none) and after."""
    return await _in_one_transaction(engine, _upgrade, location or MIGRATIONS)


async def _in_one_transaction(engine: AsyncEngine, work: Callable[[Connection, str], T], location: str) -> T:
    """`work` in one transaction; on SQLite with its foreign keys off meanwhile. SQLite changes most of a table
    by copying it and dropping the old one (Alembic's batch mode), and with foreign keys on, that drop would
    cascade to every row that refers to the table. The setting only changes outside a transaction."""
    async with engine.connect() as conn:
        sqlite = conn.dialect.name == "sqlite"
        if sqlite:
            await conn.exec_driver_sql("PRAGMA foreign_keys=OFF")
            await conn.commit()
        try:
            result = await conn.run_sync(work, location)
            await conn.commit()
            return result
        finally:
            if sqlite:
                await conn.rollback()
                await conn.exec_driver_sql("PRAGMA foreign_keys=ON")  # as db/store.py connects
                await conn.commit()


def _prepare(conn: Connection, location: str) -> None:
    from alembic.runtime.migration import MigrationContext

    _hold_the_schema(conn)
    scripts, head = _scripts(location), _head(location)
    context = MigrationContext.configure(conn)
    current = context.get_current_revision()
    if current is None and not _has_tables(conn):
        Base.metadata.create_all(conn)
        context.stamp(scripts, head)
        return
    if current is None:  # made before migrations
        _run_migrations(conn, location, BASELINE)
        current = BASELINE
    _require_known(location, current)
    if current != head:
        raise SchemaMismatch(
            f"expected the database at revision {head}, but it is at {current}, an older one: stop every server "
            "using it, back it up, and run `broadcaster db upgrade`"
        )


def _upgrade(conn: Connection, location: str) -> tuple[str | None, str]:
    from alembic.runtime.migration import MigrationContext

    _hold_the_schema(conn)
    before = MigrationContext.configure(conn).get_current_revision()
    if before is not None:
        _require_known(location, before)
    _run_migrations(conn, location, "head")
    return before, _head(location)


def _hold_the_schema(conn: Connection) -> None:
    """One process at a time reads or changes the revision; the others wait here until it commits. Without it
    two first starts on an empty database race, and on SQLite the driver would run each CREATE on its own,
    outside the transaction, so a second process could find the tables without their revision."""
    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql("BEGIN IMMEDIATE")  # the write lock now, for the whole transaction (DDL included)
    elif conn.dialect.name == "postgresql":
        conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({SCHEMA_LOCK})")


def _run_migrations(conn: Connection, location: str, target: str) -> None:
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", location)
    config.attributes["connection"] = conn  # db/migrations/env.py runs on this connection
    command.upgrade(config, target)


def _require_known(location: str, revision: str) -> None:
    from alembic.util import CommandError

    try:
        _scripts(location).get_revision(revision)
    except CommandError:
        raise SchemaMismatch(
            f"this database was migrated by a newer Broadcaster (revision {revision}); this one knows revisions up "
            f"to {_head(location)}. Run the newer Broadcaster, or restore a backup made before it migrated"
        ) from None


def _has_tables(conn: Connection) -> bool:
    return not Base.metadata.tables.keys().isdisjoint(inspect(conn).get_table_names())


@functools.cache
def _scripts(location: str):  # noqa: ANN202  (an alembic ScriptDirectory: Alembic is imported only when needed)
    """The revisions at `location`, read once per process."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory(location)


def _head(location: str) -> str:
    return _scripts(location).get_current_head()
