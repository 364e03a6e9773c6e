"""Options read without importing Airflow (the CLI, a notebook) are what Airflow's configuration reads."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

READERS = (
    "state_store_conn_id",
    "log_storage_uri",
    "policy_path",
    "deferral_settle_seconds",
    "validate_kuberay_manifests",
    "default_deferrable",
    "multi_team",
    "api_base_url",
    "custom_secrets_backend",
    "metrics_enabled",
)


def _read(home: Path, environment: dict[str, str], *, through_airflow: bool) -> dict:
    """Every reader's value in a fresh interpreter, and whether Airflow got imported there."""
    script = (
        ("import airflow.configuration\n" if through_airflow else "")
        + "import json, sys\nfrom airflow_ray_platform import settings\n"
        + f"values = {{name: getattr(settings, name)() for name in {READERS!r}}}\n"
        + "print(json.dumps({'values': values, 'airflow_imported': 'airflow' in sys.modules}))\n"
    )
    inherited = {key: value for key, value in os.environ.items() if not key.startswith("AIRFLOW")}
    env = {**inherited, "HOME": str(home), "AIRFLOW_HOME": str(home / "airflow"), **environment}
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_options_from_the_environment_the_file_and_the_defaults_are_read_as_airflow_reads_them(tmp_path):
    (tmp_path / "airflow").mkdir()
    (tmp_path / "airflow" / "airflow.cfg").write_text(
        "[ray_platform]\n"
        "policy = $POLICY_DIR/policy.yaml\n"
        "deferral_settle_seconds = 4\n"
        "validate_kuberay_manifests = False\n"
        "[operators]\n"
        "default_deferrable = True\n"
        "[api]\n"
        "base_url = http://airflow.example/\n"
        "[metrics]\n"
        "statsd_on = True\n"
    )
    environment = {
        "POLICY_DIR": "/etc/ray-platform",
        "AIRFLOW__RAY_PLATFORM__DEFERRAL_SETTLE_SECONDS": "2.5",  # the environment wins over the file
        "AIRFLOW__RAY_PLATFORM__STATE_STORE_CONN_ID": "ray_platform_db",
        "AIRFLOW__CORE__MULTI_TEAM": "true",
    }
    light = _read(tmp_path, environment, through_airflow=False)
    assert light["airflow_imported"] is False
    assert light["values"]["policy_path"] == "/etc/ray-platform/policy.yaml"
    assert light["values"]["deferral_settle_seconds"] == 2.5
    assert light["values"] == _read(tmp_path, environment, through_airflow=True)["values"]


def test_an_option_given_as_a_command_is_read_through_airflow(tmp_path):
    (tmp_path / "airflow").mkdir()
    (tmp_path / "airflow" / "airflow.cfg").write_text("[secrets]\nbackend_cmd = echo a.SecretsBackend\n")
    light = _read(tmp_path, {}, through_airflow=False)
    assert light["airflow_imported"] is True
    assert light["values"] == _read(tmp_path, {}, through_airflow=True)["values"]
