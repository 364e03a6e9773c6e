"""``RayJobSensor``: wait for a Ray job someone else submitted to reach a terminal state."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from airflow.exceptions import AirflowException
from airflow.sdk import BaseSensorOperator, Context

from airflow_ray_platform import settings
from airflow_ray_platform.backends.retries import transient_faults
from airflow_ray_platform.hooks.ray import RayHook, current_actor
from airflow_ray_platform.runs.events import JobEvent
from airflow_ray_platform.runs.job_run import RayJobRun
from airflow_ray_platform.spec.models import validate_cluster_name
from airflow_ray_platform.tenancy.policy import configured_policy
from airflow_ray_platform.triggers.ray import JobWaitRole, RayJobTrigger


class RayJobSensor(BaseSensorOperator):
    """Succeed when the job SUCCEEDED; fail with the job's message when it FAILED or was STOPPED.

    Killing the sensor never stops the job: the sensor only watches.

    :param submission_id: the job (templated, e.g. ``{{ ti.xcom_pull('train', key='submission_id') }}``).
    :param cluster_name: the cluster it runs on (templated).
    :param ray_conn_id: the ``ray`` connection naming the backend (templated).
    :param deferrable: wait in the triggerer (default ``[operators] default_deferrable``); the trigger
        polls every ``poke_interval`` and ends at the sensor's ``timeout``.
    """

    template_fields: Sequence[str] = ("submission_id", "cluster_name", "ray_conn_id")

    def __init__(
        self,
        *,
        submission_id: str,
        cluster_name: str,
        ray_conn_id: str = RayHook.default_conn_name,
        deferrable: bool = settings.default_deferrable(),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.submission_id = submission_id
        self.cluster_name = cluster_name
        self.ray_conn_id = ray_conn_id
        self.deferrable = deferrable

    def poke(self, context: Context) -> bool:
        validate_cluster_name(self.cluster_name, "cluster_name")
        run = RayJobRun(RayHook(self.ray_conn_id).backend, self.cluster_name, self.submission_id, log=self.log)
        # Passing backend faults tolerated as every wait tolerates them (a dashboard restarting).
        event, _ = transient_faults(min(float(self.poke_interval), 2.0), self.log)(run.poll, stream_logs=False)
        if event is None:
            self.log.info("Ray job %r is still running", self.submission_id)
            return False
        return self._outcome(event)

    def _outcome(self, event: JobEvent) -> bool:
        if not event.succeeded:
            raise AirflowException(event.failure)
        self.log.info("Ray job %r succeeded", event.submission_id)
        return True

    def execute(self, context: Context) -> Any:
        if not self.deferrable:
            return super().execute(context)
        if not self.poke(context):
            timeout_at = None
            if self.timeout:
                seconds = self.timeout.total_seconds() if isinstance(self.timeout, timedelta) else self.timeout
                timeout_at = context["ti"].start_date.timestamp() + seconds if context["ti"].start_date else None
            self.defer(
                trigger=RayJobTrigger(
                    ray_conn_id=self.ray_conn_id,
                    cluster_name=self.cluster_name,
                    submission_id=self.submission_id,
                    poll_interval=float(self.poke_interval),
                    timeout_at=timeout_at,
                    stream_logs=False,
                    role=JobWaitRole.WATCHER,
                    actor=current_actor(configured_policy()).to_dict(),
                ),
                method_name="execute_complete",
            )
        return None

    def execute_complete(self, context: Context, event: dict[str, Any]) -> None:
        self._outcome(JobEvent.from_dict(event))
