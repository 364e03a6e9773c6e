"""Operators: create or reuse a Ray cluster, delete one, run a Ray job.

The lifecycle, after the Databricks and cncf-kubernetes providers: identifiers go to XCom before any
wait or deferral; a retry reattaches to the job its task already submitted (the Ray
``submission_id`` is derived from dag_id, task_id, run_id and map_index, never the try number); a
job that finished FAILED is resubmitted, under a new id recorded in the job's metadata, only on a
real retry; ``on_kill`` stops the job (and the task's ephemeral cluster); waits are deferrable.

The operators only orchestrate Airflow (XCom, deferral, extra links, the task log); every decision
about the job is :class:`~airflow_ray_platform.runs.job_run.RayJobRun`'s, shared with the trigger and the
sensor.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import timedelta
from functools import cached_property
from pathlib import Path
from typing import Any

from airflow.exceptions import AirflowException
from airflow.sdk import BaseOperator, Context
from airflow.sdk.exceptions import AirflowFailException

from airflow_ray_platform import settings
from airflow_ray_platform.backends import validate_configuration_offline
from airflow_ray_platform.backends.base import ClusterInfo, ClusterState, RayBackend
from airflow_ray_platform.hooks.ray import RayHook
from airflow_ray_platform.links import RayDashboardLink, RayJobRecordLink
from airflow_ray_platform.maintenance.leases import DagRunLiveness, release_and_delete
from airflow_ray_platform.records.lifecycle import LifecycleRecorder
from airflow_ray_platform.runs.cluster import resolve_cluster, shared_cluster, wait_for_cluster
from airflow_ray_platform.runs.events import ClusterEvent, JobEvent
from airflow_ray_platform.runs.job_run import RayJobRun
from airflow_ray_platform.spec.models import (
    JobConfiguration,
    JobConfigurationError,
    load_job_configuration,
    validate_cluster_name,
)
from airflow_ray_platform.spec.naming import (
    XCOM_BACKEND,
    XCOM_CLUSTER_NAME,
    XCOM_DASHBOARD_LINK,
    XCOM_DASHBOARD_URL,
    XCOM_SUBMISSION_ID,
    TaskIdentity,
)
from airflow_ray_platform.spec.results import JobResult
from airflow_ray_platform.tenancy.authorization import Action, AuditEntry, Verdict
from airflow_ray_platform.tenancy.policy import Actor, PolicyViolation, configured_policy
from airflow_ray_platform.triggers.ray import JobWaitRole, RayClusterTrigger, RayJobTrigger

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
    """Fail at DAG parse, naming the field (a configuration Jinja must render first is left to task start).

    With ``[ray_platform] validate_kuberay_manifests``, also the KubeRay manifests it renders.
    """
    config = load_job_configuration(job_configuration)
    if settings.validate_kuberay_manifests():
        validate_configuration_offline("kuberay", config)


def _seconds(value: timedelta | float | None) -> float | None:
    return value.total_seconds() if isinstance(value, timedelta) else value


@contextmanager
def _configuration_errors_fail_the_task() -> Iterator[None]:
    """A configuration error found at task start (after Jinja rendered it) fails the task at once: a
    retry would render the same configuration and fail the same way, so no retry is spent on it."""
    try:
        yield
    except JobConfigurationError as error:
        raise AirflowFailException(str(error)) from None


def _in_task_wait(operator: _RayOperator) -> float | None:
    """How long an operator waits in its task: a blocking one all along (None); a deferrable one looks
    once (0) and defers at once unless the wait already ended, so it holds a worker slot for no fixed
    time. What Airflow 3.3.2 needs after a deferral is held by the trigger instead (``not_before``,
    ``settings.deferral_settle_seconds``)."""
    return 0.0 if operator.deferrable else None


class _RecordingOperator(BaseOperator):
    """Operators that record lifecycle transitions in the state store (never failing over it).

    :param state_store_conn_id: the state store's connection (default ``[ray_platform]
        state_store_conn_id``, else the embedded SQLite file).
    :param log_storage_uri: where finished jobs' driver logs go (default ``[ray_platform]
        log_storage_uri``, else ``file://`` under the local backend's root).
    """

    def __init__(
        self, *, state_store_conn_id: str | None = None, log_storage_uri: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.state_store_conn_id = state_store_conn_id or settings.state_store_conn_id()
        self.log_storage_uri = log_storage_uri or settings.log_storage_uri()

    @cached_property
    def recorder(self) -> LifecycleRecorder:
        return LifecycleRecorder(self.state_store_conn_id, self.log_storage_uri)


class _RayOperator(_RecordingOperator):
    """Shared: the connection, the configuration, and pushing what the UI and downstream tasks need.

    :param job_configuration: a dict, a YAML/JSON file path or a ``JobConfiguration`` (templated).
    :param ray_conn_id: the ``ray`` connection naming the backend (templated).
    :param deferrable: wait in the triggerer (default ``[operators] default_deferrable``).
    :param poll_interval: seconds between status checks while waiting without a watch.
    """

    template_fields: Sequence[str] = ("job_configuration", "ray_conn_id")
    template_fields_renderers = {"job_configuration": "json"}
    operator_extra_links = (RayDashboardLink(),)

    def __init__(
        self,
        *,
        job_configuration: JobConfigurationArg,
        ray_conn_id: str = RayHook.default_conn_name,
        deferrable: bool = settings.default_deferrable(),
        poll_interval: float = 2.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if not _is_templated(job_configuration):  # else Jinja renders it first: checked at task start
            _validate_at_parse(self._as_run(job_configuration))
        self.job_configuration = job_configuration
        self.ray_conn_id = ray_conn_id
        self.deferrable = deferrable
        self.poll_interval = poll_interval
        self._actor: Actor | None = None

    @cached_property
    def backend(self) -> RayBackend:
        """The connection's backend, acting as this task (authorized and audited)."""
        return RayHook(self.ray_conn_id, actor=self._actor, recorder=self.recorder).backend

    def _as_run(self, job_configuration: JobConfigurationArg) -> JobConfigurationArg:
        """The configuration as this operator runs it (``@task.ray`` adds its driver to the job)."""
        return job_configuration

    @cached_property
    def config(self) -> JobConfiguration:
        return load_job_configuration(self._as_run(self.job_configuration))

    def _admit(self, context: Context, *, check_configuration: bool = True) -> None:
        """Who this task acts as, and whether the platform policy lets its configuration run (its team,
        ceilings, allow-lists): at every entry point, before anything is created, run or deleted. Once
        its work ran (a resumed task reporting it), the configuration is not judged again: a policy
        tightened meanwhile must not fail a job that already ended."""
        policy = configured_policy()
        try:
            self._actor = Actor.for_task(context, policy, self.config.team)
            if policy is not None and not self._actor.cleanup and check_configuration:
                assert self._actor.team is not None
                policy.check_configuration(self._actor.team, self.config)
        except PolicyViolation as refused:
            ti = context["ti"]
            actor = self._actor or Actor(None, TaskIdentity.from_context(context), int(ti.try_number or 1))
            verdict = Verdict(False, str(refused))
            self.recorder.audit(AuditEntry(actor, Action.RUN, "policy", self.config.cluster_name, None, verdict))
            raise

    def _acting_as(self) -> dict[str, Any] | None:
        """The actor a trigger carries, so that its calls act as this task."""
        return None if self._actor is None else self._actor.to_dict()

    def _push_cluster(self, context: Context, info: ClusterInfo) -> dict[str, Any]:
        result = {XCOM_CLUSTER_NAME: info.name, XCOM_DASHBOARD_URL: info.dashboard_url, XCOM_BACKEND: info.backend}
        ti = context["ti"]
        for key, value in result.items():
            ti.xcom_push(key=key, value=value)
        ti.xcom_push(key=XCOM_DASHBOARD_LINK, value=info.dashboard_url)
        return result

    def _startup_timeout(self) -> float:
        return self.config.lifecycle.startup_timeout.total_seconds()

    def _await_cluster(self, name: str, interval: float, method_name: str, *, ephemeral: bool = False) -> ClusterInfo:
        """The cluster once ready: waited for in the task (all along, or one look when deferrable), then in
        the triggerer, resuming in ``method_name``. The one place a cluster wait defers."""
        deadline = time.time() + self._startup_timeout()
        ready = wait_for_cluster(self.backend, name, self._startup_timeout(), interval, within=_in_task_wait(self))
        if ready is None:
            self.defer(
                trigger=RayClusterTrigger(
                    ray_conn_id=self.ray_conn_id,
                    cluster_name=name,
                    timeout_at=deadline,
                    startup_timeout=self._startup_timeout(),
                    poll_interval=interval,
                    ephemeral_cluster=ephemeral,
                    not_before=time.time() + settings.deferral_settle_seconds(),
                    actor=self._acting_as(),
                    state_store_conn_id=self.state_store_conn_id,
                ),
                method_name=method_name,
            )
        assert ready is not None
        return ready


