"""Who holds a shared cluster: its leases (holder task, since when) on its record, so that the Ray view
shows them after the fact and without asking the backend.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("arp_clusters", sa.Column("leases", sa.JSON))


def downgrade() -> None:
    op.drop_column("arp_clusters", "leases")
