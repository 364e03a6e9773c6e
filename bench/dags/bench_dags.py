"""Airflow DAGs the benchmarks run with dag.test()."""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path

from airflow.sdk import DAG, task

from airflow_ray_platform.operators.ray import RayJobOperator

sys.path.insert(0, str(Path(__file__).parents[2] / "dags" / "zone_training"))

BENCH_CLUSTER = "bench"
START = datetime(2026, 1, 1)
TRIVIAL = {
    "name": "bench",
    "owner": "bench",
    "team": "bench",
    "cluster": {"name": BENCH_CLUSTER},
    "job": {"entrypoint": "python -c \"print('ok')\""},
}

#: The job the CLI benchmark runs both ways (``bench/cli_overhead.py``): ten seconds of work.
TEN_SECONDS = {**TRIVIAL, "name": "bench-cli", "job": {"entrypoint": 'python -c "import time; time.sleep(10)"'}}

with DAG("bench_cli_operator", schedule=None, start_date=START) as bench_cli_operator:
    RayJobOperator(task_id="job", job_configuration=TEN_SECONDS, deferrable=False, poll_interval=1.0)

with DAG("bench_control_plane_blocking", schedule=None, start_date=START) as bench_control_plane_blocking:
    RayJobOperator(task_id="job", job_configuration=TRIVIAL, deferrable=False, poll_interval=0.2)

with DAG("bench_control_plane_deferrable", schedule=None, start_date=START) as bench_control_plane_deferrable:
    RayJobOperator(task_id="job", job_configuration=TRIVIAL, deferrable=True, poll_interval=0.2)

with DAG(
    "bench_mapped_zones", schedule=None, start_date=START, params={"zones": 10, "samples": 2000}
) as bench_mapped_zones:

    @task
    def zones(params=None) -> list[int]:
        return list(range(int(params["zones"])))

    @task
    def train(zone: int, params=None) -> float:
        """The one-Airflow-task-per-zone pattern that one Ray job replaces."""
        from train_zones import fit_zone

        return fit_zone(zone, samples=int(params["samples"]))["rmse"]

    train.expand(zone=zones())

SLEEPING = {**TRIVIAL, "job": {"entrypoint": "python -c 'import time; time.sleep({{ params.seconds }})'"}}
for _deferrable in (False, True):
    for _get_logs in (False, True):
        _dag_id = f"bench_kuberay_{'deferrable' if _deferrable else 'blocking'}{'_logs' if _get_logs else ''}"
        with DAG(_dag_id, schedule=None, start_date=START, params={"seconds": 2}) as _dag:
            RayJobOperator(
                task_id="job", job_configuration=SLEEPING, deferrable=_deferrable, get_logs=_get_logs, poll_interval=2
            )
        globals()[_dag_id] = _dag

#: A 3 s job through each backend that reaches an existing cluster: the local backend's registry, and a
#: dashboard connection (``ray_dashboard``, set by bench/detection_lag.py) to the same cluster.
THREE_SECONDS = {**TRIVIAL, "job": {"entrypoint": "python -c 'import time; time.sleep(3)'"}}
for _backend, _conn in (("local", "ray_default"), ("dashboard", "ray_dashboard")):
    for _deferrable in (False, True):
        _dag_id = f"bench_detection_{_backend}_{'deferrable' if _deferrable else 'blocking'}"
        with DAG(_dag_id, schedule=None, start_date=START) as _dag:
            RayJobOperator(
                task_id="job",
                job_configuration=THREE_SECONDS,
                ray_conn_id=_conn,
                deferrable=_deferrable,
                poll_interval=1,
            )
        globals()[_dag_id] = _dag


# ``bench/task_ray.py``: the same fan-out as a decorated function and as an entrypoint job.
FAN_OUT_CODE = (
    "import ray\n"
    "from airflow_ray_platform.spec.results import hand_back\n"
    "square = ray.remote(num_cpus=0.1)(lambda x: x * x)\n"
    "hand_back(sum(ray.get([square.remote(i) for i in range(8)])))"
)
FAN_OUT_JOB = {**TRIVIAL, "name": "bench-task-ray", "job": {"entrypoint": "python -c", "args": [FAN_OUT_CODE]}}


def fan_out(count: int) -> int:
    import ray

    square = ray.remote(num_cpus=0.1)(lambda x: x * x)
    return sum(ray.get([square.remote(i) for i in range(count)]))


with DAG("bench_task_ray", schedule=None, start_date=START) as bench_task_ray:
    on_bench = {key: value for key, value in TRIVIAL.items() if key != "job"}  # the function is the job
    task.ray(fan_out, task_id="job", job_configuration=on_bench, deferrable=False, poll_interval=0.2)(8)

with DAG("bench_task_ray_operator", schedule=None, start_date=START) as bench_task_ray_operator:
    RayJobOperator(task_id="job", job_configuration=FAN_OUT_JOB, deferrable=False, poll_interval=0.2)

# The result round trip: a job that hands back ``size`` bytes, and one that only prints as many.
ROUND_TRIP = {
    **TRIVIAL,
    "name": "bench-result",
    "job": {"entrypoint": "python -c", "args": ["{{ params.code }}"]},
}
with DAG("bench_result_round_trip", schedule=None, start_date=START, params={"code": "print(1)"}) as bench_result:
    RayJobOperator(task_id="job", job_configuration=ROUND_TRIP, deferrable=False, poll_interval=0.2)
