"""Whether a cluster's processes ran in the local backend's sandbox: kept with the cluster, so that the
Ray view and an audit show which clusters ran unsandboxed after they are gone. NULL: a backend whose
clusters are isolated otherwise (KubeRay's pods), or a row from before it was recorded.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("arp_clusters", sa.Column("sandboxed", sa.Boolean))


def downgrade() -> None:
    op.drop_column("arp_clusters", "sandboxed")
