"""Initial lifecycle tables: clusters, jobs, events.

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "arp_clusters",
        sa.Column("cluster_uid", sa.String(160), primary_key=True),
        sa.Column("backend", sa.String(32), nullable=False),
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("owner", sa.String(63)),
        sa.Column("team", sa.String(63)),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("ephemeral", sa.Boolean, nullable=False),
        sa.Column("dashboard_url", sa.String(255)),
        sa.Column("labels", sa.JSON),
        sa.Column("resources", sa.JSON),
        sa.Column("requested_at", TIMESTAMP),
        sa.Column("ready_at", TIMESTAMP),
        sa.Column("last_active_at", TIMESTAMP),
        sa.Column("deleted_at", TIMESTAMP),
        sa.Column("deleted_reason", sa.Text),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
    )
    op.create_index("ix_arp_clusters_backend_name", "arp_clusters", ["backend", "name"])
    op.create_table(
        "arp_jobs",
        sa.Column("cluster_uid", sa.String(160), primary_key=True),
        sa.Column("submission_id", sa.String(128), primary_key=True),
        sa.Column("owner", sa.String(63)),
        sa.Column("team", sa.String(63)),
        sa.Column("dag_id", sa.String(250)),
        sa.Column("task_id", sa.String(250)),
        sa.Column("run_id", sa.String(250)),
        sa.Column("map_index", sa.Integer),
        sa.Column("try_number", sa.Integer),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("message", sa.Text),
        sa.Column("entrypoint", sa.Text),
        sa.Column("requested_cpu", sa.Float),
        sa.Column("requested_gpu", sa.Float),
        sa.Column("requested_memory_bytes", sa.BigInteger),
        sa.Column("submitted_at", TIMESTAMP),
        sa.Column("started_at", TIMESTAMP),
        sa.Column("ended_at", TIMESTAMP),
        sa.Column("log_uri", sa.String(1024)),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
    )
    op.create_index("ix_arp_jobs_ended_at", "arp_jobs", ["ended_at"])
    op.create_table(
        "arp_events",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("event_key", sa.String(64), nullable=False, unique=True),
        sa.Column("cluster_uid", sa.String(160), nullable=False),
        sa.Column("submission_id", sa.String(128)),
        sa.Column("kind", sa.String(40), nullable=False),
        sa.Column("reason", sa.Text),
        sa.Column("detail", sa.JSON),
        sa.Column("occurred_at", TIMESTAMP, nullable=False),
    )
    op.create_index("ix_arp_events_cluster", "arp_events", ["cluster_uid", "occurred_at"])


def downgrade() -> None:
    op.drop_table("arp_events")
    op.drop_table("arp_jobs")
    op.drop_table("arp_clusters")
