"""Open narrations: while a request's text is still being written, its unfinished tail and that it is
open, so that after a restart it takes more text and speaks what it had. And the named voice a
narration asked for.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("playback_requests") as batch:
        batch.add_column(sa.Column("open_json", sa.Text(), nullable=True))
        batch.add_column(sa.Column("voice", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("playback_requests") as batch:
        batch.drop_column("voice")
        batch.drop_column("open_json")
