"""Deferrable waits: a Ray cluster becoming ready, a Ray job reaching a terminal state.

Both triggers carry their whole state in ``serialize()`` (connection id, names, deadline, log
offset), so a triggerer restart resumes them where they were. A backend that can wait server-side
(:class:`WatchingBackend`: KubeRay, through one ``kubernetes_asyncio`` watch of the namespace's RayJobs
shared by every job wait of the triggerer, and each job's log followed once) is awaited directly, so
the wait costs a constant number of API calls whatever the number of tasks; any other backend is
polled, each call in a worker thread (``asyncio.to_thread``), job waits through one poll per cluster
shared by every trigger of the triggerer waiting on it (``job_polling``). Either way the triggerer's
event loop is never blocked.
Each trigger acts as its deferred task (``actor``), behind the same authorization. ``cleanup()`` is left
alone on purpose, since it also runs on every triggerer restart; only ``on_kill()`` (a user killing
the task) stops the job and removes a task's ephemeral cluster.
"""

from __future__ import annotations

import asyncio
import enum
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from functools import cache, cached_property
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from airflow_ray_platform.backends.base import BackendError, ClusterState, JobInfo, RayBackend, WatchingBackend
from airflow_ray_platform.backends.retries import async_transient_faults
from airflow_ray_platform.hooks.ray import RayHook
from airflow_ray_platform.records.lifecycle import LifecycleRecorder
from airflow_ray_platform.records.utilisation import Utilisation
from airflow_ray_platform.runs.cluster import cluster_outcome
from airflow_ray_platform.runs.events import ClusterEvent, JobEvent, WaitStatus
from airflow_ray_platform.runs.job_polling import ClusterPoller
from airflow_ray_platform.runs.job_run import SCRAPE_HERE, RayJobRun, log_job_output
from airflow_ray_platform.tenancy.policy import Actor

#: With a watching backend: the longest single wait for a job while its log is streamed (the log is
#: read between waits), and without streaming; and for a cluster, between reads of its pods' reasons.
LOG_STREAM_WINDOW = 10.0
MAX_WATCH_WINDOW = 300.0
CLUSTER_WATCH_WINDOW = 30.0


@cache
def shared_recorder(state_store_conn_id: str | None, log_storage_uri: str | None) -> LifecycleRecorder:
    """One recorder per store for every trigger of this triggerer process: one engine and its small pool,
    not a pool per deferred task (a thousand waiting tasks would otherwise hold a thousand database
    connections)."""
    return LifecycleRecorder(state_store_conn_id, log_storage_uri)


class _RayTrigger(BaseTrigger):
    """Shared plumbing: one hook per trigger instance, blocking calls moved to threads."""

    def __init__(
        self,
        ray_conn_id: str,
        poll_interval: float,
        not_before: float | None = None,
        actor: dict[str, Any] | None = None,
        state_store_conn_id: str | None = None,
    ) -> None:
        super().__init__()
        self.ray_conn_id = ray_conn_id
        self.poll_interval = poll_interval
        self.not_before = not_before
        self.actor = actor
        self.state_store_conn_id = state_store_conn_id

    async def _fire(self, payload: dict[str, Any]) -> TriggerEvent:
        """The event, not sooner than ``not_before`` (epoch seconds; see ``settings.deferral_settle_seconds``)."""
        if self.not_before is not None:
            await asyncio.sleep(max(0.0, self.not_before - time.time()))
        return TriggerEvent(payload)

    @cached_property
    def hook(self) -> RayHook:
        """Built without I/O; its backend (which reads the connection) is first touched in a thread. It acts
        as the deferred task (``actor``), recording decisions where the task records."""
        actor = None if self.actor is None else Actor.from_dict(self.actor)
        return RayHook(self.ray_conn_id, actor=actor, recorder=shared_recorder(self.state_store_conn_id, None))

    async def _backend(self) -> RayBackend:
        return await asyncio.to_thread(lambda: self.hook.backend)  # reads the connection: not on the loop

    def _serialized(self, **state: Any) -> tuple[str, dict[str, Any]]:
        """(classpath, kwargs) with the state every Ray trigger has, plus ``state``."""
        kwargs = {
            "ray_conn_id": self.ray_conn_id,
            "poll_interval": self.poll_interval,
            "not_before": self.not_before,
            "actor": self.actor,
            "state_store_conn_id": self.state_store_conn_id,
            **state,
        }
        return f"{type(self).__module__}.{type(self).__qualname__}", kwargs

    def _window(self, longest: float, timeout_at: float | None) -> float:
        """How long one server-side wait may last: up to ``longest``, never past the deadline."""
        return longest if timeout_at is None else max(0.0, min(longest, timeout_at - time.time()))


