"""``airflow-ray doctor`` as a user runs it: against a working setup, then against each piece broken for
real (a missing connection, a dashboard nobody serves, a wrong token, a database that does not answer,
storage that cannot be written, a machine that refuses namespaces, a policy that does not parse)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from airflow_ray_platform.backends.local.processes import free_ports
from airflow_ray_platform.cli.doctor import Verdict, check_policy
from airflow_ray_platform.records.state_store import StateStore
from airflow_ray_platform.tenancy.policy import DagFacts

from ..conftest import SHARED_CLUSTER
from ..helpers import WITHOUT_USER_NAMESPACES

pytestmark = pytest.mark.usefixtures("shared_cluster", "airflow_db")

CLI = str(Path(sys.executable).parent / "airflow-ray")


def _doctor(*args: str, environment: dict[str, str] | None = None, wrapper: list[str] = ()) -> tuple[int, dict]:
    done = subprocess.run(
        [*wrapper, CLI, *args, "doctor", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(environment or {})},
    )
    checks = {check["check"]: check for check in json.loads(done.stdout)}
    assert list(checks) == [
        "connection",
        "backend",
        "authentication",
        "state store",
        "object storage",
        "sandbox",
        "policy",
    ], done.stderr
    return done.returncode, checks


def _verdicts(checks: dict) -> dict[str, str]:
    return {name: check["verdict"] for name, check in checks.items()}


def test_a_working_setup_passes_every_check(tmp_path):
    StateStore.from_airflow_connection(None).migrate()
    code, checks = _doctor("--log-storage-uri", f"file://{tmp_path}/logs")
    assert code == 0 and set(_verdicts(checks).values()) == {"ok"}, checks
    assert checks["authentication"]["detail"].startswith(f"{SHARED_CLUSTER}: the Jobs API answered")
    assert not list((tmp_path / "logs" / "airflow-ray-doctor").iterdir())  # the probe object is gone again


def test_a_missing_connection_fails_and_skips_what_needs_it():
    code, checks = _doctor("--conn-id", "ray_nowhere_defined")
    assert code == 1 and checks["connection"]["verdict"] == "fail"
    assert "no Airflow connection 'ray_nowhere_defined'" in checks["connection"]["detail"]
    assert checks["connection"]["fix"].startswith("create the connection")
    assert _verdicts(checks)["backend"] == _verdicts(checks)["authentication"] == "skip"


def test_a_dashboard_nobody_serves_is_unreachable():
    (port,) = free_ports(1)
    connection = json.dumps({"conn_type": "ray", "host": "127.0.0.1", "port": port, "schema": "http"})
    code, checks = _doctor("--conn-id", "ray_closed", environment={"AIRFLOW_CONN_RAY_CLOSED": connection})
    assert code == 1 and checks["backend"]["verdict"] == "fail"
    assert checks["backend"]["detail"].startswith("unreachable:") and "dashboard" in checks["backend"]["fix"]
    assert checks["authentication"]["verdict"] == "skip"


def test_a_wrong_token_is_named_as_the_clusters_refusal(local_backend):
    dashboard = local_backend.describe_cluster(SHARED_CLUSTER).dashboard_url
    host, port = dashboard.removeprefix("http://").split(":")
    connection = {"conn_type": "ray", "host": host, "port": int(port), "schema": "http", "password": "not-the-token"}
    code, checks = _doctor("--conn-id", "ray_wrong", environment={"AIRFLOW_CONN_RAY_WRONG": json.dumps(connection)})
    assert code == 1 and checks["authentication"]["verdict"] == "fail"
    assert checks["authentication"]["detail"].startswith("default: refused (403 Forbidden):")
    assert "Invalid authentication token" in checks["authentication"]["detail"]  # Ray's own words
    assert "password" in checks["authentication"]["fix"]
    assert "not-the-token" not in json.dumps(checks)  # the credential is never printed


def test_a_state_store_that_does_not_answer_or_is_not_migrated(tmp_path):
    down = {"conn_type": "postgres", "extra": {"sqlalchemy_url": "postgresql+psycopg://postgres@127.0.0.1:1/test"}}
    code, checks = _doctor("--state-store-conn-id", "arp_down", environment={"AIRFLOW_CONN_ARP_DOWN": json.dumps(down)})
    assert code == 1 and checks["state store"]["verdict"] == "fail"
    assert "unreachable" in checks["state store"]["detail"] and "state_store_conn_id" in checks["state store"]["fix"]
    empty = {"conn_type": "sqlite", "extra": {"sqlalchemy_url": f"sqlite:///{tmp_path}/empty.db"}}
    code, checks = _doctor(
        "--state-store-conn-id", "arp_empty", environment={"AIRFLOW_CONN_ARP_EMPTY": json.dumps(empty)}
    )
    assert checks["state store"]["verdict"] == "warn" and "no schema yet" in checks["state store"]["detail"]


def test_object_storage_that_cannot_be_written():
    code, checks = _doctor("--log-storage-uri", "file:///proc/arp-doctor")
    assert code == 1 and checks["object storage"]["verdict"] == "fail"
    assert checks["object storage"]["detail"].startswith("file:///proc/arp-doctor: writing")


def test_a_machine_that_refuses_namespaces_fails_a_policy_that_requires_the_sandbox(tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text(json.dumps({"teams": {"platform": {"match": {"dag_ids": ["*"]}, "sandbox": "required"}}}))
    wrapper = [sys.executable, "-c", WITHOUT_USER_NAMESPACES]
    environment = {"AIRFLOW__RAY_PLATFORM__POLICY": str(policy)}
    code, checks = _doctor("--team", "platform", environment=environment, wrapper=wrapper)
    assert code == 1 and checks["sandbox"]["verdict"] == "fail"
    assert "the policy requires it for ['platform']" in checks["sandbox"]["detail"]
    code, checks = _doctor(wrapper=wrapper)  # without a policy requiring it: a warning
    assert checks["sandbox"]["verdict"] == "warn" and "unavailable" in checks["sandbox"]["detail"]


def test_a_policy_that_does_not_parse(tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text("teams:\n  platform:\n    match: {dag_ids: ['*']}\n    max_cpus: lots\n")
    code, checks = _doctor("--team", "platform", environment={"AIRFLOW__RAY_PLATFORM__POLICY": str(policy)})
    assert code == 1 and checks["policy"]["verdict"] == "fail"
    assert "max_cpus" in checks["policy"]["detail"]


def test_the_policy_check_says_which_team_each_dag_acts_as(tmp_path, monkeypatch):
    policy = tmp_path / "policy.yaml"
    teams = {"a": {"match": {"tags": ["a"]}}, "b": {"match": {"dag_ids": ["b_*", "both"]}}}
    policy.write_text(json.dumps({"teams": teams}))
    monkeypatch.setenv("AIRFLOW__RAY_PLATFORM__POLICY", str(policy))
    dags = [DagFacts("a_daily", tags=frozenset({"a"})), DagFacts("b_daily"), DagFacts("report")]
    check, _ = check_policy(lambda: dags)
    assert check.verdict == Verdict.OK and check.facts["dag_teams"] == {"a_daily": "a", "b_daily": "b", "report": None}
    check, _ = check_policy(lambda: [*dags, DagFacts("both", tags=frozenset({"a"}))])
    assert check.verdict == Verdict.FAIL and "matching several: ['both']" in check.detail
