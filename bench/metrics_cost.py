"""What the provider's metrics cost: the control-plane benchmark's operator run (submit -> SUCCEEDED of a
trivial job on an existing cluster, blocking, 0.2 s polls) with Airflow's StatsD client on, sending to a
real UDP receiver, against the same run with metrics off (Airflow's no-op logger), alternating rounds in
one process, each against Ray's own JobSubmissionClient loop of the same round as the baseline. "On" is
what a deployment pays: Airflow's own metrics are sent too. The provider's own share is timed apart:
the time spent in its metrics' sends during the "on" runs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

from airflow.sdk._shared.observability.metrics.base_stats_logger import NoStatsLogger
from airflow.sdk.observability import stats
from airflow.sdk.observability.metrics.stats_utils import get_stats_factory

from airflow_ray_platform.backends.local.backend import LocalBackend
from airflow_ray_platform.observability import metrics
from airflow_ray_platform.runs.cluster import wait_for_cluster
from airflow_ray_platform.spec.models import ClusterSpec
from bench.common import median, migrate_airflow_db, record
from bench.control_plane import operator_run, raw_loop
from bench.dags.bench_dags import BENCH_CLUSTER
from tests.statsd_receiver import StatsdReceiver

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "9"))
#: Seconds spent sending the provider's metrics, added up while the "on" runs run.
SENDING = [0.0]


def timed_send(send: Callable[..., None]) -> Callable[..., None]:
    """``metrics._send``, adding the time each send takes to :data:`SENDING`."""

    def wrapper(*args: Any, **kwargs: Any) -> None:
        started = time.perf_counter()
        try:
            return send(*args, **kwargs)
        finally:
            SENDING[0] += time.perf_counter() - started

    return wrapper


def main() -> None:
    from bench.dags.bench_dags import bench_control_plane_blocking

    migrate_airflow_db()
    receiver = StatsdReceiver()
    os.environ.update(receiver.airflow_environment)
    backend = LocalBackend()
    spec = ClusterSpec(head={"cpu": "2", "memory": "2Gi", "object_store_memory": "200Mi"})
    backend.create_or_get_cluster(BENCH_CLUSTER, spec, {})
    info = wait_for_cluster(backend, BENCH_CLUSTER, timeout=300, poll_interval=0.2)
    token = backend.registry.read_token(BENCH_CLUSTER)
    sent_per_run, sending_per_run = [], []
    metrics._send = timed_send(metrics._send)
    try:
        raw_loop(info.dashboard_url, token)  # warm-up: first job on a fresh cluster starts workers
        operator_run(bench_control_plane_blocking)
        raw, on, off = [], [], []
        for _ in range(ROUNDS):
            raw.append(raw_loop(info.dashboard_url, token))
            stats.initialize(factory=get_stats_factory(), export_legacy_names=False)
            before = len(receiver.provider_samples())
            SENDING[0] = 0.0
            on.append(operator_run(bench_control_plane_blocking))
            sending_per_run.append(SENDING[0])
            receiver.wait_for(lambda before=before: len(receiver.provider_samples()) > before, timeout=5)
            sent_per_run.append(len(receiver.provider_samples()) - before)
            stats.initialize(factory=NoStatsLogger, export_legacy_names=False)
            off.append(operator_run(bench_control_plane_blocking))
    finally:
        backend.delete_cluster(BENCH_CLUSTER)
        receiver.close()
    record(
        "metrics_cost",
        {
            "rounds": ROUNDS,
            "raw_job_submission_client_s": round(median(raw), 3),
            "ray_job_operator_metrics_on_s": round(median(on), 3),
            "ray_job_operator_metrics_off_s": round(median(off), 3),
            "ratio_on": round(median(on) / median(raw), 3),
            "ratio_off": round(median(off) / median(raw), 3),
            "on_over_off": round(median(on) / median(off), 3),
            "provider_metrics_sent_per_run": sorted(set(sent_per_run)),
            "provider_metrics_send_s_per_run": round(median(sending_per_run), 6),
            "samples": {
                "raw": [round(x, 3) for x in raw],
                "on": [round(x, 3) for x in on],
                "off": [round(x, 3) for x in off],
            },
        },
    )


if __name__ == "__main__":
    main()
