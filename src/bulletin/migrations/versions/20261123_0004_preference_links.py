"""preference links: organization setting, sandbox record of the link

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 23:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # batch_alter_table: SQLite cannot alter a table in place beyond adding a column, and
    # the downgrade drops one.
    with op.batch_alter_table("organizations") as batch:
        batch.add_column(
            sa.Column(
                "preference_links_in_texts",
                sa.Boolean(),
                nullable=False,
                server_default=sa.false(),
            )
        )
    with op.batch_alter_table("sandbox_messages") as batch:
        batch.add_column(sa.Column("preference_url", sa.String(length=500), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sandbox_messages") as batch:
        batch.drop_column("preference_url")
    with op.batch_alter_table("organizations") as batch:
        batch.drop_column("preference_links_in_texts")
