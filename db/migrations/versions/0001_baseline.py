"""Baseline: the tables as they stood when Broadcaster began keeping a schema revision.

On an empty database this creates every table. On a database made by a Broadcaster from before
migrations (no alembic_version table), it creates the tables that database lacks and adds the
columns those versions added one release at a time, each nullable or with a default, so every row
it holds stays valid and is kept.

The definitions are frozen here, not read from db/models.py: later revisions change the models,
and this revision must still build what it built the day it was written.

Revision ID: 0001
Revises:
"""

from collections.abc import Callable

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _channels() -> list:
    return [
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("name", sa.String(64), nullable=False, unique=True),
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("created_at_ms", sa.BigInteger, nullable=False),
        sa.Column("style", sa.String(16), nullable=False, server_default="campaign"),
        sa.Column("listen_key_hash", sa.String(64)),
    ]


def _requests() -> list:
    return [
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("channel_id", sa.Integer, sa.ForeignKey("channels.id", ondelete="CASCADE"), nullable=False),
        sa.Column("line_seq", sa.BigInteger, nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("sentences_json", sa.Text, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("created_at_ms", sa.BigInteger, nullable=False),
        sa.Column("generation_started_ms", sa.BigInteger),
        sa.Column("finished_at_ms", sa.BigInteger),
        sa.Column("error", sa.Text),
        sa.Column("kind", sa.String(16), nullable=False, server_default="speech"),
        sa.Column("title", sa.Text),
        sa.Column("artist", sa.Text),
        sa.Column("duration_ms", sa.BigInteger),
        sa.Column("auto", sa.Boolean, nullable=False, server_default="0"),
        sa.Index("ix_requests_channel_state", "channel_id", "state"),
        sa.Index("ix_requests_finished", "state", "finished_at_ms"),
    ]


def _chunks() -> list:
    return [
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column(
            "request_id",
            sa.String(32),
            sa.ForeignKey("playback_requests.id", ondelete="CASCADE"),
            nullable=False,
            index=True,
        ),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("sample_rate", sa.Integer, nullable=False),
        sa.Column("samples", sa.BigInteger, nullable=False),
        sa.Column("channels", sa.Integer, nullable=False, server_default="1"),
        sa.Column("duration_ms", sa.Integer, nullable=False),
        sa.Column("ready_at_ms", sa.BigInteger, nullable=False),
        sa.Column("starts_at_ms", sa.BigInteger),
        sa.UniqueConstraint("request_id", "seq"),
    ]


def _connections() -> list:
    return [
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("channel_id", sa.Integer, sa.ForeignKey("channels.id", ondelete="CASCADE"), nullable=False),
        sa.Column("remote", sa.String(64), nullable=False),
        sa.Column("user_agent", sa.String(256), nullable=False),
        sa.Column("connected_at_ms", sa.BigInteger, nullable=False),
        sa.Column("disconnected_at_ms", sa.BigInteger, index=True),
    ]


def _deliveries() -> list:
    return [
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column(
            "chunk_id", sa.String(32), sa.ForeignKey("audio_chunks.id", ondelete="CASCADE"), nullable=False, index=True
        ),
        sa.Column("connection_id", sa.String(32), sa.ForeignKey("listener_connections.id", ondelete="CASCADE")),
        sa.Column("via", sa.String(8), nullable=False),
        sa.Column("acked_at_ms", sa.BigInteger, nullable=False),
        sa.UniqueConstraint("chunk_id", "connection_id"),
    ]


def _leases() -> list:
    return [
        sa.Column("name", sa.String(100), primary_key=True),
        sa.Column("holder", sa.String(100), nullable=False),
        sa.Column("holder_url", sa.String(300), nullable=False, server_default=""),
        sa.Column("epoch", sa.BigInteger, nullable=False),
        sa.Column("expires_at_ms", sa.BigInteger, nullable=False),
    ]


# In the order they can be created (each refers only to those before it).
TABLES: dict[str, Callable[[], list]] = {
    "channels": _channels,
    "playback_requests": _requests,
    "audio_chunks": _chunks,
    "listener_connections": _connections,
    "chunk_deliveries": _deliveries,
    "leases": _leases,
}


def upgrade() -> None:
    bind = op.get_bind()
    present = set(sa.inspect(bind).get_table_names())
    metadata = sa.MetaData()
    for name, parts in TABLES.items():
        if name not in present:
            sa.Table(name, metadata, *parts()).create(bind)  # with its indexes
        else:
            _add_missing_columns(bind, name, parts())


def _add_missing_columns(bind: sa.Connection, table: str, parts: list) -> None:
    """A table an older Broadcaster made: the columns added since then (all nullable or defaulted)."""
    columns = {c["name"] for c in sa.inspect(bind).get_columns(table)}
    for part in parts:
        if isinstance(part, sa.Column) and part.name not in columns:
            op.add_column(table, part)


def downgrade() -> None:
    for name in reversed(TABLES):
        op.drop_table(name)
