"""Waiting at backfill scale: N deferred job waits in one event loop, as one triggerer runs them.

N = 10, 100, 1000 ``RayJobTrigger`` s over M real, chatty Ray jobs on one local cluster (default poll
interval), beside the per-trigger polling baseline in the same run: what each trigger did before it
shared a poll (its own ``describe_job``, the whole driver log, and a Prometheus scrape of every node,
per interval). Measured for each: calls to the cluster per second (Jobs API requests and metrics
scrapes), bytes of log fetched over the logs' size, event-loop lag (p99, max, from a 10 ms ticker),
detection lag (Ray's job end -> the wait's end; median, max) and the process's peak RSS.
"""

from __future__ import annotations

import asyncio
import logging
import os
import statistics
import time
from collections import Counter
from collections.abc import Awaitable, Callable

import psutil

from airflow_ray_platform import utilisation
from airflow_ray_platform.backends.base import JobState
from airflow_ray_platform.backends.local import LocalBackend
from airflow_ray_platform.config import ClusterSpec, JobSpec
from airflow_ray_platform.job_run import wait_for_cluster
from airflow_ray_platform.triggers.ray import RayJobTrigger
from bench.common import migrate_airflow_db, record

CLUSTER = "bench-triggers"
JOBS = int(os.environ.get("BENCH_TRIGGER_JOBS", "8"))
SIZES = [int(n) for n in os.environ.get("BENCH_TRIGGER_SIZES", "10,100,1000").split(",")]
INTERVAL = 2.0  # RayJobTrigger's default
#: ~25 s of output, a 200-byte line every 0.1 s: about 50 kB of driver log per job.
CHATTY = "python -c \"import time\nfor i in range(250):\n    print(i, 'x' * 200, flush=True); time.sleep(0.1)\""

calls: Counter[str] = Counter()
_baseline_log = logging.getLogger("airflow_ray_platform.triggers.ray.RayJobTrigger")
log_bytes = Counter()


def _count() -> None:
    """Count every call that reaches the cluster (the Jobs API, a node's metrics) and the log bytes read."""

    def wrap(name: str, measure: Callable[[object], int] | None = None) -> None:
        real = getattr(LocalBackend, name)

        def counted(self, *args, **kwargs):
            result = real(self, *args, **kwargs)
            calls[name] += 1
            if measure is not None:
                log_bytes["fetched"] += measure(result)
            return result

        setattr(LocalBackend, name, counted)

    wrap("describe_job")
    wrap("list_jobs")
    wrap("job_logs", lambda text: len(text.encode()))
    wrap("job_log_since", lambda pair: len(pair[0].encode()))  # a read of the file, not of the cluster
    real_scrape = utilisation.scrape

    def scrape(urls):
        calls["metrics_scrape"] += len(urls)
        return real_scrape(urls)

    utilisation.scrape = scrape
    import airflow_ray_platform.job_polling as polling

    polling.scrape = scrape


async def _baseline_wait(backend: LocalBackend, submission_id: str) -> float:
    """The wait as each trigger did it alone: describe, the whole log (its new lines logged one by one on
    the loop), a scrape while running; per interval."""
    offset = 0
    while True:
        info = await asyncio.to_thread(backend.describe_job, CLUSTER, submission_id)
        logs = await asyncio.to_thread(backend.job_logs, CLUSTER, submission_id)
        for line in logs[offset:].splitlines():
            _baseline_log.info("[ray job %s] %s", submission_id, line)
        offset = len(logs)
        if info.state == JobState.RUNNING:
            urls = await asyncio.to_thread(backend.metrics_urls, CLUSTER)
            await asyncio.to_thread(utilisation.scrape, urls)
        if info.state.is_terminal:
            return time.time()
        await asyncio.sleep(INTERVAL)


async def _trigger_wait(trigger: RayJobTrigger) -> float:
    async for _ in trigger.run():
        return time.time()
    raise AssertionError("the trigger ended without an event")


