"""Whether a narration is talk-over (on the air over the track playing, not after it), so that after a
restart it goes on over the track and not into the line.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("playback_requests") as batch:
        batch.add_column(sa.Column("talk_over", sa.Boolean(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("playback_requests") as batch:
        batch.drop_column("talk_over")
