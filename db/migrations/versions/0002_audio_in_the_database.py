"""Audio in the database: chunk bytes, and tracks as shared segments, for servers that share one database.

Three new tables, empty until a server stores its audio in the database (db/audio_database.py); a
server that keeps audio in files never writes them. Nothing else changes, so every row is kept.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "chunk_audio",
        sa.Column("chunk_id", sa.String(32), primary_key=True),
        sa.Column("fmt", sa.String(4), primary_key=True),
        sa.Column("request_id", sa.String(32), nullable=False),
        sa.Column("data", sa.LargeBinary, nullable=False),
        sa.Column("written_at_ms", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_chunk_audio_request_id", "chunk_audio", ["request_id"])
    op.create_table(
        "track_audio",
        sa.Column("request_id", sa.String(32), primary_key=True),
        sa.Column("source_id", sa.String(32), nullable=False),
        sa.Column("written_at_ms", sa.BigInteger, nullable=False),
    )
    op.create_index("ix_track_audio_source_id", "track_audio", ["source_id"])
    op.create_table(
        "track_segments",
        sa.Column("source_id", sa.String(32), primary_key=True),
        sa.Column("seq", sa.Integer, primary_key=True),
        sa.Column("data", sa.LargeBinary, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("track_segments")
    op.drop_index("ix_track_audio_source_id", "track_audio")
    op.drop_table("track_audio")
    op.drop_index("ix_chunk_audio_request_id", "chunk_audio")
    op.drop_table("chunk_audio")
