"""Connections found as Airflow finds them, without importing Airflow where its own order allows."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from airflow_ray_platform.connections import ConnectionFields

ENVIRONMENT_VALUES = [
    "postgresql://user:p%40ss%2Fword@db.example:5432/airflow?sslmode=require",
    "ray://ray-head.example:8265/https?__extra__=%7B%22verify%22%3A+false%2C+%22cluster_name%22%3A+%22prod%22%7D",
    "ray://?__extra__=%7B%22backend%22%3A+%22kuberay%22%2C+%22namespace%22%3A+%22ray%22%7D",
    "my-type://login@host.example/",
    "aws://?region_name=eu-west-1&endpoint_url=http%3A%2F%2F127.0.0.1%3A9000",
    "http://https://dashboard.example:8443",
    "sqlite://%2Ftmp%2Fstate.db",
    json.dumps({"conn_type": "ray", "host": "ray.example", "port": "8265", "password": "t0k3n", "extra": {"a": 1}}),
    json.dumps({"conn_type": "postgres", "extra": {"sqlalchemy_url": "postgresql+psycopg://db/x"}}),
    json.dumps({"conn_type": "ray", "extra": json.dumps({"backend": "local"})}),
]


@pytest.mark.parametrize("value", ENVIRONMENT_VALUES)
def test_an_environment_connection_reads_as_airflow_reads_it(value):
    from airflow.sdk.definitions.connection import Connection

    airflow = Connection.from_json(value, "c") if value.startswith("{") else Connection.from_uri(value, "c")
    ours = ConnectionFields.from_environment_value("c", value)
    assert ours == ConnectionFields.of(airflow)


def _lookup(conn_id: str, environment: dict[str, str]) -> dict:
    """``get_connection`` in a fresh interpreter: what it found, and whether Airflow got imported."""
    script = (
        "import json, sys\n"
        "from airflow_ray_platform.connections import ConnectionNotFoundError, get_connection\n"
        "try:\n"
        f"    conn = get_connection({conn_id!r}); found = [conn.conn_type, conn.host, conn.extra]\n"
        "except ConnectionNotFoundError:\n"
        "    found = None\n"
        "print(json.dumps({'found': found, 'airflow_imported': 'airflow' in sys.modules}))\n"
    )
    env = {key: value for key, value in os.environ.items() if not key.startswith("AIRFLOW_CONN_")}
    done = subprocess.run(
        [sys.executable, "-c", script], env={**env, **environment}, capture_output=True, text=True, check=True
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_outside_airflow_a_connection_is_found_as_the_task_sdk_finds_it_and_without_airflow_from_the_environment(
    airflow_db,
):
    from airflow.models import Connection
    from airflow.utils.session import create_session

    with create_session() as session:  # outside a task, Airflow's Task SDK never reads it from here
        session.add(Connection(conn_id="ray_in_the_database", conn_type="ray", extra='{"backend": "local"}'))
    environment_value = json.dumps({"conn_type": "ray", "host": "ray.example"})

    in_environment = _lookup("ray_elsewhere", {"AIRFLOW_CONN_RAY_ELSEWHERE": environment_value})
    assert in_environment == {"found": ["ray", "ray.example", {}], "airflow_imported": False}
    assert _lookup("ray_in_the_database", {}) == {"found": None, "airflow_imported": False}
    custom_backend = {"AIRFLOW__SECRETS__BACKEND": "airflow.secrets.local_filesystem.LocalFilesystemBackend"}
    assert _lookup("ray_in_the_database", custom_backend) == {"found": None, "airflow_imported": True}
