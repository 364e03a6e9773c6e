"""The Jobs API client's own knowledge of Ray, held to Ray's."""

from __future__ import annotations

from ray.dashboard.modules.job.common import JOB_LOGS_PATH_TEMPLATE

from airflow_ray_platform.backends.jobs_api import DRIVER_LOG_TEMPLATE, driver_log_name


def test_the_driver_log_is_named_as_ray_names_it():
    assert DRIVER_LOG_TEMPLATE == JOB_LOGS_PATH_TEMPLATE
    assert driver_log_name("raysubmit_abc") == JOB_LOGS_PATH_TEMPLATE.format(submission_id="raysubmit_abc")
