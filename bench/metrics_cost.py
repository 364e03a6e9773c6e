"""What the provider's metrics cost: the control-plane benchmark's operator run (submit -> SUCCEEDED of a
trivial job on an existing cluster, blocking, 0.2 s polls) with Airflow's StatsD client on, sending to a
real UDP receiver, against the same run with metrics off (Airflow's no-op logger), alternating rounds in
one process, each against Ray's own JobSubmissionClient loop of the same round as the baseline.
"""

from __future__ import annotations

import os

from airflow.sdk._shared.observability.metrics.base_stats_logger import NoStatsLogger
from airflow.sdk.observability import stats
from airflow.sdk.observability.metrics.stats_utils import get_stats_factory

from airflow_ray_platform.backends.local.backend import LocalBackend
from airflow_ray_platform.runs.cluster import wait_for_cluster
from airflow_ray_platform.spec.models import ClusterSpec
from bench.common import median, migrate_airflow_db, record
from bench.control_plane import operator_run, raw_loop
from bench.dags.bench_dags import BENCH_CLUSTER
from tests.statsd_receiver import StatsdReceiver

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "7"))


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
    sent_per_run = []
    try:
        raw_loop(info.dashboard_url, token)  # warm-up: first job on a fresh cluster starts workers
        operator_run(bench_control_plane_blocking)
        raw, on, off = [], [], []
        for _ in range(ROUNDS):
            raw.append(raw_loop(info.dashboard_url, token))
            stats.initialize(factory=get_stats_factory(), export_legacy_names=False)
            before = len(receiver.provider_samples())
            on.append(operator_run(bench_control_plane_blocking))
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
            "samples": {
                "raw": [round(x, 3) for x in raw],
                "on": [round(x, 3) for x in on],
                "off": [round(x, 3) for x in off],
            },
        },
    )


if __name__ == "__main__":
    main()
