"""The backend a ray connection names for a caller: the policy's namespace and credentials per team."""

from __future__ import annotations

import json

from airflow_ray_platform.tenancy.connected import backend_spec, find_ray_connection
from airflow_ray_platform.tenancy.policy import Actor, configured_policy


def _connection(monkeypatch, conn_id: str, **fields) -> None:
    monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps({"conn_type": "ray", **fields}))


def test_on_kuberay_a_team_works_in_the_namespace_and_with_the_credentials_its_policy_names(monkeypatch, tmp_path):
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "teams:\n"
        "  forecasting: {match: {dag_ids: ['forecast_*']}, namespace: ray-forecasting, kubernetes_conn_id: k8s_fc}\n"
        "  pricing: {match: {dag_ids: ['pricing_*']}}\n"
    )
    monkeypatch.setenv("AIRFLOW__RAY_PLATFORM__POLICY", str(policy))
    _connection(
        monkeypatch, "ray_k8s", extra={"backend": "kuberay", "namespace": "shared", "kubernetes_conn_id": "k8s"}
    )

    def spec(team: str) -> tuple[str, dict]:
        return backend_spec(find_ray_connection("ray_k8s"), configured_policy(), Actor(team))

    assert spec("forecasting") == (
        "kuberay",
        {"namespace": "ray-forecasting", "kubernetes_conn_id": "k8s_fc"},
    )
    assert spec("pricing") == (
        "kuberay",
        {"namespace": "shared", "kubernetes_conn_id": "k8s"},
    )
