"""``@task.ray``: a plain Python function as a Ray job, with ``RayJobOperator``'s guarantees.

::

    @task.ray(job_configuration={"name": "zones", "owner": "ml", "team": "forecasting"})
    def train(zones: list[str]) -> dict[str, float]:
        import ray

        @ray.remote
        def fit(zone):
            ...

        return dict(zip(zones, ray.get([fit.remote(zone) for zone in zones])))

The function is the job's driver on the cluster ``RayJobOperator``'s rules choose (``cluster_name``, one the
configuration names, or an ephemeral one); inside it, ``ray.remote`` fans out. Its arguments (XComArgs and
templates rendered) travel as JSON unless ``serializer`` says otherwise; its return value, JSON, becomes the
task's ``return_value`` (``multiple_outputs`` as anywhere in Airflow). The submission id is deterministic,
so a retry or a resumed task reattaches and gets the value without running the function again; killing
the task stops the job; a failure carries the driver's traceback; policy and audit apply as to any Ray task.
What is refused (a lambda, a closure, another decorator, a name taken from the DAG file) is refused when
the DAG is parsed: :mod:`~airflow_ray_platform.runs.function_job`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from airflow.exceptions import AirflowException
from airflow.sdk import Context
from airflow.sdk.bases.decorator import DecoratedOperator, TaskDecorator, task_decorator_factory

from airflow_ray_platform.operators.ray import JobConfigurationArg, RayJobOperator
from airflow_ray_platform.runs.function_job import Serializer, capture_function, driver_job, driver_script
from airflow_ray_platform.spec.models import JobConfiguration, JobConfigurationError, read_configuration_file
from airflow_ray_platform.spec.results import JobResult

#: What stands in for the driver while the DAG is parsed (the real one needs the call's arguments).
_PARSE_TIME_DRIVER = "pass"


class RayDecoratedOperator(DecoratedOperator, RayJobOperator):
    """The operator behind ``@task.ray``: ``RayJobOperator`` whose job runs the decorated function.

    :param python_callable: the function (a module-level ``def`` that imports what it uses).
    :param job_configuration: as ``RayJobOperator``'s, with a ``job`` section (if any) that leaves out
        ``entrypoint`` and ``args``: resources, ``runtime_env``, ``timeout`` apply to the function's job.
    :param serializer: how arguments reach the job: ``json`` (default), ``cloudpickle`` or ``pickle``.
    """

    custom_operator_name = "@task.ray"
    template_fields: Sequence[str] = (*DecoratedOperator.template_fields, *RayJobOperator.template_fields)
    template_fields_renderers = {
        **DecoratedOperator.template_fields_renderers,
        **RayJobOperator.template_fields_renderers,
    }

    def __init__(
        self,
        *,
        python_callable: Callable[..., Any],
        job_configuration: JobConfigurationArg,
        serializer: Serializer | str = Serializer.JSON,
        **kwargs: Any,
    ) -> None:
        self.captured = capture_function(python_callable)
        try:
            self.serializer = Serializer(serializer)
        except ValueError:
            raise JobConfigurationError(
                f"@task.ray: serializer {serializer!r} is none of {[str(choice) for choice in Serializer]}"
            ) from None
        self._driver = _PARSE_TIME_DRIVER
        super().__init__(python_callable=python_callable, job_configuration=job_configuration, **kwargs)

    def _as_run(self, job_configuration: JobConfigurationArg) -> JobConfigurationArg:
        """The configuration with the function's driver as its job."""
        raw: Any = job_configuration
        if isinstance(job_configuration, JobConfiguration):
            raw = job_configuration.model_dump(mode="json", exclude_none=True)
        elif isinstance(job_configuration, str | Path):
            raw = read_configuration_file(Path(job_configuration))
        if not isinstance(raw, Mapping):
            return job_configuration  # the loader names the problem
        job = dict(raw.get("job") or {})  # a job section with an entrypoint is refused by driver_job
        return {**raw, "job": driver_job(job, self._driver)}

    def _admit(self, context: Context, *, check_configuration: bool = True) -> None:
        """The driver for this call (arguments rendered, context values taken by name) before anything else:
        every entry point (start, resumed after the cluster wait or the job's) admits first."""
        self._driver = driver_script(
            self.captured, self.serializer, self.op_args, self.op_kwargs, context, f"<@task.ray {self.task_id}>"
        )
        self.__dict__.pop("config", None)
        super()._admit(context, check_configuration=check_configuration)

    def _returned(self, submission_id: str, result: JobResult) -> Any:
        if not result.present and result.refused is None:
            raise AirflowException(
                f"Ray job {submission_id!r} succeeded, but {self.captured.name} handed no value back: did it exit "
                "before returning (sys.exit, os._exit)?"
            )
        return super()._returned(submission_id, result)


def ray_task(
    python_callable: Callable[..., Any] | None = None, multiple_outputs: bool | None = None, **kwargs: Any
) -> TaskDecorator:
    """``@task.ray``: run the decorated function as a Ray job's driver (see :class:`RayDecoratedOperator`)."""
    return task_decorator_factory(
        python_callable=python_callable,
        multiple_outputs=multiple_outputs,
        decorated_operator_class=RayDecoratedOperator,
        **kwargs,
    )