class RayClusterTrigger(_RayTrigger):
    """Fires when the cluster is READY, or with the backend's reason when it fails or times out.

    :param ray_conn_id: the ``ray`` connection naming the backend.
    :param cluster_name: the cluster to wait for.
    :param timeout_at: epoch seconds after which the wait fails (the startup deadline).
    :param startup_timeout: the startup timeout in seconds, for the error text.
    :param poll_interval: seconds between checks of a backend that cannot be watched.
    :param not_before: epoch seconds before which the trigger does not fire (the deferral's settling).
    :param ephemeral_cluster: the cluster is the task's own: ``on_kill`` deletes it.
    :param actor: who the deferred task acts as (``Actor.to_dict()``): the trigger's calls are authorized as it.
    :param state_store_conn_id: where decisions (and ``on_kill``'s delete) are recorded (None: the embedded store).
    """

    def __init__(
        self,
        *,
        ray_conn_id: str,
        cluster_name: str,
        timeout_at: float,
        startup_timeout: float,
        poll_interval: float = 1.0,
        ephemeral_cluster: bool = False,
        not_before: float | None = None,
        actor: dict[str, Any] | None = None,
        state_store_conn_id: str | None = None,
    ) -> None:
        super().__init__(ray_conn_id, poll_interval, not_before, actor, state_store_conn_id)
        self.cluster_name = cluster_name
        self.timeout_at = timeout_at
        self.startup_timeout = startup_timeout
        self.ephemeral_cluster = ephemeral_cluster

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return self._serialized(
            cluster_name=self.cluster_name,
            timeout_at=self.timeout_at,
            startup_timeout=self.startup_timeout,
            ephemeral_cluster=self.ephemeral_cluster,
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        backend = await self._backend()
        watching = backend if isinstance(backend, WatchingBackend) else None
        while True:
            try:
                if watching is None:
                    info = await asyncio.to_thread(backend.describe_cluster, self.cluster_name)
                else:
                    window = self._window(CLUSTER_WATCH_WINDOW, self.timeout_at)
                    info = await watching.await_cluster(self.cluster_name, window)
                    if info is not None and info.state == ClusterState.PROVISIONING:  # the pods say why
                        info = await asyncio.to_thread(backend.describe_cluster, self.cluster_name)
                ready = cluster_outcome(
                    self.cluster_name,
                    info,
                    timed_out=time.time() >= self.timeout_at,
                    timeout=self.startup_timeout,
                )
            except BackendError as error:
                yield await self._fire(self._event(WaitStatus.ERROR, message=str(error)).to_dict())
                return
            if ready is not None:
                yield await self._fire(self._event(WaitStatus.SUCCESS, dashboard_url=ready.dashboard_url).to_dict())
                return
            if watching is None:
                await asyncio.sleep(self.poll_interval)

    def _event(self, status: WaitStatus, **fields: Any) -> ClusterEvent:
        return ClusterEvent(status, self.cluster_name, ephemeral_cluster=self.ephemeral_cluster, **fields)

    async def on_kill(self) -> None:
        """A user killed the task while its ephemeral cluster was starting: remove that cluster."""
        if self.ephemeral_cluster:
            backend = await self._backend()
            run = RayJobRun(
                backend, self.cluster_name, recorder=shared_recorder(self.state_store_conn_id, None), log=self.log
            )
            await asyncio.to_thread(run.delete_killed_tasks_cluster)


class JobWaitRole(enum.StrEnum):
    """Who waits on the job, and so what its trigger does besides waiting (a mode, as cncf-kubernetes'
    ``on_finish_action`` is one)."""

    #: The task that submitted the job (``RayJobOperator``): killing the task stops the job, and the trigger
    #: records the job's end and persists its log before it fires.
    SUBMITTER = "submitter"
    #: A task that watches someone else's job (``RayJobSensor``): it never stops the job nor records it.
    WATCHER = "watcher"


class RayJobTrigger(_RayTrigger):
    """Fires when the job is terminal (or its timeout passes), streaming its log into the task log.

    :param ray_conn_id: the ``ray`` connection naming the backend.
    :param cluster_name: the cluster the job runs on.
    :param submission_id: the job.
    :param poll_interval: seconds between checks of a backend that cannot be watched.
    :param not_before: epoch seconds before which the trigger does not fire (the deferral's settling).
    :param timeout_at: epoch seconds after which the wait ends ``timeout`` (None: never).
    :param stream_logs: copy the job's driver log into the task log as it grows.
    :param log_offset: how much of the driver log the task log already holds.
    :param role: who waits (:class:`JobWaitRole`): the submitting task (``on_kill`` stops the job, whose end
        is recorded and log persisted here, before the event), or a sensor that only watches.
    :param ephemeral_cluster: the cluster is the task's own: ``on_kill`` deletes it.
    :param utilisation: the cluster utilisation sampled so far (``Utilisation.to_dict()``).
    :param state_store_conn_id: where the job's end (and ``on_kill``'s stop) is recorded (None: the
        embedded store).
    :param log_storage_uri: where a submitter's trigger persists the driver log (None: the embedded default).
    :param stop_on_kill: what ``role`` replaced, in triggers a running deployment serialized before it:
        False means a watcher.
    :param finish_job: likewise; ignored (a submitter's trigger always finishes the job).
    :param actor: who the deferred task acts as (``Actor.to_dict()``): the trigger's calls are authorized as it.
    """

    def __init__(
        self,
        *,
        ray_conn_id: str,
        cluster_name: str,
        submission_id: str,
        poll_interval: float = 2.0,
        timeout_at: float | None = None,
        stream_logs: bool = True,
        log_offset: int = 0,
        role: JobWaitRole | str = JobWaitRole.SUBMITTER,
        ephemeral_cluster: bool = False,
        utilisation: dict[str, Any] | None = None,
        state_store_conn_id: str | None = None,
        log_storage_uri: str | None = None,
        not_before: float | None = None,
        actor: dict[str, Any] | None = None,
        stop_on_kill: bool | None = None,
        finish_job: bool | None = None,
    ) -> None:
        super().__init__(ray_conn_id, poll_interval, not_before, actor, state_store_conn_id)
        self.cluster_name = cluster_name
        self.submission_id = submission_id
        self.utilisation = Utilisation.from_dict(utilisation)
        self.timeout_at = timeout_at
        self.stream_logs = stream_logs
        self.log_offset = log_offset
        self.role = JobWaitRole.WATCHER if stop_on_kill is False else JobWaitRole(role)
        self.ephemeral_cluster = ephemeral_cluster
        self.log_storage_uri = log_storage_uri

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return self._serialized(
            cluster_name=self.cluster_name,
            submission_id=self.submission_id,
            timeout_at=self.timeout_at,
            stream_logs=self.stream_logs,
            log_offset=self.log_offset,
            role=self.role.value,
            ephemeral_cluster=self.ephemeral_cluster,
            utilisation=self.utilisation.to_dict(),
            log_storage_uri=self.log_storage_uri,
        )

    def _run(self, backend: RayBackend, recorder: LifecycleRecorder | None = None) -> RayJobRun:
        """The job run this trigger waits on, with the progress its state carries."""
        return RayJobRun(
            backend,
            self.cluster_name,
            self.submission_id,
            timeout_at=self.timeout_at,
            log_offset=self.log_offset,
            utilisation=self.utilisation,
            ephemeral_cluster=self.ephemeral_cluster,
            recorder=recorder,
            log=self.log,
            waiter="trigger",
        )

    def _poller(self, backend: RayBackend) -> ClusterPoller:
        """The poll this trigger shares with every other of this triggerer waiting on the same cluster (for
        the same connection, team and interval)."""
        team = (self.actor or {}).get("team") or ("cleanup" if (self.actor or {}).get("cleanup") else "")
        key = (self.ray_conn_id, self.cluster_name, team, self.poll_interval)
        return ClusterPoller.shared(key, backend, self.cluster_name, self.poll_interval)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        backend = await self._backend()
        watching = backend if isinstance(backend, WatchingBackend) else None
        run = self._run(backend, shared_recorder(self.state_store_conn_id, self.log_storage_uri))
        faults = async_transient_faults(self.poll_interval, self.log)
        while True:
            try:
                event = await faults(self._step, backend, watching, run)
            except BackendError as error:  # the fault policy gave up: the backend kept failing
                yield await self._fire(run.error(str(error)).to_dict())
                return
            if event is not None:
                if self.role == JobWaitRole.SUBMITTER and event.status != WaitStatus.ERROR:
                    event = await asyncio.to_thread(self._finish, backend, event)
                yield await self._fire(event.to_dict())
                return

    async def _step(self, backend: RayBackend, watching: WatchingBackend | None, run: RayJobRun) -> JobEvent | None:
        """One look at the job: from the poll shared with this triggerer's other waits on its cluster, or
        a server-side watch. A failed call ends the wait if the cluster died, else is raised for the
        fault policy to count (the same policy as the blocking wait's)."""
        try:
            if watching is None:
                polled = await self._poller(backend).next_round(self.submission_id)
                info, sample = polled.job, polled.utilisation
            else:
                window = self._window(LOG_STREAM_WINDOW if self.stream_logs else MAX_WATCH_WINDOW, self.timeout_at)
                info, sample = await watching.await_job(self.cluster_name, self.submission_id, window), SCRAPE_HERE
            event = await asyncio.to_thread(self._observe, run, info, sample)
        except BackendError as error:
            return await asyncio.to_thread(run.lost_or_raise, error)
        self.log_offset = run.log_offset  # what serialize() carries from now on
        return event

    def _observe(self, run: RayJobRun, info: JobInfo | None, sample: Any) -> JobEvent | None:
        """One look at the job, its new log lines handed to the task log here, in a worker thread: a
        chatty job's log is written without holding the triggerer's event loop."""
        event, text = run.observe(info, stream_logs=self.stream_logs, sample=sample)
        log_job_output(self.log, self.submission_id, text)
        return event

    def _finish(self, backend: RayBackend, event: JobEvent) -> JobEvent:
        """Record the job's end and persist its log in this (warm) process, so that the task resumed in a
        fresh one has nothing left to ask Ray; if the backend fails here, the task does it instead."""
        run = self._run(backend, shared_recorder(self.state_store_conn_id, self.log_storage_uri))
        try:
            run.conclude(event, stream_logs=self.stream_logs)
        except BackendError as error:
            self.log.warning("Ray job %r: its end is left to the task to record (%s)", self.submission_id, error)
            return event
        return replace(event, finished=True, log_offset=run.log_offset, result=run.result.to_dict())

    async def on_kill(self) -> None:
        """A user killed the deferred task: stop the job (recording it STOPPED), and remove the task's
        ephemeral cluster."""
        run = self._run(await self._backend(), shared_recorder(self.state_store_conn_id, None))
        if self.role == JobWaitRole.SUBMITTER:
            await asyncio.to_thread(run.stop_and_record)
        if self.ephemeral_cluster:
            await asyncio.to_thread(run.delete_killed_tasks_cluster)
