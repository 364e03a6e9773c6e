"""The provider's own metrics, sent through Airflow's metrics client to whatever the deployment turned on.

Airflow's metrics stop at the task: a Ray job that ran an hour and a cluster that took nine minutes to
start look the same there. These fill that gap. They go through ``airflow.sdk.observability.stats``, so a
deployment with ``[metrics] statsd_on`` (tags with ``statsd_influxdb_enabled``) or ``otel_on`` receives
them from the scheduler, the triggerer and the workers with nothing more to set up, and
``[metrics] metrics_block_list = ray_platform`` turns them off.

Every metric is declared once, here, as data: :data:`CATALOGUE` is what ``docs/operations.md`` lists (a
test keeps the two equal) and what the alert rules and the dashboard in ``deploy/`` may name (a test
checks that too). A metric is emitted by calling it with its declared tags and no others; tag values are
bounded (teams, backends, outcomes), never a job, run or cluster id, so the number of series stays small
however many jobs run. Emitting never raises: a metric is never worth a failed task.
"""

from __future__ import annotations

import enum
import functools
import logging
import re
import sys
from dataclasses import dataclass
from datetime import timedelta

from airflow_ray_platform import settings

PREFIX = "ray_platform"
#: What a tag value becomes when there is none (a job without a team, a single-tenant deployment).
NONE = "none"

log = logging.getLogger(__name__)
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


class Kind(enum.StrEnum):
    """How a metric is sent: StatsD's counter, timer (seconds, sent as milliseconds) and gauge."""

    COUNTER = "counter"
    TIMER = "timer"
    GAUGE = "gauge"


@dataclass(frozen=True)
class Metric:
    """One metric: its name under :data:`PREFIX`, how it is sent, the tags it always carries, and what an
    operator reads from it."""

    name: str
    kind: Kind
    tags: tuple[str, ...]
    meaning: str

    @property
    def full_name(self) -> str:
        return f"{PREFIX}.{self.name}"

    def __call__(self, value: float | timedelta = 1, **tags: str | None) -> None:
        """Send one observation: a counter's increment, a timer's duration (seconds or a timedelta), a
        gauge's value. The tags must be exactly the declared ones (a ValueError names the difference)."""
        if set(tags) != set(self.tags):
            raise ValueError(f"metric {self.full_name} takes the tags {list(self.tags)}, not {sorted(tags)}")
        values = {key: _tag_value(tags[key]) for key in self.tags}
        try:
            _send(self, value, values)
        except Exception as error:  # a metric never fails a task
            log.debug("Metric %s not sent: %s", self.full_name, error)


def _tag_value(value: str | None) -> str:
    """Tag values as every receiver takes them (StatsD's InfluxDB tags refuse ``,`` and ``=``)."""
    return NONE if value is None or value == "" else _UNSAFE.sub("_", str(value))[:63]


def _send(metric: Metric, value: float | timedelta, tags: dict[str, str]) -> None:
    if not _sending():
        return
    from airflow.sdk.observability import stats  # imported when the first metric is sent, not before

    if metric.kind == Kind.COUNTER:
        stats.incr(metric.full_name, count=value, tags=tags)  # type: ignore[arg-type]
    elif metric.kind == Kind.TIMER:
        duration = value if isinstance(value, timedelta) else timedelta(seconds=max(float(value), 0.0))
        stats.timing(metric.full_name, duration, tags=tags)
    else:
        stats.gauge(metric.full_name, float(value), tags=tags)  # type: ignore[arg-type]


@functools.cache
def _sending() -> bool:
    """Whether this process sends metrics at all: in one that runs Airflow, Airflow's stats client decides;
    outside (the CLI, a notebook) a metric imports Airflow (seconds) only if its configuration turns one on."""
    return "airflow" in sys.modules or settings.metrics_enabled()


def _metric(name: str, kind: Kind, tags: str, meaning: str) -> Metric:
    return Metric(name, kind, tuple(tags.split()), meaning)


C, T, G = Kind.COUNTER, Kind.TIMER, Kind.GAUGE

