"""When a job was first seen running: its queue wait (submission to running) is ``running_at`` minus
``submitted_at``, the same figure in the Ray view, the usage export and the ``job.queue_wait`` metric.
NULL: a job never seen running (it ended between two looks), or a row from before it was recorded.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("arp_jobs", sa.Column("running_at", sa.DateTime(timezone=True)))


def downgrade() -> None:
    op.drop_column("arp_jobs", "running_at")
