"""DAGs of ``@task.ray`` that the decorator's end-to-end tests run with dag.test()."""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG, task

from airflow_ray_platform.decorators.ray import ray_task

SHARED = "shared"
ON_SHARED = {"name": "e2e-task", "owner": "tests", "team": "platform", "cluster": {"name": SHARED}}
START = datetime(2026, 1, 1)


@task
def zones() -> list[str]:
    return ["north", "south", "east"]


def fan_out(zones: list[str], ds: str | None = None) -> dict:
    """A small per-zone fan-out: one Ray task per zone, the results gathered in the driver."""
    import ray

    @ray.remote(num_cpus=0.1)
    def fit(zone: str) -> float:
        return float(len(zone))

    scores = ray.get([fit.remote(zone) for zone in zones])
    return {"scores": dict(zip(zones, scores, strict=True)), "ds": ds}


@task
def check(result: dict) -> str:
    assert result["scores"] == {"north": 5.0, "south": 5.0, "east": 4.0}, result
    return "checked"


def _pipeline(dag_id: str, **ray_kwargs) -> DAG:
    with DAG(dag_id, schedule=None, start_date=START) as dag:
        trained = task.ray(fan_out, task_id="job", job_configuration=ON_SHARED, poll_interval=0.5, **ray_kwargs)(
            zones()
        )
        check(trained)
    return dag


ray_task_blocking = _pipeline("ray_task_blocking", deferrable=False)
ray_task_deferrable = _pipeline("ray_task_deferrable", deferrable=True)
ray_task_retry = _pipeline("ray_task_retry", deferrable=False, retries=1, retry_delay=timedelta(0))


def split(a: int, b: int) -> dict:
    return {"sum": a + b, "product": a * b}


def fails(zone: str) -> None:
    raise ValueError(f"zone {zone} diverged")


def slow(seconds: float) -> str:
    import time

    time.sleep(seconds)
    return "finished once"


def pickled(when, values):
    return {"year": when.year, "values": sorted(values)}


with DAG("ray_task_shapes", schedule=None, start_date=START) as ray_task_shapes:
    ray_task(split, task_id="split", job_configuration=ON_SHARED, multiple_outputs=True, deferrable=True)(2, b=3)
    ray_task(fails, task_id="fails", job_configuration=ON_SHARED, deferrable=False)("17")
    ray_task(pickled, task_id="pickled", job_configuration=ON_SHARED, serializer="cloudpickle", deferrable=False)(
        START, {3, 1, 2}
    )

with DAG("ray_task_slow", schedule=None, start_date=START) as ray_task_slow:
    ray_task(slow, task_id="job", job_configuration=ON_SHARED, deferrable=False, poll_interval=0.5)(8)

with DAG("ray_task_endless", schedule=None, start_date=START) as ray_task_endless:
    ray_task(slow, task_id="job", job_configuration=ON_SHARED, deferrable=False, poll_interval=0.5)(300)

# A cluster of the task's own, deleted when its job ends.
OWN_CLUSTER = {
    "name": "e2e-task-own",
    "owner": "tests",
    "team": "platform",
    "cluster": {"head": {"cpu": "1", "memory": "1Gi", "object_store_memory": "100Mi"}},
}
with DAG("ray_task_ephemeral", schedule=None, start_date=START) as ray_task_ephemeral:
    ray_task(split, task_id="job", job_configuration=OWN_CLUSTER, deferrable=True, poll_interval=0.5)(4, 5)
