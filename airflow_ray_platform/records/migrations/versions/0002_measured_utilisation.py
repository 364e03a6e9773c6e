"""Measured CPU / GPU utilisation of a job's cluster nodes (mean of Prometheus samples while it ran).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("arp_jobs", sa.Column("measured_cpu_utilisation", sa.Float))
    op.add_column("arp_jobs", sa.Column("measured_gpu_utilisation", sa.Float))


def downgrade() -> None:
    op.drop_column("arp_jobs", "measured_gpu_utilisation")
    op.drop_column("arp_jobs", "measured_cpu_utilisation")
