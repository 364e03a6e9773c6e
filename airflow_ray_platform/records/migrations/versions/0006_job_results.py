"""What a job handed back to its task (``spec.results``): kept with the job, so that a retry that
reattaches, a resumed task and the Ray view have it after the cluster is gone. JSON: ``{"value": …}``,
``{"refused": why}``, or NULL when the job handed nothing back.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("arp_jobs", sa.Column("result", sa.JSON))


def downgrade() -> None:
    op.drop_column("arp_jobs", "result")
