"""A Ray job hands a JSON value back to RayJobOperator (``hand_back``): XCom ``return_value``, the job's
record, the same on the local and the emulated KubeRay backend; a value over the limit, or one carrying
the cluster's token, fails the task with the reason and reaches neither XCom nor the record."""

from __future__ import annotations

import shlex

import pytest
import sqlalchemy as sa
from airflow.models.xcom import XComModel
from airflow.utils.session import create_session
from airflow.utils.state import DagRunState

from airflow_ray_platform.backends.base import JobState
from airflow_ray_platform.spec.results import RESULT_LIMIT_BYTES

from ..helpers import jobs_of, recorded_job
from ..test_dags import ray_e2e_dags as dags

pytestmark = pytest.mark.usefixtures("airflow_db", "shared_cluster")


def python(code: str) -> str:
    return f"python -c {shlex.quote(code)}"


HAND_BACK = python(
    "from airflow_ray_platform.spec.results import hand_back\n"
    "print('training…')\n"
    "hand_back({'rows': 3, 'zones': ['north', 'south']})\n"
    "print('done')"
)


def xcom_values(run) -> list:
    with create_session() as session:
        rows = session.scalars(sa.select(XComModel).where(XComModel.run_id == run.run_id)).all()
        return [(row.key, row.value) for row in rows]


@pytest.mark.parametrize("dag", [dags.ray_job_blocking, dags.ray_job_deferrable], ids=["blocking", "deferrable"])
def test_the_jobs_value_becomes_return_value_and_stays_with_its_record(dag, each_backend, capfd):
    run = dag.test(run_conf={"entrypoint": HAND_BACK})
    assert run.state == DagRunState.SUCCESS
    (job,) = jobs_of(each_backend, run, dag.dag_id)
    ti = run.get_task_instance("job")
    assert ti.xcom_pull(task_ids="job") == {"rows": 3, "zones": ["north", "south"]}
    assert ti.xcom_pull(task_ids="job", key="submission_id") == job.submission_id
    assert recorded_job(job.submission_id)["result"] == {"value": {"rows": 3, "zones": ["north", "south"]}}
    out = capfd.readouterr().out
    assert "(hands back a result of 36 characters)" in out and "airflow-ray-result:" not in out  # shown by its size


def test_without_a_value_return_value_stays_the_submission_id(backend):
    run = dags.ray_job_blocking.test(run_conf={"entrypoint": python("print('no result')")})
    (job,) = jobs_of(backend, run, "ray_job_blocking")
    assert run.get_task_instance("job").xcom_pull(task_ids="job") == job.submission_id
    assert recorded_job(job.submission_id)["result"] is None


def test_a_value_over_the_limit_fails_the_task_with_the_reason(backend, capfd):
    code = f"import json; print('airflow-ray-result:' + json.dumps('x' * {RESULT_LIMIT_BYTES + 1}))"
    run = dags.ray_job_blocking.test(run_conf={"entrypoint": python(code)})
    assert run.state == DagRunState.FAILED
    (job,) = jobs_of(backend, run, "ray_job_blocking")
    assert job.state == JobState.SUCCEEDED
    out = capfd.readouterr().out
    assert f"Ray job '{job.submission_id}' succeeded, but the job's result is {RESULT_LIMIT_BYTES + 3} bytes" in out
    assert f"over the limit of {RESULT_LIMIT_BYTES} bytes" in out
    assert "return_value" not in dict(xcom_values(run))
    assert "over the limit" in recorded_job(job.submission_id)["result"]["refused"]


def test_the_clusters_token_cannot_be_read_back_through_the_channel(backend, shared_cluster, capfd):
    """A job can read its cluster's token (it needs it to reach Ray): handing it back, plainly or with JSON
    escapes, is refused, and it reaches neither XCom nor the record. Airflow reads nothing the job points
    at, so a link to the token file gives nothing either."""
    token = backend.connection(shared_cluster.name).token
    assert token
    code = (
        "import json, os\n"
        "token = open(os.environ['RAY_AUTH_TOKEN_PATH']).read().strip()\n"
        "escaped = ''.join('\\\\u%04x' % ord(c) for c in token)\n"
        "os.symlink(os.environ['RAY_AUTH_TOKEN_PATH'], 'result.json')\n"  # nothing reads a path the job names
        "print('airflow-ray-result:\"' + escaped + '\"')"
    )
    run = dags.ray_job_blocking.test(run_conf={"entrypoint": python(code)})
    assert run.state == DagRunState.FAILED
    (job,) = jobs_of(backend, run, "ray_job_blocking")
    assert job.state == JobState.SUCCEEDED
    assert "the job's result contains the cluster's authentication token: it is not kept" in capfd.readouterr().out
    assert all(token not in repr(value) for _, value in xcom_values(run))
    assert token not in repr(recorded_job(job.submission_id))
