"""An existing pipeline that gains a Ray step: PythonOperator → ``@task.ray`` fan-out → a downstream check;
the Ray step's outlet schedules another DAG."""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.providers.standard.operators.python import PythonOperator
from airflow.sdk import DAG, Asset, task

ZONE_SCORES = Asset("zone_scores")
ZONES = ("north", "south", "east", "west")
CONFIGURATION = {"name": "deploy-pipeline", "owner": "tests", "team": "platform", "cluster": {"name": "deploy-shared"}}


def list_zones(ds: str) -> list[str]:
    return [f"{ds}/{zone}" for zone in ZONES]


def score_zones(zones: list[str], seconds: float) -> dict[str, int]:
    """One Ray task per zone; a pause first, long enough for the test to kill the worker once."""
    import time

    import ray

    @ray.remote(num_cpus=0.1)
    def score(zone: str) -> int:
        return len(zone)

    time.sleep(seconds)
    return dict(zip(zones, ray.get([score.remote(zone) for zone in zones]), strict=True))


@task
def check(scores: dict[str, int], ds: str | None = None) -> int:
    assert scores == {f"{ds}/{zone}": len(f"{ds}/{zone}") for zone in ZONES}, scores
    return len(scores)


# Daily until March 2026: the test's backfill makes its only runs.
with DAG("pipeline_with_ray_step", schedule="@daily", start_date=datetime(2026, 1, 1), end_date=datetime(2026, 3, 1)):
    zones = PythonOperator(task_id="list_zones", python_callable=list_zones)
    scores = task.ray(
        score_zones,
        task_id="score_zones",
        job_configuration=CONFIGURATION,
        deferrable=False,
        poll_interval=1.0,
        retries=1,
        retry_delay=timedelta(seconds=1),
        outlets=[ZONE_SCORES],
    )(zones.output, 8)
    check(scores)

with DAG("zone_scores_consumer", schedule=[ZONE_SCORES], start_date=datetime(2026, 1, 1), catchup=False):

    @task
    def consume(triggering_asset_events=None) -> int:
        return len(triggering_asset_events[ZONE_SCORES])

    consume()