# ---------------------------------------------------------------------------------------------- clusters
CLUSTER_CREATED = _metric("cluster.created", C, "backend team", "A cluster the provider created (first recorded).")
CLUSTER_READY = _metric(
    "cluster.ready", T, "backend team", "Time from a cluster's creation to READY, once per cluster it saw start."
)
CLUSTER_FAILED = _metric("cluster.failed", C, "backend team", "A cluster recorded FAILED (it did not start, or died).")
CLUSTER_DELETED = _metric(
    "cluster.deleted",
    C,
    "backend team cause",
    "A cluster deleted, by cause: job_ended, task_killed, run_released, forced, by_user, and the cleanup "
    "sweep's gc_idle, gc_max_lifetime, gc_hard_lifetime, gc_ephemeral, gc_unusable.",
)
CLUSTERS = _metric(
    "clusters", G, "backend state", "Clusters the cleanup sweep found, by state (STARTING, READY, FAILED, ...)."
)
CLUSTERS_STARTING_LONGEST = _metric(
    "clusters.starting_longest_seconds",
    G,
    "backend",
    "Seconds the oldest cluster not yet READY has been starting (0: none), as of the last sweep.",
)

# -------------------------------------------------------------------------------------------------- jobs
JOB_SUBMITTED = _metric("job.submitted", C, "backend team", "A Ray job submitted by a task, the CLI or a decorator.")
JOB_REATTACHED = _metric(
    "job.reattached", C, "backend team", "A retry or a resumed task found its Ray job and reattached."
)
JOB_FINISHED = _metric(
    "job.finished", C, "backend team outcome", "A Ray job ended, once per job: succeeded, failed or stopped."
)
JOB_DURATION = _metric("job.duration", T, "backend team outcome", "A Ray job's run time, from Ray's start to end.")
JOB_QUEUE_WAIT = _metric(
    "job.queue_wait", T, "backend team", "From a job's submission to when it was first seen running (its running_at)."
)
JOB_DETECTION_LAG = _metric(
    "job.detection_lag", T, "backend waiter", "From a job's end (Ray's) to when its waiter (task, trigger) saw it."
)

# ------------------------------------------------------------------------------------------------ leases
LEASE_TAKEN = _metric("lease.taken", C, "backend team", "A DAG run, a session or the CLI leased a shared cluster.")
LEASE_RELEASED = _metric(
    "lease.released", C, "backend team", "Leases released: a run's teardown, a session's end, expired ones by GC."
)

# ---------------------------------------------------------------------------------------- cleanup sweeps
SWEEP_COMPLETED = _metric("sweep.completed", C, "backend", "A cleanup sweep of one connection that finished.")
SWEEP_FAILED = _metric("sweep.failed", C, "backend", "A cleanup sweep that raised before it finished.")
SWEEP_DURATION = _metric("sweep.duration", T, "backend", "How long a cleanup sweep of one connection took.")
SWEEP_DECISIONS = _metric(
    "sweep.decisions",
    C,
    "backend decision",
    "The sweep's decisions: deleted, kept, would_delete (dry run), refused (busy at delete time), error.",
)

# ---------------------------------------------------------------------------------------- usage export
USAGE_EXPORT_ROWS = _metric("usage_export.rows", C, "table", "Rows written by the usage export, per Parquet table.")
USAGE_EXPORT_DURATION = _metric("usage_export.duration", T, "", "How long one interval's usage export took.")

# --------------------------------------------------------------------------------------- shared polling
POLLING_CALLS = _metric("polling.calls", C, "backend", "Job listings made by triggers' shared pollers.")
POLLING_LOOP_LAG = _metric(
    "polling.loop_lag", T, "backend", "How late a shared poller's round woke, past its interval: the triggerer's lag."
)
POLLING_WAITING = _metric(
    "polling.waiting", G, "host", "Job waits a triggerer (by host) has on shared polls, all clusters, each round."
)

# --------------------------------------------------------------------------------------------- tenancy
AUTHORIZATION_REFUSED = _metric(
    "authorization.refused", C, "team action", "An action the platform policy refused, by the acting team."
)

# ------------------------------------------------------------------------------------------------- cost
COST = _metric(
    "usage.cost",
    C,
    "backend team",
    "Estimated cost of finished jobs (requested resources x run time at the usage export's default prices).",
)
CPU_HOURS = _metric("usage.cpu_hours", C, "backend team", "CPU-hours requested by finished jobs, over their run time.")
GPU_HOURS = _metric("usage.gpu_hours", C, "backend team", "GPU-hours requested by finished jobs, over their run time.")
TEAM_DAILY_BUDGET = _metric(
    "team.daily_budget", G, "team", "A team's daily_cost_budget from the platform policy, as of the last sweep."
)

#: Every metric the provider sends, in the order ``docs/operations.md`` lists them.
CATALOGUE: tuple[Metric, ...] = tuple(value for value in dict(globals()).values() if isinstance(value, Metric))
