"""``@task.ray`` and the result channel, each against a baseline in the same run, alternating rounds.

1. ``@task.ray`` running a fan-out (8 Ray tasks, their sum handed back) against ``RayJobOperator`` running
   the same code as an entrypoint job that hands the same sum back (target: ratio <= 1.1): what the
   decorator adds (capturing the arguments, the driver script, decoding it in the job).
2. The result round trip from 1 KiB up to the 1 MiB limit: a job that hands back a string of that size
   (found in the persisted log, kept with the record, pushed to XCom) against a job that prints as many
   bytes without handing anything back. Both timed as Airflow times a task (its start to end).
"""

from __future__ import annotations

import json
import os

from airflow_ray_platform.backends.local.backend import LocalBackend
from airflow_ray_platform.runs.cluster import wait_for_cluster
from airflow_ray_platform.spec.models import ClusterSpec
from airflow_ray_platform.spec.results import RESULT_LIMIT_BYTES, RESULT_MARKER
from bench.common import median, migrate_airflow_db, record
from bench.dags.bench_dags import BENCH_CLUSTER

ROUNDS = int(os.environ.get("BENCH_ROUNDS", "5"))
SIZES = (1024, 64 * 1024, 512 * 1024, RESULT_LIMIT_BYTES - 2)  # the JSON of a string: its quotes count


def task_seconds(dag, **conf) -> tuple[float, object]:
    run = dag.test(run_conf=conf) if conf else dag.test()
    ti = run.get_task_instance("job")
    assert ti.state == "success", ti.state
    return (ti.end_date - ti.start_date).total_seconds(), ti.xcom_pull(task_ids="job")


def main() -> None:
    from bench.dags.bench_dags import bench_result, bench_task_ray, bench_task_ray_operator

    migrate_airflow_db()
    backend = LocalBackend()
    spec = ClusterSpec(head={"cpu": "2", "memory": "2Gi", "object_store_memory": "200Mi"})
    backend.create_or_get_cluster(BENCH_CLUSTER, spec, {})
    wait_for_cluster(backend, BENCH_CLUSTER, timeout=300, poll_interval=0.2)
    try:
        task_seconds(bench_task_ray_operator)  # warm-up: the first job on a fresh cluster starts workers
        decorated, operator = [], []
        for _ in range(ROUNDS):
            seconds, value = task_seconds(bench_task_ray)
            assert value == 140, value
            decorated.append(seconds)
            seconds, value = task_seconds(bench_task_ray_operator)
            assert value == 140, value
            operator.append(seconds)
        round_trip = {}
        for size in SIZES:
            handed, printed = [], []
            hand_back = f"print({RESULT_MARKER!r} + chr(34) + 'x' * {size} + chr(34))"
            print_only = f"print(chr(34) + 'x' * {size} + chr(34))"
            for _ in range(max(ROUNDS // 2, 2)):
                seconds, value = task_seconds(bench_result, code=hand_back)
                assert value == "x" * size
                handed.append(seconds)
                seconds, _ = task_seconds(bench_result, code=print_only)
                printed.append(seconds)
            round_trip[str(size)] = {
                "handed_back_s": round(median(handed), 3),
                "printed_only_s": round(median(printed), 3),
                "ratio": round(median(handed) / median(printed), 3),
            }
    finally:
        backend.delete_cluster(BENCH_CLUSTER)
    record(
        "task_ray",
        {
            "rounds": ROUNDS,
            "task_ray_s": round(median(decorated), 3),
            "ray_job_operator_s": round(median(operator), 3),
            "ratio": round(median(decorated) / median(operator), 3),
            "target": "ratio <= 1.1",
            "samples": {"task_ray": [round(x, 3) for x in decorated], "operator": [round(x, 3) for x in operator]},
        },
    )
    record(
        "result_round_trip",
        {
            "sizes_bytes": list(SIZES),
            "by_size": round_trip,
            "baseline": "the same job printing as many bytes without handing them back",
        },
    )
    print(json.dumps(round_trip, indent=2))


if __name__ == "__main__":
    main()
