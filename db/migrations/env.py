"""Alembic's entry point for Broadcaster's migrations.

Broadcaster runs its migrations itself (db/schema.py) on a connection it has already opened, handed
over as `config.attributes["connection"]`. From the `alembic` command line (a developer writing a
revision with --autogenerate, see docs/architecture.md) it opens its own engine on the URL given as
`-x url=...` or in $BROADCASTER_DATABASE_URL.
"""

import asyncio
import os

from alembic import context
from sqlalchemy import Connection

from db.models import Base
from db.store import make_engine


def run(connection: Connection) -> None:
    # batch mode: SQLite alters a table by copying it, and autogenerate should write revisions that way
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


async def run_on_own_engine(url: str) -> None:
    engine = make_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(run)
    finally:
        await engine.dispose()


def main() -> None:
    if context.is_offline_mode():
        raise SystemExit("expected a database to migrate: Broadcaster's migrations do not write SQL scripts (--sql)")
    connection = context.config.attributes.get("connection")
    if connection is not None:
        run(connection)
        return
    url = context.get_x_argument(as_dictionary=True).get("url") or os.environ.get("BROADCASTER_DATABASE_URL")
    if not url:
        raise SystemExit("expected the database as -x url=... or in $BROADCASTER_DATABASE_URL")
    asyncio.run(run_on_own_engine(url))


main()
