"""The audit trail in ``arp_events``: who acted (the actor, and the team it works for), queryable by team
and time.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("arp_events", sa.Column("team", sa.String(63)))
    op.add_column("arp_events", sa.Column("actor", sa.String(1024)))
    op.create_index("ix_arp_events_team", "arp_events", ["team", "occurred_at"])


def downgrade() -> None:
    op.drop_index("ix_arp_events_team", table_name="arp_events")
    op.drop_column("arp_events", "actor")
    op.drop_column("arp_events", "team")
