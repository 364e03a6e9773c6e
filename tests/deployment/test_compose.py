"""docker-compose.yaml is a valid Compose file and runs what the deployment tests run.

No container engine runs on this project's machines, so the file is checked, not started: against the
Compose specification's JSON schema, and for sharing its settings and commands with tests/deployment.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from .harness import AIRFLOW_SERVICES, COMPOSE_FILE, REPO, SHARED_SETTINGS, compose_commands, shared_settings

SCHEMA = Path(__file__).parent / "compose_spec" / "compose-spec.json"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft201909Validator:
    return jsonschema.Draft201909Validator(json.loads(SCHEMA.read_text()))


def test_the_compose_file_validates_against_the_compose_specification(compose, validator):
    errors = [f"{list(error.absolute_path)}: {error.message}" for error in validator.iter_errors(compose)]
    assert errors == []
    misspelt = copy.deepcopy(compose)
    misspelt["services"]["airflow-scheduler"]["enviroment"] = {}
    assert any("enviroment" in error.message for error in validator.iter_errors(misspelt))


def test_every_airflow_service_runs_the_shared_settings_and_the_tested_commands(compose):
    services = compose["services"]
    assert compose_commands() == {
        "airflow-apiserver": ["api-server"],
        "airflow-dag-processor": ["dag-processor"],
        "airflow-scheduler": ["scheduler"],
        "airflow-triggerer": ["triggerer"],
    }
    for name in (*AIRFLOW_SERVICES, "airflow-init"):
        assert services[name]["env_file"] == [str(SHARED_SETTINGS.relative_to(REPO))], name
        # Machine-specific values only: nothing the shared file sets is set again here.
        assert not set(services[name]["environment"]) & set(shared_settings()), name
    settings = shared_settings()
    assert settings["AIRFLOW__OPERATORS__DEFAULT_DEFERRABLE"] == "True"
    assert settings["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"
    assert settings["AIRFLOW__RAY_PLATFORM__STATE_STORE_CONN_ID"] == "ray_state_store"
    environment = services["airflow-scheduler"]["environment"]
    assert environment["AIRFLOW__RAY_PLATFORM__LOG_STORAGE_URI"].startswith("s3://")
    assert json.loads(environment["AIRFLOW_CONN_RAY_STATE_STORE"])["extra"]["sqlalchemy_url"].startswith("postgresql")
    assert {"postgres", "seaweedfs"} <= set(services)
    assert "./dags:/opt/airflow/dags" in services["airflow-scheduler"]["volumes"]
    dockerfile = (REPO / services["airflow-scheduler"]["build"] / "Dockerfile").read_text()
    assert dockerfile.startswith("# ") and "ARG AIRFLOW_IMAGE=apache/airflow:" in dockerfile
    assert "FROM ${AIRFLOW_IMAGE}" in dockerfile  # a digest can be passed in its place


SANDBOX_NEEDS = {"unshare", "clone", "clone3", "mount", "umount2", "mount_setattr", "setns", "prctl"}


def test_the_scheduler_where_tasks_start_local_clusters_may_make_their_sandbox(compose):
    """Docker's default seccomp profile refuses the namespaces and mounts the local backend's sandbox makes
    (an unsandboxed cluster would read the scheduler's environment). The scheduler (LocalExecutor: tasks
    run there) gets a profile of the project's that allows those and refuses what no Airflow or Ray process
    needs; the other services keep Docker's default."""
    services = compose["services"]
    options = dict(option.split("=", 1) for option in services["airflow-scheduler"]["security_opt"])
    profile = json.loads((REPO / options["seccomp"]).read_text())
    assert options["apparmor"] == "unconfined"  # docker-default's AppArmor profile denies mount
    denied = {name for rule in profile["syscalls"] if rule["action"] == "SCMP_ACT_ERRNO" for name in rule["names"]}
    assert profile["defaultAction"] == "SCMP_ACT_ALLOW" and not SANDBOX_NEEDS & denied
    assert {"init_module", "finit_module", "kexec_load", "bpf", "keyctl", "open_by_handle_at", "ptrace"} <= denied
    assert all("security_opt" not in services[name] for name in services if name != "airflow-scheduler")
    connection = json.loads(services["airflow-scheduler"]["environment"]["AIRFLOW_CONN_RAY_DEFAULT"])
    assert connection["extra"]["writable_paths"] == ["/opt/airflow/demo-output"]
    assert services["airflow-scheduler"]["environment"]["ZONE_TRAINING_OUTPUT"].startswith("/opt/airflow/demo-output/")


def test_every_airflow_service_sends_metrics_to_the_exporter_with_the_shipped_mapping(compose):
    services = compose["services"]
    settings = shared_settings()
    assert settings["AIRFLOW__METRICS__STATSD_ON"] == "True"
    assert settings["AIRFLOW__METRICS__STATSD_INFLUXDB_ENABLED"] == "True"  # the tags
    exporter = services["statsd-exporter"]
    assert (
        "./deploy/monitoring/statsd-exporter-mapping.yaml:/etc/statsd-exporter/mapping.yaml:ro" in exporter["volumes"]
    )
    assert "--statsd.mapping-config=/etc/statsd-exporter/mapping.yaml" in exporter["command"]
    listen = next(arg for arg in exporter["command"] if arg.startswith("--statsd.listen-udp="))
    for name in AIRFLOW_SERVICES:
        environment = services[name]["environment"]
        assert environment["AIRFLOW__METRICS__STATSD_HOST"] == "statsd-exporter", name
        assert listen.endswith(":" + environment["AIRFLOW__METRICS__STATSD_PORT"]), name
