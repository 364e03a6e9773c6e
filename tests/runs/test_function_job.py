"""A function as a job's driver: what is refused at DAG parse, and the driver a plain Python runs (no Ray)."""

from __future__ import annotations

import base64
import functools
import os
import shlex
import subprocess
import zlib
from datetime import datetime

import pytest
from airflow.sdk import task

from airflow_ray_platform.runs.function_job import (
    DRIVER_LIMIT_BYTES,
    DRIVER_VARIABLE,
    CapturedFunction,
    Serializer,
    capture_function,
    driver_job,
    driver_script,
)
from airflow_ray_platform.spec.models import JobConfigurationError, JobSpec
from airflow_ray_platform.spec.results import RESULT_MARKER, ResultScanner

LIMIT = 10


def plain(a: int, b: int = 2, *, ds: str | None = None) -> dict:
    """A docstring; comments and blank lines are kept."""
    # a comment
    total = a + b

    return {"total": total, "ds": ds}


def uses_module_constant(a):
    return a + LIMIT


def default_from_module(a=LIMIT):
    return a


def uses_os():
    return os.getcwd()


def takes_ti(ti):
    return 1


async def coroutine():
    return 1


@functools.lru_cache
def cached(a):
    return a


CONFIG = {"name": "x", "owner": "o", "team": "t", "cluster": {"name": "c"}}


@task.ray(
    job_configuration=CONFIG,  # a decorator over several lines, with a comment
)
def decorated(a):
    return a


@task.ray(job_configuration=CONFIG)
@functools.lru_cache
def nested(a):
    return a


def _closure():
    captured = 3

    def inner():
        return captured

    return inner


def run_driver(script: str) -> subprocess.CompletedProcess:
    """The driver as a job runs it: the job section's command through a shell, its script in the environment."""
    job = JobSpec.model_validate(driver_job({}, script))
    env = {**os.environ, **job.runtime_env.env_vars}
    return subprocess.run(["/bin/sh", "-c", job.command], env=env, capture_output=True, text=True, timeout=60)


def test_a_plain_function_is_captured_without_its_decorator():
    captured = capture_function(plain)
    assert captured.name == "plain" and captured.context_parameters == ("ds",)
    assert captured.source.startswith("def plain(a: int, b: int = 2, *, ds: str | None = None) -> dict:")
    assert "# a comment" in captured.source
    assert capture_function(decorated.function).source == "def decorated(a):\n    return a\n"


@pytest.mark.parametrize(
    ("function", "rule"),
    [
        (lambda: 1, "a lambda has no source"),
        (coroutine, "a coroutine cannot be"),
        (_closure(), "closes over ['captured']"),
        (uses_module_constant, "uses ['LIMIT'] from its module"),
        (default_from_module, "uses ['LIMIT'] from its module"),
        (uses_os, "uses ['os'] from its module"),
        (cached, "other decorators (functools.lru_cache)"),
        (nested.function, "other decorators (functools.lru_cache)"),
        (takes_ti, "parameter(s) ['ti'] would be Airflow objects"),
    ],
)
def test_what_a_job_could_not_run_is_refused_by_name(function, rule):
    with pytest.raises(JobConfigurationError, match=r"@task\.ray") as refused:
        capture_function(function)
    assert rule in str(refused.value)


def test_the_driver_runs_the_function_through_a_shell_and_hands_its_value_back():
    context = {"ds": "2026-01-02", "ti": object()}
    script = driver_script(capture_function(plain), Serializer.JSON, [40], {}, context, "<@task.ray t>")
    done = run_driver(script)
    assert done.returncode == 0, done.stderr
    scanner = ResultScanner()
    assert scanner.scan([done.stdout.encode()]).value == {"total": 42, "ds": "2026-01-02"}


