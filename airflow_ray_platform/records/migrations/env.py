"""Alembic environment of the state store: run on the connection StateStore.migrate() hands over."""

from __future__ import annotations

from alembic import context

from airflow_ray_platform.records.state_store import VERSION_TABLE, metadata

context.configure(
    connection=context.config.attributes["connection"],
    target_metadata=metadata,
    version_table=VERSION_TABLE,
)
with context.begin_transaction():
    context.run_migrations()
