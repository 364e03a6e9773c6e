"""KubeRay manifests rendered from a ``job_configuration``: pure functions, no Kubernetes access.

A named, reusable cluster is a ``RayCluster``. A job is a ``RayJob``: on a named cluster through
``clusterSelector``, or on its own ephemeral cluster through ``rayClusterSpec`` with
``shutdownAfterJobFinishes``. ``backoffLimit`` is 0 because Airflow owns retries, and
``activeDeadlineSeconds`` comes from the job's timeout. Token authentication is on unless the
configuration disables it. Every object carries the provider's labels (label-safe values) and the
full Airflow identifiers as annotations.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping
from typing import Any

import yaml

from airflow_ray_platform.backends.base import RAY_CLIENT_PORT
from airflow_ray_platform.spec.models import (
    DEFAULT_IMAGE_REPOSITORY,
    ClusterSpec,
    JobConfiguration,
    JobSpec,
    NodeResources,
    parse_quantity,
)
from airflow_ray_platform.spec.naming import MANAGED_BY_LABEL, MANAGED_BY_VALUE

GROUP, VERSION = "ray.io", "v1"
API_VERSION = f"{GROUP}/{VERSION}"
#: Ports of the head container, by KubeRay's names.
HEAD_PORTS = [("gcs-server", 6379), ("dashboard", 8265), ("client", RAY_CLIENT_PORT)]


def default_image(ray_version: str) -> str:
    """Ray's image for this Python (the Airflow worker's), so client and cluster agree."""
    return f"{DEFAULT_IMAGE_REPOSITORY}:{ray_version}-py{sys.version_info.major}{sys.version_info.minor}"


def _ray_version(spec: ClusterSpec) -> str:
    if spec.ray_version:
        return spec.ray_version
    import ray

    return ray.__version__


def _resources(node: NodeResources) -> dict[str, Any]:
    requests = {"cpu": node.cpu, "memory": node.memory}
    limits = dict(requests)
    if node.gpu:
        limits["nvidia.com/gpu"] = node.gpu
    return {"requests": requests, "limits": limits}


def _pod_template(
    spec: ClusterSpec, node: NodeResources, container: str, labels: Mapping[str, str], ports: bool
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "containers": [
            {
                "name": container,
                "image": spec.image or default_image(_ray_version(spec)),
                "resources": _resources(node),
                **({"ports": [{"name": n, "containerPort": p} for n, p in HEAD_PORTS]} if ports else {}),
            }
        ]
    }
    if node.node_selector:
        body["nodeSelector"] = dict(node.node_selector)
    if node.tolerations:
        body["tolerations"] = [t.model_dump(exclude_none=True) for t in node.tolerations]
    if spec.service_account:
        body["serviceAccountName"] = spec.service_account
    return {"metadata": {"labels": dict(labels)}, "spec": body}


def _start_params(node: NodeResources, head: bool) -> dict[str, str]:
    params = {"dashboard-host": "0.0.0.0"} if head else {}
    if node.object_store_memory is not None:
        params["object-store-memory"] = str(int(parse_quantity(node.object_store_memory)))
    params.update(node.ray_start_params)
    return params


def ray_cluster_spec(
    spec: ClusterSpec, labels: Mapping[str, str], *, kubernetes_token_auth: bool = False
) -> dict[str, Any]:
    """The ``RayCluster.spec`` (also a RayJob's ``rayClusterSpec``); ``kubernetes_token_auth``: Ray
    authenticates callers by their Kubernetes credentials (TokenReview, and ``ray:write`` on the
    RayCluster by SubjectAccessReview) instead of a static token in a Secret."""
    auth_options: dict[str, Any] = {"mode": spec.auth}
    if kubernetes_token_auth and spec.auth == "token":
        auth_options["enableK8sTokenAuth"] = True
    body: dict[str, Any] = {
        "rayVersion": _ray_version(spec),
        "enableInTreeAutoscaling": spec.autoscaling,
        "authOptions": auth_options,
        "headGroupSpec": {
            "rayStartParams": _start_params(spec.head, head=True),
            "template": _pod_template(spec, spec.head, "ray-head", labels, ports=True),
        },
    }
    if spec.worker_groups:
        body["workerGroupSpecs"] = [
            {
                "groupName": group.group_name,
                "replicas": group.replicas,
                "minReplicas": group.min_replicas if spec.autoscaling else group.replicas,
                "maxReplicas": (group.max_replicas if group.max_replicas is not None else group.replicas)
                if spec.autoscaling
                else group.replicas,
                "rayStartParams": _start_params(group, head=False),
                "template": _pod_template(spec, group, "ray-worker", labels, ports=False),
            }
            for group in spec.worker_groups
        ]
    return body


def _metadata(name: str, namespace: str, labels: Mapping[str, str], annotations: Mapping[str, str]) -> dict:
    metadata: dict[str, Any] = {"name": name, "namespace": namespace, "labels": dict(labels)}
    if annotations:
        metadata["annotations"] = dict(annotations)
    return metadata


def render_ray_cluster(
    name: str,
    namespace: str,
    spec: ClusterSpec,
    labels: Mapping[str, str],
    annotations: Mapping[str, str],
    *,
    kubernetes_token_auth: bool = False,
) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "RayCluster",
        "metadata": _metadata(name, namespace, labels, annotations),
        "spec": ray_cluster_spec(spec, labels, kubernetes_token_auth=kubernetes_token_auth),
    }


def render_ray_job(
    name: str,
    namespace: str,
    job: JobSpec,
    metadata: Mapping[str, str],
    labels: Mapping[str, str],
    annotations: Mapping[str, str],
    *,
    cluster_name: str | None = None,
    cluster_spec: ClusterSpec | None = None,
    ttl_seconds_after_finished: int = 60,
) -> dict[str, Any]:
    """A RayJob on ``cluster_name`` (existing) or on its own cluster from ``cluster_spec`` (ephemeral)."""
    if (cluster_name is None) == (cluster_spec is None):
        raise ValueError("a RayJob runs either on a named cluster or on its own cluster spec, not both")
    submission = job.submission(metadata)  # the Jobs API's fields, under KubeRay's names
    body: dict[str, Any] = {
        "entrypoint": submission["entrypoint"],
        "jobId": name,
        "submissionMode": "K8sJobMode",
        "backoffLimit": 0,
        "metadata": submission["metadata"],
    }
    if "runtime_env" in submission:
        body["runtimeEnvYAML"] = yaml.safe_dump(submission["runtime_env"], sort_keys=True)
    if "entrypoint_num_cpus" in submission:
        body["entrypointNumCpus"] = submission["entrypoint_num_cpus"]
    if "entrypoint_num_gpus" in submission:
        body["entrypointNumGpus"] = submission["entrypoint_num_gpus"]
    if "entrypoint_resources" in submission:
        body["entrypointResources"] = json.dumps(submission["entrypoint_resources"], sort_keys=True)
    if job.timeout is not None:
        # KubeRay refuses a deadline below 1 s: round a sub-second timeout up, never down to 0.
        body["activeDeadlineSeconds"] = max(1, math.ceil(job.timeout.total_seconds()))
    if cluster_name is not None:
        body["clusterSelector"] = {"ray.io/cluster": cluster_name}
    else:
        assert cluster_spec is not None
        body["rayClusterSpec"] = ray_cluster_spec(cluster_spec, labels)
        body["shutdownAfterJobFinishes"] = True
        body["ttlSecondsAfterFinished"] = ttl_seconds_after_finished
    return {
        "apiVersion": API_VERSION,
        "kind": "RayJob",
        "metadata": _metadata(name, namespace, labels, annotations),
        "spec": body,
    }


def validate_configuration_manifests(config: JobConfiguration) -> None:
    """Render what ``config`` would create on KubeRay and check it strictly against the CRDs.

    For DAG-parse-time checks: the names and labels are placeholders of the right shape, so a
    failure is about the configuration itself. Raises ``ManifestValidationError``.
    """
    from airflow_ray_platform.backends.kuberay.schema import validate_manifest

    labels = {MANAGED_BY_LABEL: MANAGED_BY_VALUE}
    if not config.cluster.reuses_existing:
        validate_manifest(render_ray_cluster(config.cluster_name, "default", config.cluster, labels, {}))
    if config.job is not None:
        validate_manifest(
            render_ray_job("parse-check", "default", config.job, {}, labels, {}, cluster_name=config.cluster_name)
        )