class RayClusterOperator(_RayOperator):
    """Create (or get, by name) the Ray cluster a ``job_configuration`` describes, and wait until ready.

    Returns and pushes to XCom ``cluster_name``, ``dashboard_url`` and ``backend``. With a
    configuration that only names a cluster, the cluster must exist; nothing is created.

    :param job_configuration: a dict, a YAML/JSON file path or a ``JobConfiguration`` (templated).
    :param ray_conn_id: the ``ray`` connection naming the backend (templated).
    :param wait_for_ready: wait until Ray's readiness probes pass (else return once requested).
    :param deferrable: wait in the triggerer (default ``[operators] default_deferrable``).
    :param poll_interval: seconds between status checks while waiting without a watch.
    :param state_store_conn_id: the state store's connection (default: ``[ray_platform]``, else SQLite).
    :param log_storage_uri: where finished jobs' driver logs go (default: ``[ray_platform]``).
    """

    def __init__(self, *, wait_for_ready: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.wait_for_ready = wait_for_ready

    def execute(self, context: Context) -> dict[str, Any]:
        with _configuration_errors_fail_the_task():
            config = self.config
            self._admit(context)
            name = config.cluster_name
            info = shared_cluster(self.backend, config, TaskIdentity.from_context(context), self.recorder)
        self.log.info("Ray cluster %r on backend %r: %s", name, info.backend, info.state)
        result = self._push_cluster(context, info)
        if not self.wait_for_ready or info.state == ClusterState.READY:
            return result
        ready = self._await_cluster(name, self.poll_interval, "execute_complete")
        self.recorder.cluster_seen(ready)
        self.log.info("Ray cluster %r is ready: %s", name, info.dashboard_url)
        return result

    def execute_complete(self, context: Context, event: dict[str, Any]) -> dict[str, Any]:
        self._admit(context, check_configuration=False)
        cluster = ClusterEvent.from_dict(event)
        if not cluster.succeeded:
            raise AirflowException(cluster.message)
        info = self.backend.describe_cluster(cluster.cluster_name)
        if info is not None:
            self.recorder.cluster_seen(info)
        return {
            XCOM_CLUSTER_NAME: cluster.cluster_name,
            XCOM_DASHBOARD_URL: cluster.dashboard_url,
            XCOM_BACKEND: self.backend.name,
        }


class RayClusterDeleteOperator(_RecordingOperator):
    """Release this DAG run's lease on a shared Ray cluster, and delete it if nobody else needs it.

    The cluster is deleted only when this run held a lease on it and no other running DAG run holds
    one and no job is pending or running, checked atomically with the delete (the cleanup DAG's
    compare-and-delete). Otherwise the task logs who still holds it and leaves it to the last holder's
    teardown or the cleanup DAG's idle timeout; that is not a failure. Meant as a teardown task
    (``.as_teardown()``). A cluster already gone is not an error. Returns whether it deleted.

    :param cluster_name: the cluster to release and delete (templated).
    :param ray_conn_id: the ``ray`` connection naming the backend (templated).
    :param force: delete unconditionally, whoever holds it and whatever runs on it (logged as such).
    :param state_store_conn_id: the state store's connection (default: ``[ray_platform]``, else SQLite).
    :param log_storage_uri: unused here; accepted like every operator of this provider.
    """

    template_fields: Sequence[str] = ("cluster_name", "ray_conn_id")

    def __init__(
        self, *, cluster_name: str, ray_conn_id: str = RayHook.default_conn_name, force: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.cluster_name = cluster_name
        self.ray_conn_id = ray_conn_id
        self.force = force

    def execute(self, context: Context) -> bool:
        validate_cluster_name(self.cluster_name, "cluster_name")
        ti = context["ti"]
        teardown = release_and_delete(
            RayHook(self.ray_conn_id, recorder=self.recorder).backend,
            self.cluster_name,
            dag_id=ti.dag_id,
            run_id=ti.run_id,
            lease_is_live=DagRunLiveness.from_task_instance(ti),
            force=self.force,
            recorder=self.recorder,
            deleted_by=f"{self.task_id} (RayClusterDeleteOperator)",
        )
        log = self.log.warning if self.force and teardown.deleted else self.log.info
        log("Ray cluster %r: %s", self.cluster_name, teardown.reason)
        return teardown.deleted


class RayJobOperator(_RayOperator):
    """Run the ``job`` of a ``job_configuration`` as a Ray job; return what it handed back, else its
    ``submission_id``.

    A job hands a JSON value back by printing one marked line on its driver's stdout
    (:func:`airflow_ray_platform.spec.results.hand_back`): it becomes the task's ``return_value``, and is
    kept with the job's record, so a retry that reattaches gets it without running the job again. The
    submission id is always in XCom under ``submission_id``.

    Where the job runs, in order: ``cluster_name`` (e.g. ``RayClusterOperator``'s XCom), else
    ``job_configuration.cluster`` when it only names a cluster, else a cluster created from the
    spec: with ``lifecycle.cleanup`` ``always`` (the default) an ephemeral cluster of this task
    alone, deleted when the job ends (``on_success``: kept after a failure, for debugging); with
    ``never``, the named cluster ``cluster.name`` (or ``name``), created if missing, leased and kept.
    A configuration error (after Jinja rendered it) fails the task without retries.

    :param job_configuration: a dict, a YAML/JSON file path or a ``JobConfiguration`` (templated).
    :param ray_conn_id: the ``ray`` connection naming the backend (templated).
    :param cluster_name: run on this existing cluster (templated).
    :param wait_for_completion: wait for a terminal state (else return once submitted).
    :param get_logs: stream the job's driver log into the task log while it runs.
    :param timeout: stop the job and fail after this long (defaults to ``job.timeout``).
    :param deferrable: wait in the triggerer (default ``[operators] default_deferrable``).
    :param poll_interval: seconds between status checks while waiting without a watch.
    :param state_store_conn_id: the state store's connection (default: ``[ray_platform]``, else SQLite).
    :param log_storage_uri: where the finished job's driver log goes (default: ``[ray_platform]``).
    """

    template_fields: Sequence[str] = ("job_configuration", "ray_conn_id", "cluster_name")
    operator_extra_links = (RayDashboardLink(), RayJobRecordLink())

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
        self._run: RayJobRun | None = None

    def _job_run(self, cluster_name: str, ephemeral: bool, **progress: Any) -> RayJobRun:
        self._run = RayJobRun(
            self.backend,
            cluster_name,
            ephemeral_cluster=ephemeral,
            recorder=self.recorder,
            config=self.config,
            log=self.log,
            **progress,
        )
        return self._run

    # ------------------------------------------------------------ execute
    def execute(self, context: Context) -> Any:
        with _configuration_errors_fail_the_task():
            self._admit(context)
            self.config.required_job()
            finished = self.recorder.finished_job(TaskIdentity.from_context(context))
            if finished is not None:
                return self._already_finished(context, finished)
            cluster = resolve_cluster(
                self.backend,
                self.config,
                TaskIdentity.from_context(context),
                cluster_name=self.cluster_name,
                recorder=self.recorder,
            )
        info, ephemeral = cluster.info, cluster.ephemeral
        self._job_run(info.name, ephemeral)
        self._push_cluster(context, info)
        if info.state != ClusterState.READY:
            self.log.info("Waiting for Ray cluster %r (%s)", info.name, info.state)
            try:
                interval = min(self.poll_interval, 1.0)
                self._await_cluster(info.name, interval, "execute_after_cluster_ready", ephemeral=ephemeral)
            except Exception:  # deferring is not an Exception: the cluster goes only when its start failed
                self._cleanup_cluster(failed=True)
                raise
        return self._submit_and_wait(context)

    def execute_after_cluster_ready(self, context: Context, event: dict[str, Any]) -> Any:
        self._admit(context)
        cluster = ClusterEvent.from_dict(event)
        self._job_run(cluster.cluster_name, cluster.ephemeral_cluster)
        if not cluster.succeeded:
            self._cleanup_cluster(failed=True)
            raise AirflowException(cluster.message)
        return self._submit_and_wait(context)

    def _submit_and_wait(self, context: Context) -> Any:
        run = self._run
        assert run is not None
        try:
            info = run.submit_or_reattach(TaskIdentity.from_context(context), int(context["ti"].try_number or 1))
            ti = context["ti"]
            ti.xcom_push(key=XCOM_SUBMISSION_ID, value=info.submission_id)
            job_url = self.backend.job_dashboard_url(info.cluster_name, info.submission_id)
            if job_url:
                ti.xcom_push(key=XCOM_DASHBOARD_LINK, value=job_url)
                self.log.info("Ray dashboard: %s", job_url)
            if not self.wait_for_completion:
                return info.submission_id
            run.start_clock(_seconds(self.timeout))
            event = run.wait(
                info, poll_interval=self.poll_interval, stream_logs=self.get_logs, within=_in_task_wait(self)
            )
        except Exception:  # a submit or a wait that raised: this task's own cluster goes with it, as on failure
            self._cleanup_cluster(failed=True)
            raise
        if event is None:
            self.defer(
                trigger=RayJobTrigger(
                    ray_conn_id=self.ray_conn_id,
                    cluster_name=info.cluster_name,
                    submission_id=info.submission_id,
                    poll_interval=self.poll_interval,
                    timeout_at=run.timeout_at,
                    stream_logs=self.get_logs,
                    log_offset=run.log_offset,
                    utilisation=run.utilisation.to_dict(),
                    ephemeral_cluster=run.ephemeral_cluster,
                    state_store_conn_id=self.state_store_conn_id,
                    role=JobWaitRole.SUBMITTER,
                    log_storage_uri=self.log_storage_uri,
                    not_before=time.time() + settings.deferral_settle_seconds(),
                    actor=self._acting_as(),
                ),
                method_name="execute_complete",
            )
        assert event is not None
        return self._finish(event)

    def execute_complete(self, context: Context, event: dict[str, Any]) -> Any:
        self._admit(context, check_configuration=False)
        job = JobEvent.from_dict(event)
        if not job.finished or job.ephemeral_cluster:  # else nothing is left to ask the backend
            self._job_run(
                job.cluster_name, job.ephemeral_cluster, submission_id=job.submission_id, log_offset=job.log_offset
            )
        return self._finish(job)

    def _finish(self, event: JobEvent) -> Any:
        """Record the end and persist the log (unless the trigger did), remove an ephemeral cluster, fail
        the task with the job's own error text; else return what the job handed back."""
        if event.finished:
            result = JobResult.from_dict(event.result)
        else:
            run = self._run
            assert run is not None
            run.conclude(event, stream_logs=self.get_logs)  # the log written after the last check, then records
            result = run.result
        self._cleanup_cluster(failed=not event.succeeded)
        if not event.succeeded:
            raise AirflowException(event.failure)
        self.log.info("Ray job %r succeeded", event.submission_id)
        return self._returned(event.submission_id, result)

    def _already_finished(self, context: Context, job: dict[str, Any]) -> Any:
        """A try of a task whose Ray job succeeded and was recorded (a worker died after the job ended, its
        cluster perhaps gone with it): the recorded result, and nothing runs again."""
        self.log.info(
            "Ray job %r of this task already succeeded (recorded at %s): its result is reused, nothing runs again",
            job["submission_id"],
            job["ended_at"],
        )
        context["ti"].xcom_push(key=XCOM_SUBMISSION_ID, value=job["submission_id"])
        return self._returned(job["submission_id"], JobResult.from_dict(job["result"]))

    def _returned(self, submission_id: str, result: JobResult) -> Any:
        """The task's ``return_value``: the job's result (:func:`~airflow_ray_platform.spec.results.hand_back`),
        else its submission id. A refused result fails the task without retries: the job would hand the
        same back again."""
        if result.refused is not None:
            raise AirflowFailException(f"Ray job {submission_id!r} succeeded, but {result.refused}")
        return result.value if result.present else submission_id

    def _cleanup_cluster(self, *, failed: bool) -> None:
        if self._run is not None:
            self._run.end_cluster(succeeded=not failed)

    def on_kill(self) -> None:
        """Stop the running job, and remove this task's ephemeral cluster."""
        run = self._run
        if run is None:
            return
        if run.submission_id is not None:
            self.log.info("Stopping Ray job %r", run.submission_id)
            run.stop_and_record()
        if run.ephemeral_cluster:
            run.delete_killed_tasks_cluster()
