"""Waiting at backfill scale: one status query per cluster per interval, however many triggers wait on it.

A backfill defers hundreds of job waits on one triggerer. Polled one by one, each costs its own status
call, utilisation scrape and log read per interval against the same cluster: calls grow with the
number of triggers, saturate the triggerer's threads, and a finished job is noticed late. A
:class:`ClusterPoller` is shared, in one triggerer process and event loop, by every trigger waiting on
jobs of one cluster (for one connection and one actor): each round it lists the cluster's jobs once
(``list_jobs``) and samples the cluster's utilisation once while any of them runs, and each trigger
awaits its own job's state from that round. Triggers still carry their whole state in
``serialize()``; pollers hold none of their own, so a triggerer restart rebuilds them from the triggers
it gets back.
"""

from __future__ import annotations

import asyncio
import socket
import time
import weakref
from dataclasses import dataclass

from airflow_ray_platform.backends.base import BackendError, JobInfo, JobState, RayBackend
from airflow_ray_platform.observability import metrics
from airflow_ray_platform.records.utilisation import scrape

#: What identifies a shared poller within one event loop: connection, cluster, actor, interval.
PollerKey = tuple[str, str, str, float]


@dataclass(frozen=True)
class Round:
    """One poll of a cluster: its job (None if the cluster lists no such job) and the utilisation
    sampled in that round (None when no watched job was running, or nothing could be scraped)."""

    job: JobInfo | None
    utilisation: tuple[float | None, float | None] | None


class ClusterPoller:
    """One cluster's jobs, listed once per interval for every trigger of this event loop waiting on one.

    The poll loop runs while anyone waits and ends with the last waiter (so does the poller's entry).
    A failed listing is handed to every waiter of that round, to count as each trigger counts errors.
    """

    _shared: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[PollerKey, ClusterPoller]] = (
        weakref.WeakKeyDictionary()
    )

    def __init__(self, key: PollerKey, backend: RayBackend, cluster_name: str, interval: float) -> None:
        self.key = key
        self.backend = backend
        self.cluster_name = cluster_name
        self.interval = interval
        self.rounds = 0
        self._waiting: dict[str, int] = {}
        self._jobs: dict[str, JobInfo] = {}
        self._utilisation: tuple[float | None, float | None] | None = None
        self._error: BackendError | None = None
        self._polled = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def shared(cls, key: PollerKey, backend: RayBackend, cluster_name: str, interval: float) -> ClusterPoller:
        """This event loop's poller of ``key``, made on first use (with the first asker's backend)."""
        pollers = cls._shared.setdefault(asyncio.get_running_loop(), {})
        if key not in pollers:
            pollers[key] = cls(key, backend, cluster_name, interval)
        return pollers[key]

    async def next_round(self, submission_id: str) -> Round:
        """The job as of the next poll (raises that poll's BackendError)."""
        self._waiting[submission_id] = self._waiting.get(submission_id, 0) + 1
        try:
            if self._task is None or self._task.done():
                self._task = asyncio.get_running_loop().create_task(self._poll(), name=f"ray-poll-{self.cluster_name}")
            seen = self.rounds
            async with self._polled:
                await self._polled.wait_for(lambda: self.rounds > seen)
            if self._error is not None:
                raise self._error
            return Round(self._jobs.get(submission_id), self._utilisation)
        finally:
            self._waiting[submission_id] -= 1
            if not self._waiting[submission_id]:
                del self._waiting[submission_id]

    async def _poll(self) -> None:
        try:
            while True:
                await self._poll_once()
                slept_at = time.monotonic()
                await asyncio.sleep(self.interval)
                # How late the loop woke this round: a triggerer falling behind shows here first.
                lag = time.monotonic() - slept_at - self.interval
                metrics.POLLING_LOOP_LAG(lag, backend=self.backend.name)
                if not self._waiting:  # nobody asked again within an interval: done
                    return
        finally:
            pollers = self._shared.get(asyncio.get_running_loop(), {})
            if pollers.get(self.key) is self:
                del pollers[self.key]

    async def _poll_once(self) -> None:
        metrics.POLLING_CALLS(backend=self.backend.name)
        everyone = self._shared.get(asyncio.get_running_loop(), {}).values()
        metrics.POLLING_WAITING(sum(sum(p._waiting.values()) for p in everyone), host=socket.gethostname())
        try:
            jobs = await asyncio.to_thread(self.backend.list_jobs, self.cluster_name)
            self._jobs = {job.submission_id: job for job in jobs}
            self._error = None
            running = any(self._jobs[sid].state == JobState.RUNNING for sid in self._waiting if sid in self._jobs)
            self._utilisation = None
            if running:
                urls = await asyncio.to_thread(self.backend.metrics_urls, self.cluster_name)
                self._utilisation = await asyncio.to_thread(scrape, urls) if urls else (None, None)
        except BackendError as error:
            self._error = error
        except Exception as error:  # never a poll that dies silently, leaving its waiters waiting
            self._error = BackendError(f"polling the jobs of Ray cluster {self.cluster_name!r}: {error!r}")
        self.rounds += 1
        async with self._polled:
            self._polled.notify_all()
