"""Operators: create or reuse a Ray cluster, delete one, run a Ray job.

The lifecycle, after the Databricks and cncf-kubernetes providers: identifiers go to XCom before any
wait or deferral; a retry reattaches to the job its task already submitted (the Ray
``submission_id`` is derived from dag_id, task_id, run_id and map_index, never the try number); a
job that finished FAILED is resubmitted, under a new id recorded in the job's metadata, only on a
real retry; ``on_kill`` stops the job (and the task's ephemeral cluster); waits are deferrable.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from datetime import timedelta
from functools import cached_property
from pathlib import Path
from typing import Any

from airflow.configuration import conf
from airflow.exceptions import AirflowException
from airflow.sdk import BaseOperator, Context

from airflow_ray_platform.backends.base import ClusterInfo, ClusterState, JobInfo, JobState
from airflow_ray_platform.config import JobConfiguration, load_job_configuration
from airflow_ray_platform.hooks.ray import RayHook
from airflow_ray_platform.lifecycle import LifecycleRecorder, stop_job_and_record, stopped_job
from airflow_ray_platform.links import RayDashboardLink
from airflow_ray_platform.naming import (
    TASK_KEY_METADATA,
    TRY_NUMBER_METADATA,
    TaskIdentity,
    cluster_labels,
)
from airflow_ray_platform.triggers.ray import RayClusterTrigger, RayJobTrigger, job_event
from airflow_ray_platform.utilisation import Utilisation

JobConfigurationArg = JobConfiguration | Mapping[str, Any] | str | Path


def _is_templated(value: Any) -> bool:
    if isinstance(value, str):
        return "{{" in value or "{%" in value
    if isinstance(value, Mapping):
        return any(_is_templated(v) for v in value.values())
    if isinstance(value, list | tuple):
        return any(_is_templated(v) for v in value)
    return False


def _validate_at_parse(job_configuration: JobConfigurationArg) -> None:
    """Fail at DAG parse, naming the field, unless Jinja must render the configuration first.

    With ``[ray_platform] validate_kuberay_manifests``, also the KubeRay manifests it renders.
    """
    if _is_templated(job_configuration):
        return
    config = load_job_configuration(job_configuration)
    if conf.getboolean("ray_platform", "validate_kuberay_manifests", fallback=False):
        from airflow_ray_platform.backends.kuberay.manifests import validate_configuration_manifests

        validate_configuration_manifests(config)


def _seconds(value: timedelta | float | None) -> float | None:
    return value.total_seconds() if isinstance(value, timedelta) else value


def _platform_option(key: str) -> str | None:
    """``[ray_platform] <key>`` from Airflow's configuration; unset means the embedded default."""
    return conf.get("ray_platform", key, fallback=None) or None


