"""A real Airflow deployment for the tests: api-server, scheduler, dag-processor and triggerer as
separate processes, started from the same settings (``deploy/airflow.env``) and the same commands as
``docker-compose.yaml``, on a PostgreSQL database of its own, driven through Airflow's REST API.

``dag.test()`` runs triggers in the task's own process; here a deferred task's trigger runs in the
triggerer, its resumption in a new task process, as in production.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import sqlalchemy as sa
import yaml
from cryptography.fernet import Fernet

from airflow_ray_platform.backends.local.backend import LocalBackend
from airflow_ray_platform.backends.local.processes import free_ports

from ..statsd_receiver import StatsdReceiver
from ..waiting import wait_for

REPO = Path(__file__).parents[2]
COMPOSE_FILE = REPO / "docker-compose.yaml"
SHARED_SETTINGS = REPO / "deploy" / "airflow.env"
#: The compose services this harness runs as processes, in start order.
AIRFLOW_SERVICES = ("airflow-apiserver", "airflow-dag-processor", "airflow-scheduler", "airflow-triggerer")
#: DAGs only the deployment tests use, in a DAG bundle of their own beside the project's ``dags/``.
TEST_DAGS = Path(__file__).parent / "dags"
LOCAL_DAG_BUNDLE = "airflow.dag_processing.bundles.local.LocalDagBundle"


def shared_settings() -> dict[str, str]:
    """``deploy/airflow.env`` as a mapping (Compose's env-file syntax: ``KEY=VALUE``, ``#`` comments)."""
    settings = {}
    for line in SHARED_SETTINGS.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            settings[key.strip()] = value.strip()
    return settings


def compose_commands() -> dict[str, list[str]]:
    """The ``airflow`` sub-command of each Airflow service in ``docker-compose.yaml``."""
    services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    commands = {}
    for name in AIRFLOW_SERVICES:
        command = services[name]["command"]
        commands[name] = command.split() if isinstance(command, str) else list(command)
    return commands


def _database(admin_url: str, name: str, *, create: bool) -> str:
    url = sa.make_url(admin_url)
    engine = sa.create_engine(url, isolation_level="AUTOCOMMIT")
    with engine.connect() as connection:
        if create:
            connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
        else:
            connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()
    return url.set(database=name).render_as_string(hide_password=False)


@dataclass
class AirflowApi:
    """What the tests do as a user would, through Airflow's public REST API (v2)."""

    base_url: str
    client: httpx.Client = field(init=False)

    def __post_init__(self) -> None:
        self.client = httpx.Client(base_url=f"{self.base_url}/api/v2", timeout=60)

    def _ok(self, response: httpx.Response) -> Any:
        if response.status_code >= 400:
            raise AssertionError(
                f"{response.request.method} {response.request.url}: {response.status_code} {response.text}"
            )
        return response.json() if response.content else None

    def get(self, path: str, **params: Any) -> Any:
        return self._ok(self.client.get(path, params=params))

    def unpause(self, dag_id: str) -> None:
        self._ok(self.client.patch(f"/dags/{dag_id}", json={"is_paused": False}))

    def trigger(self, dag_id: str, conf: dict[str, Any]) -> str:
        run = self._ok(self.client.post(f"/dags/{dag_id}/dagRuns", json={"logical_date": None, "conf": conf}))
        return run["dag_run_id"]

    def backfill(self, dag_id: str, from_date: str, to_date: str, conf: dict[str, Any], max_active_runs: int) -> int:
        body = {
            "dag_id": dag_id,
            "from_date": from_date,
            "to_date": to_date,
            "run_backwards": False,
            "dag_run_conf": conf,
            "reprocess_behavior": "none",
            "max_active_runs": max_active_runs,
        }
        return self._ok(self.client.post("/backfills", json=body))["id"]

    def runs(self, dag_id: str) -> list[dict[str, Any]]:
        return self.get(f"/dags/{dag_id}/dagRuns", limit=100)["dag_runs"]

    def task_instances(self, dag_id: str, run_id: str) -> dict[str, dict[str, Any]]:
        listing = self.get(f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances")["task_instances"]
        return {ti["task_id"]: ti for ti in listing}

    def wait(self, what: str, condition: Callable[[], Any], timeout: float, interval: float = 2.0) -> Any:
        """Poll Airflow (or Ray) until ``condition`` holds, at a pace that spares the API server."""
        return wait_for(condition, timeout, interval, what=what)


@dataclass
class Deployment:
    """The running processes, where they keep things, and the API to drive them."""

    root: Path
    env: dict[str, str]
    api: AirflowApi
    database_url: str
    #: Where every process sends its metrics (Airflow's and the provider's), as StatsD would get them.
    statsd: StatsdReceiver
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    @property
    def backend(self) -> LocalBackend:
        """The local backend the deployment's tasks use (its own root, its connection's options)."""
        options = json.loads(self.env["AIRFLOW_CONN_RAY_DEFAULT"])["extra"]
        return LocalBackend(self.env["AIRFLOW_RAY_PLATFORM_HOME"], writable_paths=options["writable_paths"])

    def log(self, service: str) -> str:
        return (self.root / "logs" / f"{service}.log").read_text(errors="replace")

    def start(self, service: str) -> None:
        command = compose_commands()[service]
        log = open(self.root / "logs" / f"{service}.log", "ab")  # noqa: SIM115 (the process keeps it)
        self.processes[service] = subprocess.Popen(
            [str(Path(sys.executable).parent / "airflow"), *command],
            env=self.env,
            cwd=self.root,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def stop(self, service: str, sig: signal.Signals = signal.SIGTERM, timeout: float = 30) -> None:
        """Stop the service's process and every process it started (task processes included), by pid."""
        process = self.processes.pop(service)
        try:
            family = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            family = []
        for member in family:
            with contextlib.suppress(psutil.NoSuchProcess):
                member.send_signal(sig)
        _, alive = psutil.wait_procs(family, timeout=timeout)
        for member in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                member.kill()
        psutil.wait_procs(alive, timeout=10)
        process.wait(timeout=10)

    def state_store(self) -> sa.Engine:
        return sa.create_engine(self.database_url)


def _environment(
    root: Path, database_url: str, api_port: int, log_ports: list[int], statsd: StatsdReceiver
) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("AIRFLOW", "RAY_"))}
    env.update(shared_settings())
    async_url = sa.make_url(database_url)  # psycopg (v3) serves both the sync and the async engine
    env.update(
        HOME=str(root / "home"),
        AIRFLOW_HOME=str(root / "airflow"),
        AIRFLOW__CORE__DAGS_FOLDER=str(REPO / "dags"),
        AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST=json.dumps(
            [
                {
                    "name": name,
                    "classpath": "airflow.dag_processing.bundles.local.LocalDagBundle",
                    "kwargs": {"path": path},
                }
                for name, path in (("dags-folder", str(REPO / "dags")), ("deployment-tests", str(TEST_DAGS)))
            ]
        ),
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=database_url,
        AIRFLOW__DATABASE__SQL_ALCHEMY_CONN_ASYNC=async_url.render_as_string(hide_password=False),
        AIRFLOW__API__HOST="127.0.0.1",
        AIRFLOW__API__PORT=str(api_port),
        AIRFLOW__API__BASE_URL=f"http://127.0.0.1:{api_port}",
        AIRFLOW__CORE__EXECUTION_API_SERVER_URL=f"http://127.0.0.1:{api_port}/execution/",
        AIRFLOW__API_AUTH__JWT_SECRET=secrets.token_hex(32),
        AIRFLOW__CORE__FERNET_KEY=Fernet.generate_key().decode(),
        AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT=str(log_ports[0]),
        AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT=str(log_ports[1]),
        AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT=str(log_ports[2]),
        # as docker-compose.yaml's statsd-exporter service, here a receiver of the tests' own
        AIRFLOW__METRICS__STATSD_HOST="127.0.0.1",
        AIRFLOW__METRICS__STATSD_PORT=str(statsd.port),
        AIRFLOW_CONN_RAY_STATE_STORE=json.dumps({"conn_type": "postgres", "extra": {"sqlalchemy_url": database_url}}),
        AIRFLOW_RAY_PLATFORM_HOME=str(root / "ray-platform"),
        ZONE_TRAINING_OUTPUT=str(root / "output"),
        # as docker-compose.yaml: the one folder the local backend's sandboxed jobs may write
        AIRFLOW_CONN_RAY_DEFAULT=json.dumps(
            {"conn_type": "ray", "extra": {"backend": "local", "writable_paths": [str(root / "output")]}}
        ),
    )
    return env


def start_deployment(root: Path, admin_url: str) -> Iterator[Deployment]:
    """Migrate a fresh database, start the four services, wait until the DAGs are parsed; at the end,
    stop every process it started (by pid), delete what clusters its tasks left, drop the database."""
    name = f"arp_deploy_{uuid.uuid4().hex[:8]}"
    database_url = _database(admin_url, name, create=True)
    for directory in ("home", "airflow", "logs", "output"):
        (root / directory).mkdir(parents=True, exist_ok=True)
    api_port, *log_ports = free_ports(4)
    statsd = StatsdReceiver()
    env = _environment(root, database_url, api_port, log_ports, statsd)
    deployment = Deployment(root, env, AirflowApi(f"http://127.0.0.1:{api_port}"), database_url, statsd)
    try:
        subprocess.run(
            [str(Path(sys.executable).parent / "airflow"), "db", "migrate"],
            env=env,
            cwd=root,
            check=True,
            capture_output=True,
        )
        for service in AIRFLOW_SERVICES:
            deployment.start(service)
        deployment.api.wait("the API server", lambda: _healthy(deployment.api), timeout=180)
        deployment.api.wait(
            "the example DAG to be parsed",
            lambda: _parsed(deployment.api, "example_zone_training"),
            timeout=240,
        )
        yield deployment
    finally:
        for service in list(deployment.processes):
            deployment.stop(service)
        backend = deployment.backend
        for cluster in backend.registry.names():
            backend.delete_cluster(cluster)
        _database(admin_url, name, create=False)
        statsd.close()


def _healthy(api: AirflowApi) -> bool:
    try:
        return api.client.get("/monitor/health").status_code == 200
    except httpx.HTTPError:
        return False


def _parsed(api: AirflowApi, dag_id: str) -> bool:
    try:
        return api.client.get(f"/dags/{dag_id}").status_code == 200
    except httpx.HTTPError:
        return False
