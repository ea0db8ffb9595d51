"""Which server process holds each listener connection, so that in a cluster the records left open by a
process that died can be closed by another (a restart closes its own, as before).

One nullable column; records from before it stay as they are.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("listener_connections") as batch:
        batch.add_column(sa.Column("holder", sa.String(100), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("listener_connections") as batch:
        batch.drop_column("holder")
