"""Persisted job logs: file:// always, s3:// against a real S3-compatible server (SeaweedFS)."""

from __future__ import annotations

import pytest

from airflow_ray_platform.backends.base import LOG_CHUNK_BYTES as CHUNK_BYTES
from airflow_ray_platform.records.object_storage import ObjectStorage, ObjectStorageError, log_key

from ..conftest import S3_ACCESS_KEY as ACCESS_KEY
from ..conftest import S3_SECRET_KEY as SECRET_KEY


def _big_log(megabytes: int):
    line = b"".join(b"zone %05d rmse 0.93 r2 0.99\n" % i for i in range(1000))
    for _ in range(megabytes * 1024 * 1024 // len(line) + 1):
        yield line


def _expected(megabytes: int) -> bytes:
    return b"".join(_big_log(megabytes))


def test_key_is_predictable():
    assert log_key("local", "c", "2026-06-01T12:00:00+00:00", "s1") == "local/c/2026-06-01T12-00-00_00-00/s1.log"


def test_file_storage_streams_large_logs(tmp_path):
    storage = ObjectStorage(f"file://{tmp_path}/logs")
    uri = storage.write("local/c/t/s1.log", _big_log(20))
    assert uri == f"file://{tmp_path}/logs/local/c/t/s1.log"
    chunks = list(storage.read(uri))
    assert len(chunks) > 1 and max(len(c) for c in chunks) <= CHUNK_BYTES
    assert b"".join(chunks) == _expected(20)


def test_bad_uris_are_clear_errors(tmp_path):
    with pytest.raises(ObjectStorageError, match="must be file:// or s3://"):
        ObjectStorage("gs://bucket")
    storage = ObjectStorage(f"file://{tmp_path}")
    with pytest.raises(ObjectStorageError, match="reading 'file://"):
        list(storage.read(f"file://{tmp_path}/missing.log"))


def test_s3_storage_streams_multipart_and_reads_back(s3_server):
    storage = ObjectStorage(
        "s3://ray-logs/prod",
        endpoint_url=s3_server,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        region_name="us-east-1",
    )
    uri = storage.write("local/c/t/s1.log", _big_log(20))  # > 2 parts of 8 MiB
    assert uri == "s3://ray-logs/prod/local/c/t/s1.log"
    assert b"".join(storage.read(uri)) == _expected(20)


def test_s3_wrong_credentials_are_a_clear_error(s3_server):
    storage = ObjectStorage(
        "s3://ray-logs",
        endpoint_url=s3_server,
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key="wrong",
        region_name="us-east-1",
    )
    with pytest.raises(ObjectStorageError, match=r"writing 'k.log' to s3://ray-logs: .*(SignatureDoesNotMatch|Access)"):
        storage.write("k.log", [b"line\n"])


@pytest.mark.usefixtures("airflow_db", "shared_cluster")
def test_a_deleted_clusters_job_log_is_read_back_from_s3(s3_server, backend, monkeypatch):
    from airflow.utils.state import DagRunState

    from airflow_ray_platform.hooks.ray import RayHook
    from airflow_ray_platform.spec.naming import TaskIdentity

    from ..test_dags import ray_e2e_dags as dags

    for variable, value in {
        "AWS_ENDPOINT_URL": s3_server,
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(variable, value)
    run = dags.ray_job_ephemeral_s3_logs.test(run_conf={"entrypoint": "python -c \"print('zone log line')\""})
    assert run.state == DagRunState.SUCCESS
    identity = TaskIdentity("ray_job_ephemeral_s3_logs", "job", run.run_id)
    assert backend.describe_cluster(identity.ephemeral_cluster_name("e2e-s3-logs")) is None
    log = RayHook().read_persisted_job_log(identity.submission_id(), log_storage_uri="s3://ray-logs/e2e")
    assert "zone log line" in log


def test_a_stored_uri_never_reads_outside_the_storage(tmp_path):
    """Found by review: ``read`` followed ``..`` in a stored URI."""
    (tmp_path / "secret").write_text("outside")
    storage = ObjectStorage(f"file://{tmp_path}/logs")
    for uri in (
        f"file://{tmp_path}/logs/../secret",
        f"file://{tmp_path}/logs/a/../../secret",
        f"file://{tmp_path}/logs//x",
    ):
        with pytest.raises(ObjectStorageError, match="is not below this storage"):
            b"".join(storage.read(uri))
