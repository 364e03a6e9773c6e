"""KubeRay's status, read as the backend interface's states: pure functions of the objects' JSON.

Shared by the blocking backend and the async trigger path, so both read a RayCluster or a RayJob the
same way. Where KubeRay's own status is silent on why a cluster is not ready (an image that cannot
be pulled, a pod no node can take), the pods' status says it, and that reason reaches the task's
error text.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from airflow_ray_platform.backends.base import ClusterInfo, ClusterState, JobInfo, JobState, leases_from_mapping
from airflow_ray_platform.spec.models import requested_resources
from airflow_ray_platform.spec.naming import (
    CLUSTER_LABEL,
    CLUSTER_SPEC_ANNOTATION,
    LAST_ACTIVE_ANNOTATION,
    LEASES_ANNOTATION,
)
from airflow_ray_platform.spec.timestamps import parse as parse_time

#: Container states after which a pod will not start without someone changing the manifest.
FATAL_WAITING_REASONS = {"InvalidImageName", "CreateContainerConfigError", "CreateContainerError"}
#: Container states worth showing while the cluster is still provisioning.
REPORTED_WAITING_REASONS = FATAL_WAITING_REASONS | {"ErrImagePull", "ImagePullBackOff", "CrashLoopBackOff"}
_RAY_JOB_STATES = {state.value for state in JobState}


def _conditions(status: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {condition["type"]: condition for condition in status.get("conditions") or []}


def _is_true(condition: Mapping[str, Any] | None) -> bool:
    return condition is not None and condition.get("status") == "True"


def _describe_condition(condition: Mapping[str, Any]) -> str:
    return ": ".join(part for part in (condition.get("reason"), condition.get("message")) if part)


def _requested(spec: Mapping[str, Any]) -> dict[str, float]:
    """What a RayCluster spec requests (head plus every worker replica), by the configuration's rule."""

    def node(template: Mapping[str, Any], count: int) -> tuple[str, str, str, int]:
        container = (template.get("spec", {}).get("containers") or [{}])[0]
        resources = container.get("resources", {})
        requests, limits = resources.get("requests", {}), resources.get("limits", {})
        cpu, memory = (str(requests.get(key, limits.get(key, 0))) for key in ("cpu", "memory"))
        return cpu, memory, str(limits.get("nvidia.com/gpu", 0)), count

    groups = [
        node(group.get("template", {}), int(group.get("replicas") or group.get("minReplicas") or 0))
        for group in spec.get("workerGroupSpecs") or []
    ]
    return requested_resources([node(spec.get("headGroupSpec", {}).get("template", {}), 1), *groups])


def pod_problems(pods: Iterable[Mapping[str, Any]]) -> tuple[bool, list[str]]:
    """(fatal, reasons) from a cluster's pods: unschedulable pods and containers stuck waiting."""
    fatal, reasons = False, []
    for pod in pods:
        name = pod["metadata"]["name"]
        status = pod.get("status") or {}
        scheduled = _conditions(status).get("PodScheduled")
        if scheduled is not None and scheduled.get("status") == "False":
            reasons.append(f"pod {name} {_describe_condition(scheduled) or 'not scheduled'}")
        for container in status.get("containerStatuses") or []:
            waiting = (container.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in REPORTED_WAITING_REASONS:
                fatal = fatal or waiting["reason"] in FATAL_WAITING_REASONS
                reasons.append(f"pod {name} container {container.get('name')}: {_describe_condition(waiting)}")
    return fatal, reasons


def cluster_info(
    obj: Mapping[str, Any], backend: str, dashboard_url: str | None, pods: Iterable[Mapping[str, Any]] = ()
) -> ClusterInfo:
    """A RayCluster as :class:`ClusterInfo` (``pods``: its pods, read only while it is not ready)."""
    metadata, status = obj["metadata"], obj.get("status") or {}
    conditions = _conditions(status)
    annotations = metadata.get("annotations") or {}
    message = status.get("reason") or None
    failure = conditions.get("ReplicaFailure")
    if _is_true(failure) or status.get("state") == "failed":
        state = ClusterState.FAILED
        message = _describe_condition(failure) if failure else message
    elif _is_true(conditions.get("HeadPodReady")) and (
        _is_true(conditions.get("RayClusterProvisioned")) or status.get("state") == "ready"
    ):
        state = ClusterState.READY
    else:
        state = ClusterState.PROVISIONING
        details = []
        if obj.get("spec", {}).get("suspend") or _is_true(conditions.get("RayClusterSuspended")):
            details.append("suspended (waiting to be admitted)")
        head = conditions.get("HeadPodReady")
        if head is not None and _describe_condition(head):
            details.append(f"head: {_describe_condition(head)}")
        fatal, reasons = pod_problems(pods)
        details.extend(reasons)
        if fatal:
            state = ClusterState.FAILED
        message = "; ".join(details) or message or "waiting for KubeRay to create the head pod"
    created = parse_time(metadata.get("creationTimestamp"))
    return ClusterInfo(
        name=metadata["name"],
        backend=backend,
        state=state,
        dashboard_url=dashboard_url,
        labels=dict(metadata.get("labels") or {}),
        resources=_requested(obj.get("spec") or {}),
        created_at=created,
        last_active_at=parse_time(annotations.get(LAST_ACTIVE_ANNOTATION)) or created,
        message=message,
        leases=leases_from_mapping(json.loads(annotations.get(LEASES_ANNOTATION) or "{}")),
        spec=json.loads(annotations[CLUSTER_SPEC_ANNOTATION]) if CLUSTER_SPEC_ANNOTATION in annotations else None,
    )


def job_state(status: Mapping[str, Any]) -> JobState:
    """Ray's job status where KubeRay reports one; KubeRay's deployment status where it decides alone."""
    deployment = status.get("jobDeploymentStatus")
    job_status = status.get("jobStatus")
    if job_status in _RAY_JOB_STATES and JobState(job_status).is_terminal:
        return JobState(job_status)
    if deployment in ("Failed", "ValidationFailed"):
        return JobState.FAILED  # e.g. SubmissionFailed, DeadlineExceeded: Ray never ended it itself
    if deployment == "Suspended":
        return JobState.STOPPED
    if job_status in _RAY_JOB_STATES:
        return JobState(job_status)
    return JobState.PENDING


def job_info(obj: Mapping[str, Any]) -> JobInfo:
    """A RayJob as :class:`JobInfo`; the failure reason is KubeRay's ``reason`` and ``message``."""
    spec, status = obj.get("spec") or {}, obj.get("status") or {}
    metadata = obj["metadata"]
    selector = (spec.get("clusterSelector") or {}).get("ray.io/cluster")
    reason, message = status.get("reason"), status.get("message")
    return JobInfo(
        submission_id=spec.get("jobId") or metadata["name"],
        cluster_name=status.get("rayClusterName") or selector or (metadata.get("labels") or {}).get(CLUSTER_LABEL, ""),
        state=job_state(status),
        entrypoint=spec.get("entrypoint", ""),
        message=": ".join(part for part in (reason, message) if part) or None,
        error_type=reason,
        metadata=dict(spec.get("metadata") or {}),
        start_time=parse_time(status.get("startTime")),
        end_time=parse_time(status.get("endTime")),
    )