class _RecordingOperator(BaseOperator):
    """Operators that record lifecycle transitions in the state store (never failing over it)."""

    def __init__(
        self, *, state_store_conn_id: str | None = None, log_storage_uri: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.state_store_conn_id = state_store_conn_id or _platform_option("state_store_conn_id")
        self.log_storage_uri = log_storage_uri or _platform_option("log_storage_uri")

    @cached_property
    def recorder(self) -> LifecycleRecorder:
        return LifecycleRecorder(self.state_store_conn_id, self.log_storage_uri)


class _RayOperator(_RecordingOperator):
    """Shared: the connection, the configuration, and pushing what the UI and downstream tasks need."""

    template_fields: Sequence[str] = ("job_configuration", "ray_conn_id")
    operator_extra_links = (RayDashboardLink(),)

    def __init__(
        self,
        *,
        job_configuration: JobConfigurationArg,
        ray_conn_id: str = RayHook.default_conn_name,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        poll_interval: float = 2.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        _validate_at_parse(job_configuration)
        self.job_configuration = job_configuration
        self.ray_conn_id = ray_conn_id
        self.deferrable = deferrable
        self.poll_interval = poll_interval

    @cached_property
    def hook(self) -> RayHook:
        return RayHook(self.ray_conn_id)

    @cached_property
    def config(self) -> JobConfiguration:
        return load_job_configuration(self.job_configuration)

    def _labels(self, context: Context, *, ephemeral: bool) -> dict[str, str]:
        cluster = self.config.cluster
        return cluster_labels(
            owner=self.config.owner,
            team=self.config.team,
            idle_timeout_seconds=int(cluster.idle_timeout.total_seconds()),
            max_lifetime_seconds=int(cluster.max_lifetime.total_seconds()),
            identity=TaskIdentity.from_context(context),
            ephemeral=ephemeral,
            extra=cluster.labels,
        )

    def _push_cluster(self, context: Context, info: ClusterInfo) -> dict[str, Any]:
        result = {"cluster_name": info.name, "dashboard_url": info.dashboard_url, "backend": info.backend}
        ti = context["ti"]
        for key, value in result.items():
            ti.xcom_push(key=key, value=value)
        ti.xcom_push(key=RayDashboardLink().xcom_key, value=info.dashboard_url)
        return result

    def _startup_timeout(self) -> float:
        return self.config.lifecycle.startup_timeout.total_seconds()

    def _record_cluster(self, name: str) -> ClusterInfo | None:
        info = self.hook.describe_cluster(name)
        if info is not None:
            self.recorder.cluster_seen(info)
        return info


class RayClusterOperator(_RayOperator):
    """Create (or get, by name) the Ray cluster a ``job_configuration`` describes, and wait until ready.

    Returns and pushes to XCom ``cluster_name``, ``dashboard_url`` and ``backend``. With a
    configuration that only names a cluster, the cluster must exist; nothing is created.
    """

    def __init__(self, *, wait_for_ready: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.wait_for_ready = wait_for_ready

    def execute(self, context: Context) -> dict[str, Any]:
        config = self.config
        name = config.cluster_name
        if config.cluster.reuses_existing:
            info = self.hook.describe_cluster(name)
            if info is None:
                raise AirflowException(
                    f"job_configuration.cluster.name: Ray cluster {name!r} does not exist on backend "
                    f"{self.hook.backend.name!r} (a configuration with only a name reuses, never creates)"
                )
        else:
            info = self.hook.create_or_get_cluster(name, config.cluster, self._labels(context, ephemeral=False))
            self.recorder.cluster_seen(info, requested=True)
        self.log.info("Ray cluster %r on backend %r: %s", name, info.backend, info.state)
        result = self._push_cluster(context, info)
        if not self.wait_for_ready or info.state == ClusterState.READY:
            return result
        if self.deferrable:
            self.defer(
                trigger=RayClusterTrigger(
                    ray_conn_id=self.ray_conn_id,
                    cluster_name=name,
                    timeout_at=time.time() + self._startup_timeout(),
                    startup_timeout=self._startup_timeout(),
                    poll_interval=self.poll_interval,
                ),
                method_name="execute_complete",
            )
        ready = self.hook.wait_for_cluster(name, self._startup_timeout(), self.poll_interval)
        self.recorder.cluster_seen(ready)
        self.log.info("Ray cluster %r is ready: %s", name, info.dashboard_url)
        return result

    def execute_complete(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        if event["status"] != "success":
            raise AirflowException(event["message"])
        self._record_cluster(event["cluster_name"])
        return {
            "cluster_name": event["cluster_name"],
            "dashboard_url": event["dashboard_url"],
            "backend": self.hook.backend.name,
        }


class RayClusterDeleteOperator(_RecordingOperator):
    """Delete a Ray cluster by name (explicit teardown). A cluster already gone is not an error."""

    template_fields: Sequence[str] = ("cluster_name", "ray_conn_id")

    def __init__(self, *, cluster_name: str, ray_conn_id: str = RayHook.default_conn_name, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.cluster_name = cluster_name
        self.ray_conn_id = ray_conn_id

    def execute(self, context: Context) -> bool:
        hook = RayHook(self.ray_conn_id)
        info = hook.describe_cluster(self.cluster_name)
        deleted = hook.delete_cluster(self.cluster_name)
        if deleted and info is not None:
            self.recorder.cluster_deleted(info, f"{self.task_id} (RayClusterDeleteOperator)")
        self.log.info("Ray cluster %r %s", self.cluster_name, "deleted" if deleted else "did not exist")
        return deleted


class RayJobOperator(_RayOperator):
    """Run the ``job`` of a ``job_configuration`` as a Ray job; return its ``submission_id``.

    Where the job runs, in order: ``cluster_name`` (e.g. ``RayClusterOperator``'s XCom), else
    ``job_configuration.cluster`` when it only names a cluster, else a cluster created from the
    spec: with ``lifecycle.shutdown_after_job`` (the default) an ephemeral cluster of this task
    alone, deleted when the job ends (kept after a failure if ``keep_cluster_on_failure``);
    without it, the named cluster ``cluster.name`` (or ``name``), created if missing and kept.

    :param wait_for_completion: wait for a terminal state (else return once submitted).
    :param get_logs: stream the job's driver log into the task log while it runs.
    :param timeout: stop the job and fail after this long (defaults to ``job.timeout``).
    """

    template_fields: Sequence[str] = ("job_configuration", "ray_conn_id", "cluster_name")

    def __init__(
        self,
        *,
        cluster_name: str | None = None,
        wait_for_completion: bool = True,
        get_logs: bool = True,
        timeout: timedelta | float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.cluster_name = cluster_name
        self.wait_for_completion = wait_for_completion
        self.get_logs = get_logs
        self.timeout = timeout
        self._submission_id: str | None = None
        self._target_cluster: str | None = None
        self._ephemeral = False

    # -------------------------------------------------------------- where
    def _job_timeout(self) -> float | None:
        configured = self.config.job.timeout if self.config.job else None
        return _seconds(self.timeout) or _seconds(configured)

    def _resolve_cluster(self, context: Context) -> tuple[ClusterInfo, bool]:
        """(cluster, ephemeral) for this job; creates the cluster when the configuration asks for one."""
        config = self.config
        if self.cluster_name or config.cluster.reuses_existing:
            name = self.cluster_name or config.cluster_name
            info = self.hook.describe_cluster(name)
            if info is None:
                raise AirflowException(f"Ray cluster {name!r} does not exist on backend {self.hook.backend.name!r}")
            return info, False
        ephemeral = config.lifecycle.shutdown_after_job
        identity = TaskIdentity.from_context(context)
        name = identity.ephemeral_cluster_name(config.name) if ephemeral else config.cluster_name
        info = self.hook.create_or_get_cluster(name, config.cluster, self._labels(context, ephemeral=ephemeral))
        self.recorder.cluster_seen(info, requested=True)
        return info, ephemeral

    # ------------------------------------------------------------ execute
    def execute(self, context: Context) -> str | None:
        if self.config.job is None:
            raise AirflowException("job_configuration.job: required by RayJobOperator (entrypoint and options)")
        info, ephemeral = self._resolve_cluster(context)
        self._target_cluster, self._ephemeral = info.name, ephemeral
        self._push_cluster(context, info)
        if info.state != ClusterState.READY:
            self.log.info("Waiting for Ray cluster %r (%s)", info.name, info.state)
            if self.deferrable:
                self.defer(
                    trigger=RayClusterTrigger(
                        ray_conn_id=self.ray_conn_id,
                        cluster_name=info.name,
                        timeout_at=time.time() + self._startup_timeout(),
                        startup_timeout=self._startup_timeout(),
                        poll_interval=min(self.poll_interval, 1.0),
                        ephemeral_cluster=ephemeral,
                    ),
                    method_name="execute_after_cluster_ready",
                )
            try:
                self.hook.wait_for_cluster(info.name, self._startup_timeout(), min(self.poll_interval, 1.0))
            except Exception:
                self._cleanup_cluster(failed=True)
                raise
        return self._submit_and_wait(context)

    def execute_after_cluster_ready(self, context: Context, event: dict[str, Any]) -> str | None:
        self._target_cluster, self._ephemeral = event["cluster_name"], event["ephemeral_cluster"]
        if event["status"] != "success":
            self._cleanup_cluster(failed=True)
            raise AirflowException(event["message"])
        return self._submit_and_wait(context)

    def _submit_or_reattach(self, context: Context) -> JobInfo:
        """Reattach to this task's job if it is running or succeeded; submit only when there is none,
        or when the last one failed on an earlier try (a real retry)."""
        identity = TaskIdentity.from_context(context)
        try_number = int(context["ti"].try_number or 1)
        cluster = self._target_cluster
        assert cluster is not None
        mine = [job for job in self.hook.list_jobs(cluster) if job.metadata.get(TASK_KEY_METADATA) == identity.key]
        latest = max(mine, key=lambda job: int(job.metadata.get(TRY_NUMBER_METADATA, 0)), default=None)
        if latest is not None and (
            latest.state in ("PENDING", "RUNNING", "SUCCEEDED")
            or int(latest.metadata.get(TRY_NUMBER_METADATA, 0)) >= try_number
        ):
            self.log.info(
                "Reattaching to Ray job %r (%s) instead of submitting again",
                latest.submission_id,
                latest.state,
            )
            return latest
        submission_id = identity.submission_id(attempt=1 if latest is None and try_number == 1 else try_number)
        if latest is not None:
            self.log.info(
                "Ray job %r ended %s on an earlier try; submitting try %d as %r",
                latest.submission_id,
                latest.state,
                try_number,
                submission_id,
            )
        metadata = {
            TASK_KEY_METADATA: identity.key,
            TRY_NUMBER_METADATA: str(try_number),
            "airflow_dag_id": identity.dag_id,
            "airflow_task_id": identity.task_id,
            "airflow_run_id": identity.run_id,
            "owner": self.config.owner,
            "team": self.config.team,
        }
        job = self.config.job
        assert job is not None
        info = self.hook.submit_job(cluster, submission_id, job, metadata)
        self.log.info("Submitted Ray job %r to cluster %r", info.submission_id, cluster)
        self._record_job(info, identity, try_number)
        return info

    def _persist_log(self, cluster: ClusterInfo, job: JobInfo) -> None:
        """The whole driver log, kept after the cluster is gone (before an ephemeral one is deleted)."""
        if job.state.is_terminal:
            uri = self.recorder.persist_log(
                cluster, job, lambda: self.hook.stream_job_logs(cluster.name, job.submission_id)
            )
            if uri:
                self.log.info("Ray job %r log persisted to %s", job.submission_id, uri)

    def _record_job(self, job: JobInfo, identity: TaskIdentity | None = None, try_number: int | None = None) -> None:
        assert self._target_cluster is not None
        cluster = self._record_cluster(self._target_cluster)
        if cluster is not None:
            self.recorder.job_seen(cluster, job, identity=identity, config=self.config, try_number=try_number)

    def _submit_and_wait(self, context: Context) -> str | None:
        info = self._submit_or_reattach(context)
        self._submission_id = info.submission_id
        ti = context["ti"]
        ti.xcom_push(key="submission_id", value=info.submission_id)
        job_url = self.hook.job_dashboard_url(info.cluster_name, info.submission_id)
        if job_url:
            ti.xcom_push(key=RayDashboardLink().xcom_key, value=job_url)
            self.log.info("Ray dashboard: %s", job_url)
        if not self.wait_for_completion:
            return info.submission_id
        job_timeout = self._job_timeout()
        timeout_at = None if job_timeout is None else time.time() + job_timeout
        if self.deferrable and not info.state.is_terminal:
            self.defer(
                trigger=RayJobTrigger(
                    ray_conn_id=self.ray_conn_id,
                    cluster_name=info.cluster_name,
                    submission_id=info.submission_id,
                    poll_interval=self.poll_interval,
                    timeout_at=timeout_at,
                    stream_logs=self.get_logs,
                    ephemeral_cluster=self._ephemeral,
                    state_store_conn_id=self.state_store_conn_id,
                ),
                method_name="execute_complete",
            )
        return self._finish(self._wait_blocking(info, timeout_at))

    def _wait_blocking(self, info: JobInfo, timeout_at: float | None) -> dict[str, Any]:
        offset = 0
        utilisation = Utilisation()
        while True:
            if self.get_logs:
                offset = self._log_since(info.submission_id, offset)
            if info.state == JobState.RUNNING:
                utilisation.add(self.hook.sample_utilisation(info.cluster_name))
            if info.state.is_terminal:
                return {**job_event(info, offset), "utilisation": utilisation.to_dict()}
            if timeout_at is not None and time.time() >= timeout_at:
                return {
                    "status": "timeout",
                    "submission_id": info.submission_id,
                    "log_offset": offset,
                    "message": f"job {info.submission_id!r} exceeded its timeout",
                    "utilisation": utilisation.to_dict(),
                }
            time.sleep(self.poll_interval)
            latest = self.hook.get_job_info(info.cluster_name, info.submission_id)
            if latest is None:
                raise AirflowException(f"Ray job {info.submission_id!r} disappeared from cluster {info.cluster_name!r}")
            info = latest

    def _log_since(self, submission_id: str, offset: int) -> int:
        assert self._target_cluster is not None
        text, offset = self.hook.tail_job_logs(self._target_cluster, submission_id, offset)
        for line in text.splitlines():
            self.log.info("[ray job %s] %s", submission_id, line)
        return offset

    def execute_complete(self, context: Context, event: dict[str, Any]) -> str:
        self._target_cluster, self._ephemeral = event["cluster_name"], event["ephemeral_cluster"]
        self._submission_id = event["submission_id"]
        return self._finish(event)

    def _finish(self, event: dict[str, Any]) -> str:
        submission_id = event["submission_id"]
        if self.get_logs and event["status"] in ("success", "failed"):
            self._log_since(submission_id, event.get("log_offset", 0))
        if event["status"] == "timeout":
            self.hook.stop_job(self._target_cluster, submission_id)
        final = self.hook.get_job_info(self._target_cluster, submission_id)
        if event["status"] == "timeout":
            final = stopped_job(final, submission_id, self._target_cluster, "stopped: it exceeded its timeout")
        cluster = self.hook.describe_cluster(self._target_cluster)
        if final is not None and cluster is not None:
            utilisation = Utilisation.from_dict(event.get("utilisation"))
            self.recorder.job_seen(cluster, final, config=self.config, utilisation=utilisation)
            self._persist_log(cluster, final)
        failed = event["status"] != "success"
        self._cleanup_cluster(failed=failed)
        if failed:
            state = event.get("state", event["status"].upper())
            raise AirflowException(f"Ray job {submission_id!r} {state}: {event.get('message') or 'no message'}")
        self.log.info("Ray job %r succeeded", submission_id)
        return submission_id

    def _cleanup_cluster(self, *, failed: bool) -> None:
        if not self._ephemeral or self._target_cluster is None:
            return
        if failed and self.config.lifecycle.keep_cluster_on_failure:
            self.log.warning(
                "Keeping ephemeral Ray cluster %r for debugging (keep_cluster_on_failure); the "
                "cleanup DAG removes it after its idle_timeout",
                self._target_cluster,
            )
            return
        info = self.hook.describe_cluster(self._target_cluster)
        if self.hook.delete_cluster(self._target_cluster) and info is not None:
            self.recorder.cluster_deleted(info, "ephemeral cluster: its job ended")
        self.log.info("Deleted ephemeral Ray cluster %r", self._target_cluster)

    def on_kill(self) -> None:
        """Stop the running job, and remove this task's ephemeral cluster."""
        if self._target_cluster is None:
            return
        if self._submission_id is not None:
            self.log.info("Stopping Ray job %r", self._submission_id)
            stop_job_and_record(
                self.hook,
                self.recorder,
                self._target_cluster,
                self._submission_id,
                "stopped: the task was killed",
                self.config,
            )
        if self._ephemeral:
            self.hook.delete_cluster(self._target_cluster)
