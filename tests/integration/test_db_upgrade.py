"""The command line and the database's revision: `serve` refuses a database at an older revision and says to run
`broadcaster db upgrade`, which migrates it; it refuses one a newer Broadcaster migrated; a fresh database works
at once. On SQLite and on a real PostgreSQL server, each command a child process as an operator would run it."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from server_process import free_port

from broadcaster.core.model import Request
from db import schema
from db.store import Store, make_engine

HEAD = schema._head(schema.MIGRATIONS)  # this release's newest revision
NEXT = f"{int(HEAD) + 1:04d}"  # the next release's
NEXT_REVISION = '''"""Channels get a motto and longer names (a revision newer than this release's, for the tests). SQLite cannot
change a column's type in place: the batch copies the table, drops the old one and renames the copy.

Revision ID: {next}
Revises: {head}
"""

import sqlalchemy as sa
from alembic import op

revision = "{next}"
down_revision = "{head}"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("channels") as batch:
        batch.add_column(sa.Column("motto", sa.Text))
        batch.alter_column("name", type_=sa.String(80), existing_nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("channels") as batch:
        batch.alter_column("name", type_=sa.String(64), existing_nullable=False)
        batch.drop_column("motto")
'''

# The real command line, with the migrations read from the directory given first (a release with a second revision).
WITH_MIGRATIONS = (
    "import sys; import db.schema; db.schema.MIGRATIONS = sys.argv.pop(1); "
    "from web.cli import main; sys.exit(main(sys.argv[1:]))"
)


@pytest.fixture
def config(tmp_path: Path, database_url: str) -> Path:
    path = tmp_path / "config.toml"
    path.write_text(f'[server]\ndatabase_url = "{database_url}"\ndata_dir = "{tmp_path / "data"}"\n')
    return path


@pytest.fixture
def newer_release(tmp_path: Path) -> str:
    """This release's migrations plus a second revision, as the next release would ship them."""
    location = tmp_path / "migrations"
    shutil.copytree(schema.MIGRATIONS, location, ignore=shutil.ignore_patterns("__pycache__"))
    (location / "versions" / f"{NEXT}_motto.py").write_text(NEXT_REVISION.format(next=NEXT, head=HEAD))
    return str(location)


def broadcaster(*args: str, config: Path, migrations: str | None = None) -> subprocess.CompletedProcess[str]:
    """`broadcaster ARGS --config CONFIG` in a child process; with `migrations`, as a release that ships those."""
    head = [sys.executable, "-c", WITH_MIGRATIONS, migrations] if migrations else [sys.executable, "-m", "broadcaster"]
    command = [*head, *args, "--config", str(config)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60)


def serve(config: Path, migrations: str | None = None) -> subprocess.CompletedProcess[str]:
    """Expected to refuse at once; a server that started instead runs into the timeout and fails the test."""
    return broadcaster("serve", "--port", str(free_port()), config=config, migrations=migrations)


async def test_serve_refuses_an_older_database_until_db_upgrade_migrates_it(config, database_url, newer_release):
    """A database at this release's revision under the next release: serve exits with the advice to run
    `broadcaster db upgrade`; that command migrates it, keeping its channel and the request that refers to it (on
    SQLite the channels table is rebuilt, and dropping the old one must not cascade)."""
    store = Store(database_url)
    await store.create_schema()  # at this release's revision
    channel_id = (await store.create_channel("table", "digest", 0)).id
    await store.insert_request(Request("r1", "table", "Hi.", ["Hi."], 0), channel_id)
    await store.close()
    refused = serve(config, newer_release)
    assert refused.returncode == 2, refused.stderr
    assert f"at {HEAD}, an older one" in refused.stderr and "run `broadcaster db upgrade`" in refused.stderr
    upgraded = broadcaster("db", "upgrade", config=config, migrations=newer_release)
    assert upgraded.returncode == 0, upgraded.stderr
    assert upgraded.stdout.strip() == f"the database is now at revision {NEXT} (it was at {HEAD})"
    engine = make_engine(database_url)
    await schema.prepare(engine, newer_release)  # ready for the newer release
    async with engine.connect() as conn:
        kept = (await conn.exec_driver_sql("SELECT name, motto FROM channels")).all()
        requests = (await conn.exec_driver_sql("SELECT id, channel_id FROM playback_requests")).all()
    assert [tuple(row) for row in kept] == [("table", None)]
    assert [tuple(row) for row in requests] == [("r1", channel_id)]
    await engine.dispose()


async def test_serve_and_db_upgrade_refuse_a_database_a_newer_release_migrated(config, database_url, newer_release):
    """A database the next release migrated: this release's serve and db upgrade both refuse it, naming
    the revision, and so does the server's own start."""
    engine = make_engine(database_url)
    await schema.upgrade(engine, newer_release)
    await engine.dispose()
    for refused in (serve(config), broadcaster("db", "upgrade", config=config)):
        assert refused.returncode == 2, refused.stderr
        assert f"this database was migrated by a newer Broadcaster (revision {NEXT})" in refused.stderr
    store = Store(database_url)
    with pytest.raises(schema.SchemaMismatch, match="newer Broadcaster"):
        await store.create_schema()
    await store.close()


async def test_channel_create_works_on_a_fresh_database(config, database_url):
    """`channel create` on a database nobody opened before makes the tables, at the newest revision, and the channel."""
    created = broadcaster("channel", "create", "table", "--json", config=config)
    assert created.returncode == 0, created.stderr
    assert json.loads(created.stdout)["channel"] == "table"
    store = Store(database_url)
    await store.create_schema()
    assert [row.name for row in await store.channels()] == ["table"]
    await store.close()
