"""webhook accounts: the account a delivery was sent through, provider ids already seen

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03 12:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # batch_alter_table: SQLite cannot drop a column in place (the downgrade does).
    with op.batch_alter_table("deliveries") as batch:
        batch.add_column(sa.Column("provider_account", sa.String(length=64), nullable=True))
    op.create_table(
        "webhook_inbound_seen",
        sa.Column("provider", sa.String(length=32), nullable=False),
        sa.Column("account", sa.String(length=64), nullable=False),
        sa.Column("provider_id", sa.String(length=255), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("provider", "account", "provider_id"),
    )
    op.create_index("ix_webhook_inbound_seen_created_at", "webhook_inbound_seen", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_webhook_inbound_seen_created_at", table_name="webhook_inbound_seen")
    op.drop_table("webhook_inbound_seen")
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_column("provider_account")