def test_pickled_arguments_carry_what_json_cannot():
    def_source = "def years(when, values):\n    return {'year': when.year, 'values': sorted(values)}\n"
    captured = CapturedFunction("years", def_source, ())
    script = driver_script(captured, Serializer.PICKLE, [datetime(2026, 3, 4), {3, 1}], {}, {}, "<t>")
    done = run_driver(script)
    assert done.returncode == 0, done.stderr
    assert ResultScanner().scan([done.stdout.encode()]).value == {"year": 2026, "values": [1, 3]}
    with pytest.raises(JobConfigurationError, match=r"an argument is not JSON .* serializer='cloudpickle'"):
        driver_script(captured, Serializer.JSON, [{3, 1}], {}, {}, "<t>")


def test_a_failing_function_prints_its_own_traceback_with_source_and_exits_1():
    source = "def boom(zone):\n    raise ValueError(f'zone {zone} diverged')\n"
    done = run_driver(driver_script(CapturedFunction("boom", source, ()), Serializer.JSON, ["17"], {}, {}, "<f>"))
    assert done.returncode == 1
    assert 'File "<f>", line 3, in boom' in done.stderr
    assert "raise ValueError(f'zone {zone} diverged')" in done.stderr
    assert done.stderr.rstrip().endswith("ValueError: zone 17 diverged")
    assert RESULT_MARKER not in done.stdout


def test_a_value_that_is_not_json_fails_the_job_with_the_reason():
    done = run_driver(
        driver_script(CapturedFunction("f", "def f():\n    return {1, 2}\n", ()), "json", [], {}, {}, "<f>")
    )
    assert done.returncode == 1
    assert "@task.ray: f returned a value that is not JSON" in done.stderr


def test_the_job_section_keeps_the_users_options_and_refuses_an_entrypoint():
    job = driver_job({"runtime_env": {"env_vars": {"A": "1"}, "pip": ["numpy"]}, "timeout": 60}, "print(1)")
    assert job["runtime_env"]["env_vars"]["A"] == "1" and job["runtime_env"]["pip"] == ["numpy"]
    assert job["timeout"] == 60
    assert zlib.decompress(base64.b64decode(job["runtime_env"]["env_vars"][DRIVER_VARIABLE])) == b"print(1)"
    assert shlex.split(JobSpec.model_validate(job).command)[:2] == ["python", "-c"]
    for field in ("entrypoint", "args"):
        with pytest.raises(JobConfigurationError, match=f"job_configuration.job.{field}: @task.ray runs"):
            driver_job({field: "python x.py"}, "print(1)")


def test_a_driver_over_the_environment_limit_is_refused():
    noise = base64.b64encode(os.urandom(DRIVER_LIMIT_BYTES)).decode()
    with pytest.raises(JobConfigurationError, match=r"over the limit of .*pass large data through storage"):
        driver_job({}, f"x = {noise!r}")


def test_the_driver_survives_ray_job_submits_requoting():
    """KubeRay's submitter passes the entrypoint through ``ray job submit -- …``, which joins its words
    with ``subprocess.list2cmdline`` before Ray's shell runs them: the one-liner must survive that too."""
    job = JobSpec.model_validate(driver_job({}, "print('survived')"))
    requoted = subprocess.list2cmdline(shlex.split(job.command))
    env = {**os.environ, **job.runtime_env.env_vars}
    done = subprocess.run(["/bin/sh", "-c", requoted], env=env, capture_output=True, text=True, timeout=60)
    assert done.stdout == "survived\n", done.stderr


def test_the_decorated_task_is_checked_at_parse_unless_jinja_renders_its_configuration_first():
    from datetime import datetime

    from airflow.sdk import DAG

    with DAG("parse_checks", schedule=None, start_date=datetime(2026, 1, 1)):
        task.ray(plain, task_id="templated_path", job_configuration="{{ var.value.ray_configuration }}")(1)
        with pytest.raises(JobConfigurationError, match=r"job_configuration.job.entrypoint: @task\.ray runs"):
            task.ray(plain, task_id="with_entrypoint", job_configuration={**CONFIG, "job": {"entrypoint": "x"}})(1)
        with pytest.raises(JobConfigurationError, match=r"serializer 'yaml' is none of"):
            task.ray(plain, task_id="bad_serializer", job_configuration=CONFIG, serializer="yaml")(1)
