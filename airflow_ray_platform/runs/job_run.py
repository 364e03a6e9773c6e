"""One task's Ray job, from the submit-or-reattach decision to its recorded outcome: plain Python.

The shape of cncf-kubernetes' ``PodManager``: the operator orchestrates Airflow (XCom, deferral, extra
links, the task log), the trigger awaits, the sensor pokes, and all three take their decisions here.
So a rule (reattach or resubmit, when a wait ends, what a timeout does, what is recorded) is written
once and tested without Ray or Airflow: :func:`decide_submission` and :meth:`RayJobRun.outcome` are
pure; the rest calls the backend (blocking: async callers run it in a worker thread).

The run's first phase, finding or creating its cluster and waiting until it is ready, is
:mod:`.cluster`'s.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from airflow_ray_platform.backends.base import (
    BackendError,
    ClusterInfo,
    ClusterState,
    IncrementalLogs,
    JobInfo,
    JobState,
    RayBackend,
)
from airflow_ray_platform.backends.retries import transient_faults
from airflow_ray_platform.observability import metrics
from airflow_ray_platform.records.lifecycle import DeleteCause, LifecycleRecorder
from airflow_ray_platform.records.utilisation import Utilisation, scrape
from airflow_ray_platform.runs.events import JobEvent, WaitStatus
from airflow_ray_platform.spec.models import JobConfiguration
from airflow_ray_platform.spec.naming import TASK_KEY_METADATA, TRY_NUMBER_METADATA, TaskIdentity
from airflow_ray_platform.spec.results import RESULT_MARKER, JobResult, ResultScanner
from airflow_ray_platform.spec.timestamps import utc_now
from airflow_ray_platform.tenancy.authorization import presented_token

STOPPED_BY_KILL = "stopped: the task was killed"
#: ``RayJobRun.observe``'s utilisation sample when the caller took none: scrape the cluster here.
SCRAPE_HERE: Any = object()
#: ``RayJobRun.poll``'s job when the caller observed none: describe it here.
DESCRIBE: Any = object()
STOPPED_BY_TIMEOUT = "stopped: it exceeded its timeout"

_module_log = logging.getLogger(__name__)


# ------------------------------------------------------------------ decisions (pure)
@dataclass(frozen=True)
class Submission:
    """What a task does about its Ray job: reattach to ``reattach``, or submit under ``submission_id``.

    ``previous`` is the task's last job when it is resubmitted (it ended on an earlier try).
    """

    submission_id: str
    reattach: JobInfo | None = None
    previous: JobInfo | None = None


def _try_of(job: JobInfo) -> int:
    return int(job.metadata.get(TRY_NUMBER_METADATA, 0))


def decide_submission(identity: TaskIdentity, try_number: int, jobs: Iterable[JobInfo]) -> Submission:
    """Reattach to this task's job if it is pending, running or succeeded, or was submitted by this very
    try (a worker that died); submit only when there is none, or when the last one ended unsuccessfully
    on an earlier try (a real retry: a new id, ``…-a<try>``)."""
    mine = [job for job in jobs if job.metadata.get(TASK_KEY_METADATA) == identity.key]
    latest = max(mine, key=_try_of, default=None)
    if latest is not None and (
        not latest.state.is_terminal or latest.state == JobState.SUCCEEDED or _try_of(latest) >= try_number
    ):
        return Submission(latest.submission_id, reattach=latest)
    attempt = 1 if latest is None and try_number == 1 else try_number
    return Submission(identity.submission_id(attempt=attempt), previous=latest)


def stopped_job(latest: JobInfo | None, submission_id: str, cluster_name: str, why: str) -> JobInfo:
    """The job as the record should keep it once this task (or the cleanup DAG) stopped it, with ``why``.

    Ray may still report it RUNNING for a moment, and on KubeRay stopping deletes the RayJob, so
    nothing else would ever move its record out of RUNNING. Where Ray already reports it STOPPED, its
    message says only that ("Job was intentionally stopped."): the record keeps who stopped it and why.
    A job that ended otherwise before the stop took effect keeps Ray's own end.
    """
    if latest is not None and latest.state == JobState.STOPPED:
        return replace(latest, message=why)
    if latest is not None and latest.state.is_terminal:
        return latest
    started = latest.start_time if latest is not None else None
    return JobInfo(submission_id, cluster_name, JobState.STOPPED, message=why, start_time=started, end_time=utc_now())


def log_job_output(log: logging.Logger, submission_id: str, text: str) -> None:
    """The job's new driver output into a task's log: one record per batch (a trigger writes it from the
    triggerer's event loop, so thousands of lines are one call, not thousands), each line prefixed. A
    result line is shown by its size: the value goes to XCom, not into the log."""
    lines = [
        f"(hands back a result of {len(line) - len(RESULT_MARKER)} characters)"
        if line.startswith(RESULT_MARKER)
        else line
        for line in text.splitlines()
    ]
    if lines:
        log.info("%s", "\n".join(f"[ray job {submission_id}] {line}" for line in lines))


# ------------------------------------------------------------------------ the run
class RayJobRun:
    """One task's Ray job on one cluster, and how far waiting for it has got.

    The progress (``log_offset``, ``utilisation``, ``timeout_at``) is what a trigger serialises, so a
    run rebuilt from a trigger's state or event goes on where it was.

    :param backend: where the cluster lives.
    :param cluster_name: the cluster the job runs on.
    :param submission_id: the job, once submitted or reattached to.
    :param timeout_at: epoch seconds after which the wait ends ``timeout`` (None: never).
    :param log_offset: how much of the driver log the task log already holds.
    :param utilisation: the cluster utilisation sampled so far while the job ran.
    :param ephemeral_cluster: the cluster is this task's own, deleted when the job ends.
    :param recorder: where transitions are recorded (None: nowhere, e.g. a sensor's watch).
    :param config: the task's ``job_configuration`` (owner, team, requested resources of the record).
    :param log: the task's (or trigger's) logger.
    :param waiter: who waits, for the metrics: ``task`` (blocking) or ``trigger``.

    Once :meth:`finish` ran, ``result`` is what the job handed back (:mod:`~airflow_ray_platform.spec.results`).
    """

    def __init__(
        self,
        backend: RayBackend,
        cluster_name: str,
        submission_id: str | None = None,
        *,
        timeout_at: float | None = None,
        log_offset: int = 0,
        utilisation: Utilisation | None = None,
        ephemeral_cluster: bool = False,
        recorder: LifecycleRecorder | None = None,
        config: JobConfiguration | None = None,
        log: logging.Logger | None = None,
        waiter: str = "task",
    ) -> None:
        self.backend = backend
        self.cluster_name = cluster_name
        self.submission_id = submission_id
        self.timeout_at = timeout_at
        self.log_offset = log_offset
        self.utilisation = utilisation or Utilisation()
        self.ephemeral_cluster = ephemeral_cluster
        self.recorder = recorder
        self.config = config
        self.log = log or _module_log
        self.result = JobResult()
        #: Where :meth:`finish` persisted the finished job's log (None: not persisted).
        self.log_uri: str | None = None
        self.waiter = waiter
        self._running_recorded = False

    @property
    def _id(self) -> str:
        if self.submission_id is None:
            raise RuntimeError("this run has no Ray job yet: submit_or_reattach() first")
        return self.submission_id

    # ---------------------------------------------------------------- submit
    def submit_or_reattach(self, identity: TaskIdentity, try_number: int) -> JobInfo:
        """Carry out :func:`decide_submission` for this task's try, and record who submitted what."""
        if self.config is None:
            raise ValueError("a run submits the job of its configuration: it has none")
        config = self.config
        job = config.required_job()
        decision = decide_submission(identity, try_number, self.backend.list_jobs(self.cluster_name))
        self.submission_id = decision.submission_id
        if decision.reattach is not None:
            self.log.info(
                "Reattaching to Ray job %r (%s) instead of submitting again",
                decision.submission_id,
                decision.reattach.state,
            )
            info = decision.reattach
            metrics.JOB_REATTACHED(backend=self.backend.name, team=config.team)
        else:
            if decision.previous is not None:
                self.log.info(
                    "Ray job %r ended %s on an earlier try; submitting try %d as %r",
                    decision.previous.submission_id,
                    decision.previous.state,
                    try_number,
                    decision.submission_id,
                )
            metadata = identity.job_metadata(try_number, config.owner, config.team)
            info = self.backend.submit_job(self.cluster_name, decision.submission_id, job, metadata)
            self.log.info("Submitted Ray job %r to cluster %r", info.submission_id, self.cluster_name)
            metrics.JOB_SUBMITTED(backend=self.backend.name, team=config.team)
        self._record(info, identity=identity, try_number=try_number)
        return info

    def start_clock(self, timeout: float | None = None) -> None:
        """The job's deadline from now: ``timeout`` seconds (an operator's ``timeout``), else the
        configuration's ``job.timeout``, else none."""
        configured = self.config.job.timeout if self.config is not None and self.config.job is not None else None
        seconds = timeout if timeout is not None else configured.total_seconds() if configured is not None else None
        self.timeout_at = None if seconds is None else time.time() + seconds

    # ------------------------------------------------------------------ wait
    def outcome(self, info: JobInfo | None, now: float | None = None) -> JobEvent | None:
        """The wait step: the event that ends the wait for ``info`` (the job as just observed), or None
        to keep waiting. A job that is gone is an error; a terminal one ends it; then the deadline."""
        if info is None:
            return self._event(WaitStatus.ERROR, f"cluster {self.cluster_name!r} has no job {self._id!r}")
        if info.state.is_terminal:
            status = WaitStatus.SUCCESS if info.state == JobState.SUCCEEDED else WaitStatus.FAILED
            return self._event(status, info.message, state=info.state)
        if self.timeout_at is not None and (time.time() if now is None else now) >= self.timeout_at:
            return self._event(WaitStatus.TIMEOUT, f"job {self._id!r} exceeded its timeout")
        return None

    def error(self, message: str) -> JobEvent:
        """The event of a wait that could not go on (the backend kept failing)."""
        return self._event(WaitStatus.ERROR, message)

    def _event(self, status: WaitStatus, message: str | None, state: JobState | None = None) -> JobEvent:
        return JobEvent(
            status=status,
            submission_id=self._id,
            cluster_name=self.cluster_name,
            state=state,
            message=message,
            log_offset=self.log_offset,
            ephemeral_cluster=self.ephemeral_cluster,
            utilisation=self.utilisation,
        )

    def describe(self) -> JobInfo | None:
        return self.backend.describe_job(self.cluster_name, self._id)

    def lost_or_raise(self, error: BackendError) -> JobEvent:
        """After a failed status call: the event that ends the wait if the job's cluster itself died or is
        gone (its head was killed: nothing will ever answer for the job); otherwise ``error`` again, a
        passing fault for the wait's fault policy to count (so is a backend that does not answer at all)."""
        try:
            info = self.backend.describe_cluster(self.cluster_name)
        except BackendError:
            raise error from None
        if info is not None and info.state != ClusterState.FAILED:
            raise error
        why = "its cluster is gone" if info is None else f"its cluster died ({info.message})"
        return self._event(
            WaitStatus.FAILED, f"job {self._id!r} cannot finish: {why}; last error: {error}", state=JobState.FAILED
        )

    def new_output(self, *, final: bool = False) -> str:
        """The driver log written since the last call (the offset moves on): read from the offset where
        the backend can (each byte once, whole lines until ``final``), else sliced from the whole log."""
        if isinstance(self.backend, IncrementalLogs):
            text, self.log_offset = self.backend.job_log_since(
                self.cluster_name, self._id, self.log_offset, complete_lines=not final
            )
            return text
        logs = self.backend.job_logs(self.cluster_name, self._id)
        text, self.log_offset = logs[self.log_offset :], len(logs)
        return text

    def observe(
        self, info: JobInfo | None, *, stream_logs: bool, sample: Any = SCRAPE_HERE
    ) -> tuple[JobEvent | None, str]:
        """After observing the job: its new output (if streamed), a utilisation sample while it runs (the
        ``sample`` a shared poll took, else scraped here), and :meth:`outcome`. Returns (event or None,
        new output) for the caller to log."""
        text = self.new_output() if stream_logs and info is not None else ""
        if info is not None and info.state == JobState.RUNNING:
            if sample is SCRAPE_HERE:
                urls = self.backend.metrics_urls(self.cluster_name)
                sample = scrape(urls) if urls else (None, None)
            if sample is not None:
                self.utilisation.add(sample)
        event = self.outcome(info)
        self._time_the_wait(info, ended=event is not None)
        return event, text

    def _time_the_wait(self, info: JobInfo | None, *, ended: bool) -> None:
        """The waits an operator alerts on: the queue wait ends when the job is first seen running (on its
        record, once, whoever saw it), and the detection lag is from Ray's end to this waiter seeing it."""
        if info is None:
            return
        if info.state == JobState.RUNNING and not self._running_recorded and self.recorder is not None:
            self._running_recorded = True
            self.recorder.job_running(self.backend.name, info)
        if ended and info.state.is_terminal and info.end_time is not None:
            metrics.JOB_DETECTION_LAG(utc_now() - info.end_time, backend=self.backend.name, waiter=self.waiter)

    def poll(self, observed: Any = DESCRIBE, *, stream_logs: bool) -> tuple[JobEvent | None, str]:
        """One look at the job (``observed``, else described now) and :meth:`observe`; a failed call ends
        the wait if the cluster died, else is raised for the fault policy (:meth:`lost_or_raise`)."""
        try:
            info = self.describe() if observed is DESCRIBE else observed
            return self.observe(info, stream_logs=stream_logs)
        except BackendError as error:
            return self.lost_or_raise(error), ""

    def wait(
        self, info: JobInfo | None, *, poll_interval: float, stream_logs: bool, within: float | None = None
    ) -> JobEvent | None:
        """Block until the wait ends, logging the job's output (the operator's non-deferrable path, a
        deferrable one's single look: 0, the CLI); None if it has not ended ``within`` seconds. Failed
        status calls are tolerated as the trigger tolerates them (``backends.retries.transient_faults``);
        past that, the wait ends with an error event."""
        give_up = None if within is None else time.monotonic() + within
        faults = transient_faults(poll_interval, self.log)
        observed: Any = info
        while True:
            try:
                event, text = faults(self.poll, observed, stream_logs=stream_logs)
            except BackendError as error:
                return self.error(str(error))
            observed = DESCRIBE
            log_job_output(self.log, self._id, text)
            if event is not None:
                return event
            if give_up is not None and time.monotonic() >= give_up:
                return None
            time.sleep(poll_interval)

    # ---------------------------------------------------------------- finish
    def conclude(self, event: JobEvent, *, stream_logs: bool) -> JobInfo | None:
        """The wait's end: :meth:`finish`, then the rest of the driver log into the task's log (when
        streamed). Finish first: it reads the finished log whole to persist it, and where this process
        follows the log that read completes it, so the last read need not wait for the follow to close
        (2 to 3 s on a Ray dashboard). A cluster whose head died has no Jobs API left to read it from: its
        log is only persisted, from what its nodes left on disk."""
        try:
            final = self.finish(event)
        finally:  # the job's last lines reach the task's log even if recording it failed
            if stream_logs and event.status in (WaitStatus.SUCCESS, WaitStatus.FAILED):
                try:
                    log_job_output(self.log, self._id, self.new_output(final=True))
                except BackendError as error:
                    self.log.warning("The rest of Ray job %r's log cannot be read live: %s", self._id, error)
        if self.log_uri:
            self.log.info("Ray job %r log persisted to %s", self._id, self.log_uri)
        return final

    def finish(self, event: JobEvent) -> JobInfo | None:
        """After the wait: stop a job that timed out, record the final state (with the utilisation
        measured) and persist the whole driver log, before any ephemeral cluster goes."""
        if event.status == WaitStatus.TIMEOUT:
            self.backend.stop_job(self.cluster_name, self._id)
        cluster = self.backend.describe_cluster(self.cluster_name)
        try:
            final = self.describe()
        except BackendError:
            if cluster is None or cluster.state != ClusterState.FAILED:
                raise
            # Its head died: the record keeps the reason, and the log is what the nodes left on disk.
            final = JobInfo(self._id, self.cluster_name, JobState.FAILED, message=event.message, end_time=utc_now())
        if event.status == WaitStatus.TIMEOUT:
            final = stopped_job(final, self._id, self.cluster_name, STOPPED_BY_TIMEOUT)
        if final is not None and cluster is not None and self.recorder is not None:
            self.recorder.job_seen(cluster, final, config=self.config, utilisation=event.utilisation)
            if final.state.is_terminal:
                self.result = self._persist_log_and_result(cluster, final)
        return final

    def _persist_log_and_result(self, cluster: ClusterInfo, final: JobInfo) -> JobResult:
        """Stream the driver log to storage, finding the job's result on the way (one read), and record
        both in one write; if storage failed, the result is read from the backend's log instead."""
        assert self.recorder is not None

        def credentials() -> list[str | None]:
            return [presented_token(self.backend, self.cluster_name)]

        scanner = ResultScanner(credentials)
        chunks = self.backend.job_log_chunks
        uri = self.recorder.persist_log(
            cluster, final, lambda: scanner.through(chunks(self.cluster_name, self._id)), lambda: scanner.result
        )
        self.log_uri = uri
        if uri:
            return scanner.result
        if not scanner.complete:  # storage failed part-way: the result from the live log
            scanner = ResultScanner(credentials)
            scanner.scan(chunks(self.cluster_name, self._id))
        if scanner.result.to_dict() is not None:
            self.recorder.result_seen(cluster, final, scanner.result)
        return scanner.result

    def stop_and_record(self, why: str = STOPPED_BY_KILL) -> None:
        """Stop the job (a user killed its task) and record it STOPPED: operator and trigger alike."""
        cluster = self.backend.describe_cluster(self.cluster_name)  # first: an ephemeral cluster goes next
        self.backend.stop_job(self.cluster_name, self._id)
        if cluster is not None and self.recorder is not None:
            latest = self.describe()
            self.recorder.job_seen(cluster, stopped_job(latest, self._id, self.cluster_name, why), config=self.config)

    def end_cluster(self, *, succeeded: bool) -> bool:
        """The run's own cluster once its job ended, as ``lifecycle.cleanup`` says: deleted (``always``, or
        ``on_success`` after a success) or kept for debugging until the cleanup DAG's idle timeout. A shared
        cluster is never touched here (its DAG run's teardown releases it). Returns whether it deleted."""
        if not self.ephemeral_cluster:
            return False
        if self.config is not None and not self.config.lifecycle.deletes_cluster(succeeded=succeeded):
            self.log.warning(
                "Keeping Ray cluster %r for debugging (lifecycle.cleanup: %s); the cleanup DAG removes it after "
                "its idle_timeout",
                self.cluster_name,
                self.config.lifecycle.cleanup,
            )
            return False
        deleted = self.delete_cluster("ephemeral cluster: its job ended", DeleteCause.JOB_ENDED)
        self.log.info("Deleted ephemeral Ray cluster %r", self.cluster_name)
        return deleted

    def delete_cluster(self, reason: str, cause: DeleteCause) -> bool:
        """Delete the run's cluster (an ephemeral one: its job ended, or its task was killed) and record it."""
        info = self.backend.describe_cluster(self.cluster_name)
        deleted = self.backend.delete_cluster(self.cluster_name)
        if deleted and info is not None and self.recorder is not None:
            self.recorder.cluster_deleted(info, reason, cause)
        return deleted

    def delete_killed_tasks_cluster(self) -> bool:
        """Delete the ephemeral cluster of a task a user killed (operator and trigger alike)."""
        return self.delete_cluster("ephemeral cluster: its task was killed", DeleteCause.TASK_KILLED)

    def _record(self, job: JobInfo, *, identity: TaskIdentity | None = None, try_number: int | None = None) -> None:
        if self.recorder is None:
            return
        cluster = self.backend.describe_cluster(self.cluster_name)
        if cluster is not None:
            self.recorder.cluster_seen(cluster)
            self.recorder.job_seen(cluster, job, identity=identity, config=self.config, try_number=try_number)