async def _measure(waits: list[Callable[[], Awaitable[float]]]) -> dict:
    lags: list[float] = []
    peak = [psutil.Process().memory_info().rss]
    done = asyncio.Event()

    async def ticker() -> None:
        while not done.is_set():
            before = time.perf_counter()
            await asyncio.sleep(0.01)
            lags.append(time.perf_counter() - before - 0.01)
            if len(lags) % 50 == 0:
                peak[0] = max(peak[0], psutil.Process().memory_info().rss)

    ticking = asyncio.ensure_future(ticker())
    started = time.perf_counter()
    ended = await asyncio.gather(*(wait() for wait in waits))
    elapsed = time.perf_counter() - started
    done.set()
    await ticking
    lags.sort()
    return {"ended": ended, "elapsed_s": elapsed, "loop_lag": lags, "rss_peak_mib": peak[0] / 1024**2}


def _run_case(backend: LocalBackend, n: int, mode: str, index: int) -> dict:
    ids = [f"bench-{mode}-{n}-{index}-{job}" for job in range(JOBS)]
    for submission_id in ids:
        backend.submit_job(CLUSTER, submission_id, JobSpec(entrypoint=CHATTY), {})
    deadline = time.monotonic() + 120
    while any(backend.describe_job(CLUSTER, sid).state != JobState.RUNNING for sid in ids):
        assert time.monotonic() < deadline, "the benchmark's jobs never all ran"
        time.sleep(0.2)
    targets = [ids[i % JOBS] for i in range(n)]
    if mode == "per_trigger_baseline":
        waits = [lambda sid=sid: _baseline_wait(backend, sid) for sid in targets]
    else:
        triggers = [
            RayJobTrigger(ray_conn_id="ray_default", cluster_name=CLUSTER, submission_id=sid) for sid in targets
        ]
        waits = [lambda trigger=trigger: _trigger_wait(trigger) for trigger in triggers]
    calls.clear()
    log_bytes.clear()
    measured = asyncio.run(_measure(waits))
    counted, fetched = dict(calls), log_bytes["fetched"]  # before the checks below call the backend too
    infos = {sid: backend.describe_job(CLUSTER, sid) for sid in ids}
    detection = sorted(
        end - infos[sid].end_time.timestamp() for sid, end in zip(targets, measured["ended"], strict=True)
    )
    log_size = sum(len(backend.job_logs(CLUSTER, sid).encode()) for sid in targets)
    cluster_calls = sum(counted.get(name, 0) for name in ("describe_job", "list_jobs", "job_logs", "metrics_scrape"))
    lags = measured["loop_lag"]
    return {
        "triggers": n,
        "jobs": JOBS,
        "elapsed_s": round(measured["elapsed_s"], 2),
        "cluster_calls_per_s": round(cluster_calls / measured["elapsed_s"], 2),
        "calls": counted,
        "log_bytes_fetched_over_log_size": round(fetched / log_size, 3),
        "loop_lag_p99_ms": round(1000 * lags[int(0.99 * (len(lags) - 1))], 1),
        "loop_lag_max_ms": round(1000 * lags[-1], 1),
        "detection_lag_median_s": round(statistics.median(detection), 2),
        "detection_lag_max_s": round(detection[-1], 2),
        "rss_peak_mib": round(measured["rss_peak_mib"], 1),
    }


def main() -> None:
    migrate_airflow_db()  # the triggers' hooks look their connection up
    _count()
    backend = LocalBackend()
    spec = ClusterSpec(head={"cpu": "2", "memory": "3Gi", "object_store_memory": "200Mi"})
    backend.create_or_get_cluster(CLUSTER, spec, {})
    wait_for_cluster(backend, CLUSTER, timeout=300, poll_interval=0.2)
    results: dict[str, list[dict]] = {"shared_poll": [], "per_trigger_baseline": []}
    try:
        for index, n in enumerate(SIZES):
            for mode in ("shared_poll", "per_trigger_baseline"):
                results[mode].append(_run_case(backend, n, mode, index))
                print(mode, results[mode][-1], flush=True)
    finally:
        backend.delete_cluster(CLUSTER)
    record(
        "trigger_scale",
        {
            **results,
            "poll_interval_s": INTERVAL,
            "targets_at_1000": "cluster calls/s <= 2 per interval (1.0/s); log bytes <= 1.1x; loop lag p99 <= 50 "
            "ms; detection lag <= one interval",
        },
    )


if __name__ == "__main__":
    main()
