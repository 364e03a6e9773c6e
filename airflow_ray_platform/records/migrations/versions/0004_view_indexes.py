"""Indexes for reading the records back (the Ray view, the CLI): jobs by id alone, by team and time, by
DAG and state, newest first; clusters by team and time. A list or a summary over 100,000 jobs then
reads an index range instead of the table.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

INDEXES = {
    "ix_arp_jobs_submission_id": ("arp_jobs", ["submission_id"]),
    "ix_arp_jobs_submitted_at": ("arp_jobs", ["submitted_at"]),
    "ix_arp_jobs_team_submitted_at": ("arp_jobs", ["team", "submitted_at"]),
    "ix_arp_jobs_dag_submitted_at": ("arp_jobs", ["dag_id", "submitted_at"]),
    "ix_arp_jobs_state_submitted_at": ("arp_jobs", ["state", "submitted_at"]),
    "ix_arp_jobs_team_ended_at": ("arp_jobs", ["team", "ended_at"]),
    "ix_arp_clusters_requested_at": ("arp_clusters", ["requested_at"]),
    "ix_arp_clusters_team_requested_at": ("arp_clusters", ["team", "requested_at"]),
}


def upgrade() -> None:
    for name, (table, columns) in INDEXES.items():
        op.create_index(name, table, columns)


def downgrade() -> None:
    for name, (table, _) in INDEXES.items():
        op.drop_index(name, table_name=table)
