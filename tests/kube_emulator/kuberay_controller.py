"""A simulated KubeRay operator: reconciles the emulated API server's RayClusters and RayJobs for real.

Each RayCluster becomes a real local Ray cluster (started by the project's local backend, under the
RayCluster's name), with a head pod object and the token Secret KubeRay would create; each RayJob's
entrypoint runs on its selected cluster through the Jobs API, with a submitter pod whose log is the
driver's log. Status is written back the way KubeRay v1.7 writes it (conditions, ``state``,
``jobStatus``, ``jobDeploymentStatus``, ``reason``, ``message``), and every status it writes must
pass the CRD schema strictly. Deleting a RayJob stops its Ray job (KubeRay's finalizer); deleting a
RayCluster stops its processes.

Two things a real cluster does that tests need to provoke: an image whose name contains
``does-not-exist`` leaves the head pod in ``ErrImagePull``, and a head asking for more than
``SCHEDULABLE_CPUS`` stays ``Unschedulable``.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import threading
from datetime import UTC, datetime
from typing import Any

import yaml

from airflow_ray_platform.backends.base import BackendError, ClusterState
from airflow_ray_platform.backends.kuberay.schema import validate_manifest
from airflow_ray_platform.backends.local.backend import LocalBackend
from airflow_ray_platform.spec.models import ClusterSpec, JobSpec
from airflow_ray_platform.spec.quantities import parse_quantity

from .api_server import ApiError, KubernetesApiEmulator

SCHEDULABLE_CPUS = 16
UNPULLABLE_IMAGE = "does-not-exist"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _condition(kind: str, status: bool, reason: str, message: str = "") -> dict[str, Any]:
    return {
        "type": kind,
        "status": "True" if status else "False",
        "reason": reason,
        "message": message,
        "lastTransitionTime": _now(),
    }


def _node(template: dict[str, Any], start_params: dict[str, str]) -> dict[str, Any]:
    requests = template["spec"]["containers"][0].get("resources", {}).get("requests", {})
    node = {"cpu": str(requests.get("cpu", "1")), "memory": str(requests.get("memory", "1Gi"))}
    if "object-store-memory" in start_params:
        node["object_store_memory"] = start_params["object-store-memory"]
    return node


def local_cluster_spec(spec: dict[str, Any]) -> ClusterSpec:
    """The local backend's spec for a RayCluster's spec: the same head and worker groups."""
    head = spec["headGroupSpec"]
    return ClusterSpec(
        head=_node(head["template"], head.get("rayStartParams") or {}),
        worker_groups=[
            {
                "group_name": group["groupName"],
                "replicas": group.get("replicas", 0),
                **_node(group["template"], group.get("rayStartParams") or {}),
            }
            for group in spec.get("workerGroupSpecs") or []
        ],
    )


class SimulatedKubeRay:
    """Reconcile loop over the emulator's store, in a thread; ``stop()`` stops what it started."""

    def __init__(self, emulator: KubernetesApiEmulator, local: LocalBackend, interval: float = 0.2) -> None:
        self.store = emulator.store
        self.local = local
        self.interval = interval
        self._clusters: dict[tuple[str, str], str] = {}  # (namespace, name) -> uid it was started for
        self._starting: dict[tuple[str, str], threading.Thread] = {}
        self._jobs: dict[tuple[str, str], str] = {}  # (namespace, name) -> cluster it runs on
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="simulated-kuberay", daemon=True)
        self.errors: list[str] = []

    def start(self) -> SimulatedKubeRay:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)
        for thread in self._starting.values():
            thread.join(timeout=120)
        for _, name in list(self._clusters):
            self.local.delete_cluster(name)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.reconcile()
            except Exception as error:  # a bug here must show in the tests, not kill the loop silently
                self.errors.append(repr(error))
            self._stop.wait(self.interval)

    # -------------------------------------------------------------- helpers
    def _objects(self, resource: str) -> list[dict[str, Any]]:
        return self.store.list(resource, None, None, None)

    def _write_status(self, resource: str, obj: dict[str, Any], status: dict[str, Any]) -> None:
        if obj.get("status") == status:
            return
        candidate = {**copy.deepcopy(obj), "status": status}
        validate_manifest(candidate)  # what KubeRay writes passes its own schema
        metadata = obj["metadata"]
        with contextlib.suppress(ApiError):  # deleted meanwhile: the next pass sees it gone
            self.store.update(resource, metadata["namespace"], metadata["name"], {"status": status}, status=True)

    def _pod(self, namespace: str, name: str, labels: dict[str, str], status: dict[str, Any]) -> None:
        try:
            pod = self.store.get("pods", namespace, name)
        except ApiError:
            self.store.create(
                "pods",
                namespace,
                {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels}, "status": status},
            )
            return
        if pod.get("status") != status:
            self.store.update("pods", namespace, name, {"status": status}, status=True)

    def _forget(self, resource: str, namespace: str, name: str) -> None:
        with contextlib.suppress(ApiError):
            self.store.delete(resource, namespace, name)

    # ------------------------------------------------------------- clusters
    def reconcile(self) -> None:
        present = set()
        for obj in self._objects("rayclusters"):
            key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
            present.add(key)
            self._reconcile_cluster(key, obj)
        for key in [key for key in self._clusters if key not in present]:
            self._delete_cluster(key)
        jobs_present = set()
        for obj in self._objects("rayjobs"):
            key = (obj["metadata"]["namespace"], obj["metadata"]["name"])
            jobs_present.add(key)
            self._reconcile_job(key, obj)
        for key in [key for key in self._jobs if key not in jobs_present]:
            self._delete_job(key)

    def _reconcile_cluster(self, key: tuple[str, str], obj: dict[str, Any]) -> None:
        namespace, name = key
        spec = obj["spec"]
        head_pod = f"{name}-head"
        labels = {"ray.io/cluster": name, "ray.io/node-type": "head"}
        container = spec["headGroupSpec"]["template"]["spec"]["containers"][0]
        requested_cpu = parse_quantity(str(container.get("resources", {}).get("requests", {}).get("cpu", "1")))
        not_ready = {"state": "", "conditions": [_condition("HeadPodReady", False, "HeadPodNotFound")]}
        if UNPULLABLE_IMAGE in container.get("image", ""):
            self._pod(
                namespace,
                head_pod,
                labels,
                {
                    "phase": "Pending",
                    "containerStatuses": [
                        {
                            "name": container["name"],
                            "image": container["image"],
                            "imageID": "",
                            "restartCount": 0,
                            "ready": False,
                            "state": {
                                "waiting": {
                                    "reason": "ErrImagePull",
                                    "message": f'failed to pull image "{container["image"]}": not found',
                                }
                            },
                        }
                    ],
                },
            )
            self._write_status("rayclusters", obj, not_ready)
            return
        if requested_cpu > SCHEDULABLE_CPUS:
            self._pod(
                namespace,
                head_pod,
                labels,
                {
                    "phase": "Pending",
                    "conditions": [
                        {
                            "type": "PodScheduled",
                            "status": "False",
                            "reason": "Unschedulable",
                            "message": f"0/1 nodes are available: 1 Insufficient cpu (requested {requested_cpu}).",
                        }
                    ],
                },
            )
            self._write_status("rayclusters", obj, not_ready)
            return
        if self._clusters.get(key) != obj["metadata"]["uid"]:
            self._clusters[key] = obj["metadata"]["uid"]
            self._pod(namespace, head_pod, labels, {"phase": "Pending"})
            self._write_status("rayclusters", obj, not_ready)
            thread = threading.Thread(
                target=self._start_local,
                args=(name, local_cluster_spec(spec), obj["metadata"].get("labels") or {}),
                daemon=True,
            )
            self._starting[key] = thread
            thread.start()
            return
        if self._starting.get(key) is not None and self._starting[key].is_alive():
            return
        info = self.local.describe_cluster(name)
        if info is None or info.state == ClusterState.PROVISIONING:
            return
        if info.state == ClusterState.FAILED:
            self._write_status(
                "rayclusters",
                obj,
                {
                    "state": "failed",
                    "conditions": [
                        _condition("HeadPodReady", False, "ContainersNotReady"),
                        _condition("ReplicaFailure", True, "HeadPodFailed", info.message or "head pod failed"),
                    ],
                },
            )
            return
        auth_options = spec.get("authOptions") or {}
        # KubeRay makes a token Secret for static-token auth only, not for Kubernetes token auth
        if auth_options.get("mode") == "token" and not auth_options.get("enableK8sTokenAuth"):
            token = self.local.registry.read_token(name)
            try:
                self.store.get("secrets", namespace, name)
            except ApiError:
                self.store.create(
                    "secrets",
                    namespace,
                    {
                        "apiVersion": "v1",
                        "kind": "Secret",
                        "metadata": {"name": name, "labels": {"ray.io/cluster": name}},
                        "data": {"auth_token": base64.b64encode(token.encode()).decode()},
                    },
                )
        self._pod(namespace, head_pod, labels, {"phase": "Running", "podIP": "127.0.0.1"})
        port = (info.dashboard_url or "").rsplit(":", 1)[-1]
        self._write_status(
            "rayclusters",
            obj,
            {
                "state": "ready",
                "conditions": [
                    _condition("HeadPodReady", True, "HeadPodRunningAndReady"),
                    _condition("RayClusterProvisioned", True, "AllPodRunningAndReadyFirstTime"),
                ],
                "head": {"podIP": "127.0.0.1", "serviceIP": "127.0.0.1", "podName": head_pod},
                "endpoints": {"dashboard": port},
                "readyWorkerReplicas": sum(g.get("replicas", 0) for g in spec.get("workerGroupSpecs") or []),
            },
        )

    def _start_local(self, name: str, spec: ClusterSpec, labels: dict[str, str]) -> None:
        """Start the local cluster behind a RayCluster (the RayCluster ``shared`` finds the session's
        shared local cluster running, started from its own spec)."""
        if self.local.describe_cluster(name) is None:
            self.local.create_or_get_cluster(name, spec, labels)

    def _delete_cluster(self, key: tuple[str, str]) -> None:
        namespace, name = key
        del self._clusters[key]
        thread = self._starting.pop(key, None)
        if thread is not None:
            thread.join(timeout=120)
        self.local.delete_cluster(name)
        self._forget("pods", namespace, f"{name}-head")
        self._forget("secrets", namespace, name)

    def _cluster_ready(self, namespace: str, name: str) -> bool:
        try:
            status = self.store.get("rayclusters", namespace, name).get("status") or {}
        except ApiError:
            return False
        return status.get("state") == "ready"

    # ----------------------------------------------------------------- jobs
    def _reconcile_job(self, key: tuple[str, str], obj: dict[str, Any]) -> None:
        namespace, name = key
        spec, status = obj["spec"], dict(obj.get("status") or {})
        if status.get("jobDeploymentStatus") in ("Complete", "Failed"):
            return
        cluster = (spec.get("clusterSelector") or {}).get("ray.io/cluster")
        submission_id = spec.get("jobId") or name
        if cluster is None:
            self._write_status(
                "rayjobs",
                obj,
                {
                    "jobDeploymentStatus": "ValidationFailed",
                    "reason": "ValidationFailed",
                    "message": "this simulation runs RayJobs on a selected cluster only",
                },
            )
            return
        if key not in self._jobs:
            if not self._cluster_ready(namespace, cluster):
                self._write_status("rayjobs", obj, {"jobDeploymentStatus": "Initializing", "rayClusterName": cluster})
                return
            job = JobSpec(
                entrypoint=spec["entrypoint"],
                runtime_env=yaml.safe_load(spec["runtimeEnvYAML"]) if spec.get("runtimeEnvYAML") else {},
                entrypoint_num_cpus=spec.get("entrypointNumCpus"),
                entrypoint_num_gpus=spec.get("entrypointNumGpus"),
            )
            self._jobs[key] = cluster
            try:
                self.local.submit_job(cluster, submission_id, job, spec.get("metadata") or {})
            except BackendError as error:
                self._write_status(
                    "rayjobs",
                    obj,
                    {
                        "jobDeploymentStatus": "Failed",
                        "reason": "SubmissionFailed",
                        "message": str(error),
                        "rayClusterName": cluster,
                        "endTime": _now(),
                    },
                )
                return
            self._pod(namespace, f"{name}-submitter", {"job-name": name}, {"phase": "Running"})
            self.store.pod_logs[(namespace, f"{name}-submitter")] = lambda: self.local.job_logs(cluster, submission_id)
            status.update(startTime=_now(), jobDeploymentStatus="Running", rayClusterName=cluster, jobId=submission_id)
        info = self.local.describe_job(cluster, submission_id)
        if info is None:
            return
        status["jobStatus"] = str(info.state)
        deadline = spec.get("activeDeadlineSeconds")
        started = datetime.fromisoformat(status["startTime"].replace("Z", "+00:00"))
        if info.state.is_terminal:
            status.update(
                jobDeploymentStatus="Complete" if info.state == "SUCCEEDED" else "Failed",
                endTime=_now(),
                **({} if info.state == "SUCCEEDED" else {"reason": "AppFailed"}),
                message=info.message or "",
            )
            self._pod(namespace, f"{name}-submitter", {"job-name": name}, {"phase": "Succeeded"})
        elif deadline is not None and (datetime.now(UTC) - started).total_seconds() > deadline:
            self.local.stop_job(cluster, submission_id)
            status.update(
                jobDeploymentStatus="Failed",
                reason="DeadlineExceeded",
                message=f"The RayJob has passed the activeDeadlineSeconds ({deadline}s).",
                endTime=_now(),
            )
        self._write_status("rayjobs", obj, status)

    def _delete_job(self, key: tuple[str, str]) -> None:
        """KubeRay's finalizer: a deleted RayJob's Ray job is stopped, its submitter removed."""
        namespace, name = key
        cluster = self._jobs.pop(key)
        with contextlib.suppress(BackendError):  # its cluster is gone too
            self.local.stop_job(cluster, name)
        self._forget("pods", namespace, f"{name}-submitter")
