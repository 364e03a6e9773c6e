"""What the Ray view shows for the numbers in the records: durations, sizes, resources and costs."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow_ray_platform.plugins.ui import humane
from airflow_ray_platform.plugins.ui.app import running_now


def test_durations_sizes_resources_and_money_read_as_people_write_them():
    assert [humane.duration(s) for s in (None, 0.4, 42, 185, 7620, 3 * 86400 + 4 * 3600)] == [
        "-",
        "0 s",
        "42 s",
        "3 min 05 s",
        "2 h 07 min",
        "3 d 04 h",
    ]
    assert [humane.size(b) for b in (None, 512, 200 * 1024**2, 1073741824.0, 1.5 * 1024**3, 64 * 1024**3)] == [
        "-",
        "512 B",
        "200 MiB",
        "1.0 GiB",
        "1.5 GiB",
        "64 GiB",
    ]
    shown = humane.resources({"CPU": 1.0, "GPU": 0.0, "memory": 1073741824.0, "object_store_memory": 104857600.0})
    assert shown == "1 core · 1.0 GiB memory · 100 MiB object store"
    assert humane.resources({"CPU": 8, "GPU": 2, "memory": 32 * 1024**3, "TPU": 4}) == (
        "8 cores · 32 GiB memory · 2 GPUs · TPU 4"
    )
    assert (humane.resources(None), humane.money(None), humane.money(0.01234), humane.money(1234.5)) == (
        "-",
        "-",
        "0.0123",
        "1,234.50",
    )


def test_a_failures_reason_is_the_drivers_last_words_with_the_exit_code():
    ray_says = (
        "Job entrypoint command failed with exit code 1, last available logs (truncated to 20,000 chars):\n"
        'Traceback (most recent call last):\n  File "train.py", line 3\nValueError: zone 17 has no rows\n'
    )
    assert humane.reason(ray_says) == "exit code 1: ValueError: zone 17 has no rows"
    assert humane.reason("stopped: the task was killed") == "stopped: the task was killed"
    assert humane.reason(None) == "-" and humane.reason("x" * 500).endswith(" …")
    assert len(humane.reason("x" * 500)) == humane.REASON_CHARACTERS


def test_running_now_rows_say_how_long_and_whether_the_job_has_been_seen_running():
    now = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
    jobs = [
        {
            "submission_id": "a/b",
            "state": "PENDING",
            "team": "t",
            "dag_id": "d",
            "task_id": "x",
            "cluster_name": "c",
            "submitted_at": now - timedelta(seconds=95),
            "running_at": None,
        },
        {
            "submission_id": "r",
            "state": "RUNNING",
            "team": None,
            "dag_id": None,
            "task_id": None,
            "cluster_name": None,
            "submitted_at": (now - timedelta(hours=2)).replace(tzinfo=None),
            "running_at": now - timedelta(hours=2) + timedelta(seconds=12),
        },
    ]
    pending, running = running_now(jobs, now)
    assert pending["href"] == "jobs/a%2Fb" and pending["elapsed"] == "1 min 35 s"
    assert pending["queue_wait"] == "1 min 35 s (not yet seen running)"
    assert (running["elapsed"], running["queue_wait"], running["team"], running["task"]) == (
        "2 h 00 min",
        "12 s",
        "-",
        "- / -",
    )
