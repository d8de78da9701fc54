"""channels, receipts, pacing, templates, fallback

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 16:35:58.775319
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "instance_secrets",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("value", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_instance_secrets")),
    )
    op.create_table(
        "pacing_pairs",
        sa.Column("account", sa.String(length=200), nullable=False),
        sa.Column("address", sa.String(length=320), nullable=False),
        sa.Column("free_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("account", "address", name=op.f("pk_pacing_pairs")),
    )
    op.create_index(op.f("ix_pacing_pairs_free_at"), "pacing_pairs", ["free_at"], unique=False)
    op.create_table(
        "pacing_slots",
        sa.Column("account", sa.String(length=200), nullable=False),
        sa.Column("next_slot_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("account", name=op.f("pk_pacing_slots")),
    )
    op.create_table(
        "channel_configs",
        sa.Column("org_id", sa.Uuid(), nullable=False),
        sa.Column("channel", sa.String(length=16), nullable=False),
        sa.Column("provider", sa.String(length=32), nullable=False),
        sa.Column(
            "settings", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False
        ),
        sa.Column("secrets", sa.Text(), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["org_id"],
            ["organizations.id"],
            name=op.f("fk_channel_configs_org_id_organizations"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("org_id", "channel", name=op.f("pk_channel_configs")),
    )
    op.add_column("deliveries", sa.Column("fallback_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index(
        "ix_deliveries_fallback",
        "deliveries",
        ["fallback_at"],
        unique=False,
        postgresql_where=sa.text("fallback_at IS NOT NULL"),
        sqlite_where=sa.text("fallback_at IS NOT NULL"),
    )
    # Existing messages have no per-channel content; the server default fills them in.
    op.add_column(
        "messages",
        sa.Column(
            "overrides",
            sa.JSON().with_variant(postgresql.JSONB(), "postgresql"),
            nullable=False,
            server_default=sa.text("'{}'"),
        ),
    )
    op.add_column("messages", sa.Column("fallback_after_seconds", sa.Integer(), nullable=True))
    op.create_index("ix_recipients_whatsapp", "recipients", ["whatsapp"], unique=False)
    op.create_index("ix_recipients_phone", "recipients", ["phone"], unique=False)
    op.add_column(
        "recipients", sa.Column("whatsapp_inbound_at", sa.DateTime(timezone=True), nullable=True)
    )


def downgrade() -> None:
    op.drop_column("recipients", "whatsapp_inbound_at")
    op.drop_index("ix_recipients_phone", table_name="recipients")
    op.drop_index("ix_recipients_whatsapp", table_name="recipients")
    op.drop_column("messages", "fallback_after_seconds")
    op.drop_column("messages", "overrides")
    op.drop_index(
        "ix_deliveries_fallback",
        table_name="deliveries",
        postgresql_where=sa.text("fallback_at IS NOT NULL"),
        sqlite_where=sa.text("fallback_at IS NOT NULL"),
    )
    op.drop_column("deliveries", "fallback_at")
    op.drop_table("channel_configs")
    op.drop_table("pacing_slots")
    op.drop_index(op.f("ix_pacing_pairs_free_at"), table_name="pacing_pairs")
    op.drop_table("pacing_pairs")
    op.drop_table("instance_secrets")
