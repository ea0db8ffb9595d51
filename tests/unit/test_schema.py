"""The tables' revision, kept by Alembic: a new database is made at the newest revision, a database from before
migrations keeps its rows and reaches the baseline, and the migrations build what the models describe. On SQLite
and on a real PostgreSQL server."""

import asyncio

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from broadcaster.core.model import Request
from db import schema
from db.models import Base
from db.store import Store, make_engine


async def revision(store: Store) -> str | None:
    async with store.engine.connect() as conn:
        return await conn.run_sync(lambda c: MigrationContext.configure(c).get_current_revision())


async def differences(engine) -> list:
    """What the database's tables lack or have beyond db/models.py, as Alembic's autogenerate sees it."""
    async with engine.connect() as conn:
        return await conn.run_sync(lambda c: compare_metadata(MigrationContext.configure(c), Base.metadata))


def first_release_tables() -> sa.MetaData:
    """The tables as the first release made them: no channel style or listen key, no tracks, mono chunks, no leases."""
    m = sa.MetaData()
    big, text, key = sa.BigInteger, sa.Text, sa.String(32)
    sa.Table(
        "channels",
        m,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(64), unique=True, nullable=False),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("created_at_ms", big, nullable=False),
    )
    sa.Table(
        "playback_requests",
        m,
        sa.Column("id", key, primary_key=True),
        sa.Column("channel_id", sa.ForeignKey("channels.id", ondelete="CASCADE"), nullable=False),
        sa.Column("line_seq", big, nullable=False),
        *(sa.Column(name, text, nullable=False) for name in ("text", "sentences_json")),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created_at_ms", big, nullable=False),
        *(sa.Column(name, big) for name in ("generation_started_ms", "finished_at_ms")),
        sa.Column("error", text),
    )
    sa.Table(
        "audio_chunks",
        m,
        sa.Column("id", key, primary_key=True),
        sa.Column("request_id", sa.ForeignKey("playback_requests.id", ondelete="CASCADE"), nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("text", text, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("sample_rate", sa.Integer, nullable=False),
        sa.Column("samples", big, nullable=False),
        sa.Column("duration_ms", sa.Integer, nullable=False),
        sa.Column("ready_at_ms", big, nullable=False),
        sa.Column("starts_at_ms", big),
    )
    sa.Table(
        "listener_connections",
        m,
        sa.Column("id", key, primary_key=True),
        sa.Column("channel_id", sa.ForeignKey("channels.id", ondelete="CASCADE"), nullable=False),
        sa.Column("remote", sa.String(64), nullable=False),
        sa.Column("user_agent", sa.String(256), nullable=False),
        sa.Column("connected_at_ms", big, nullable=False),
        sa.Column("disconnected_at_ms", big),
    )
    sa.Table(
        "chunk_deliveries",
        m,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("chunk_id", sa.ForeignKey("audio_chunks.id", ondelete="CASCADE"), nullable=False),
        sa.Column("connection_id", sa.ForeignKey("listener_connections.id", ondelete="CASCADE")),
        sa.Column("via", sa.String(8), nullable=False),
        sa.Column("acked_at_ms", big, nullable=False),
    )
    return m


async def first_release_database(url: str) -> None:
    """A database as the first release left it: one channel, one request on its line, its one chunk."""
    tables = first_release_tables().tables
    engine = make_engine(url)
    async with engine.begin() as conn:
        await conn.run_sync(first_release_tables().create_all)
        await conn.execute(
            tables["channels"].insert(), {"id": 1, "name": "table", "token_hash": "d", "created_at_ms": 5}
        )
        await conn.execute(
            tables["playback_requests"].insert(),
            dict(id="r1", channel_id=1, line_seq=1, text="Hi.", sentences_json='["Hi."]', state="generating")
            | dict(created_at_ms=10),
        )
        await conn.execute(
            tables["audio_chunks"].insert(),
            dict(id="c1", request_id="r1", seq=0, text="Hi.", state="ready", sample_rate=22050, samples=11025)
            | dict(duration_ms=500, ready_at_ms=20, starts_at_ms=30),
        )
    await engine.dispose()


async def test_a_new_database_gets_the_tables_at_the_newest_revision(database_url):
    """An empty database gets every table and is stamped with the newest revision."""
    store = Store(database_url)
    await store.create_schema()
    assert await revision(store) == schema._head(schema.MIGRATIONS)
    assert await differences(store.engine) == []
    await store.create_schema()  # a second open finds it ready
    await store.close()


async def test_the_migrations_build_the_tables_the_models_describe(database_url):
    """Running every migration on an empty database (what `db upgrade` does) builds exactly db/models.py's tables."""
    engine = make_engine(database_url)
    assert await schema.upgrade(engine) == (None, schema._head(schema.MIGRATIONS))
    assert await differences(engine) == [], "a model changed without a revision in db/migrations/versions"
    await engine.dispose()


async def test_a_database_from_before_migrations_keeps_its_rows_and_gains_what_it_lacked(database_url):
    """Tables an older Broadcaster made, with no alembic_version, are adopted at the baseline; a start refuses them
    while a newer revision exists (changing nothing), and `db upgrade` brings them through the baseline to the
    newest: the columns and the tables added since appear, the rows stay, and the line loads with the defaults of
    the new columns."""
    await first_release_database(database_url)
    store = Store(database_url)
    with pytest.raises(schema.SchemaMismatch, match=f"it is at {schema.BASELINE}, an older one"):
        await store.create_schema()
    assert await revision(store) is None
    assert await schema.upgrade(store.engine) == (None, schema._head(schema.MIGRATIONS))
    await store.create_schema()
    channel = await store.channel("table")
    assert (channel.id, channel.style, channel.listen_key_hash) == (1, "campaign", None)
    line, _ = await store.load_line(1, "table")
    assert [(r.request_id, r.kind, r.auto, [(c.chunk_id, c.channels) for c in r.chunks]) for r in line] == [
        ("r1", "speech", False, [("c1", 1)])
    ]
    track = Request("r2", "table", "", [], 40, kind="track", title="Song", duration_ms=1000)
    await store.insert_request(track, 1)
    assert [(r.request_id, r.title) for r in (await store.load_line(1, "table"))[0]] == [("r1", None), ("r2", "Song")]
    async with store.engine.connect() as conn:
        assert "leases" in await conn.run_sync(lambda c: sa.inspect(c).get_table_names())
    await store.close()


async def test_two_processes_opening_a_new_database_at_once_both_succeed(database_url):
    """Two first opens racing on an empty database (the CLI and the server) both end with one stamped schema."""
    first, second = Store(database_url), Store(database_url)
    await asyncio.gather(first.create_schema(), second.create_schema())
    assert await revision(first) == schema._head(schema.MIGRATIONS)
    await first.close()
    await second.close()


def test_the_shipped_head_named_for_the_fast_check_is_the_newest_migration():
    """A server checks a database that is already current with one query, against SHIPPED_HEAD; it must be
    the newest revision in db/migrations, or a server would accept a database one revision behind."""
    from alembic.script import ScriptDirectory

    from db import schema

    assert schema.SHIPPED_HEAD == ScriptDirectory(schema.SHIPPED).get_current_head()
