"""The embedded default backend: real Ray clusters as local processes.

A cluster is one ``ray start --head --block`` process (plus one ``ray start --address=… --block``
per local worker node), each in its own session so that every process Ray spawns stays in a process
group this backend owns. Every port is chosen free (two heads on one machine otherwise clash on the
agent's defaults, and Redis often holds 6379), resources are capped from the spec, usage stats are
off and token authentication is on, with a token generated per cluster.

This module is the backend's contract (create, lease, describe, delete, jobs) and how a cluster is
launched, plain or in its sandbox (:mod:`.sandbox`); :mod:`.registry` keeps each cluster's runtime data
where any Airflow process finds it, and :mod:`.processes` holds what its processes start with and how
every one of them is found and stopped.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import secrets
import shutil
import stat
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Collection, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from hashlib import sha256
from pathlib import Path
from typing import BinaryIO

import psutil

from airflow_ray_platform.backends.base import (
    LOG_CHUNK_BYTES,
    BackendError,
    ClusterInfo,
    ClusterNotFoundError,
    ClusterState,
    DeleteCondition,
    JobInfo,
    Lease,
    RayConnection,
    check_same_spec,
    leases_from_mapping,
    leases_to_mapping,
    with_lease,
)
from airflow_ray_platform.backends.jobs_api import JobsApiClient, driver_log_name
from airflow_ray_platform.backends.local import sandbox
from airflow_ray_platform.backends.local.processes import (
    INHERITED_ENVIRONMENT,
    INHERITED_ENVIRONMENT_PREFIXES,
    INHERITED_RAY_VARIABLES,
    free_ports,
    node_resources,
    outer_pids,
    private_log,
    read_until_closed,
    stop_cluster_processes,
)
from airflow_ray_platform.backends.local.registry import (
    PRIVATE_DIR_PREFIX,
    LocalClusterRecord,
    LocalClusterRegistry,
    NodeProcess,
    UnreadableRecordError,
    cluster_token_copy,
    open_cluster_file,
    write_private,
)
from airflow_ray_platform.settings import airflow_config_path, airflow_home, default_root
from airflow_ray_platform.spec.models import (
    ClusterSpec,
    JobConfiguration,
    JobSpec,
    NodeResources,
)
from airflow_ray_platform.spec.naming import MANAGED_BY_LABEL, MANAGED_BY_VALUE, dashboard_job_url
from airflow_ray_platform.spec.timestamps import to_text

#: What a sandboxed cluster never sees besides the registry and other clusters' temp dirs: where the
#: worker's user keeps credentials (relative to ``$HOME``) and Airflow's home and configuration.
HIDDEN_HOME_PATHS = (
    ".aws",
    ".azure",
    ".config/gcloud",
    ".config/gh",
    ".kube",
    ".docker",
    ".ssh",
    ".gnupg",
    ".netrc",
    ".pgpass",
    ".my.cnf",
    ".git-credentials",
    ".pypirc",
    ".npmrc",
)
SANDBOX_MODES = ("auto", "required", "off")
#: How long a sandbox may take to start its nodes (not to make them ready: that is the startup timeout).
SANDBOX_START_SECONDS = 30.0


_log = logging.getLogger(__name__)


def _short_hash(text: str) -> str:
    return sha256(text.encode()).hexdigest()[:8]


def _interpreter_paths() -> list[str]:
    """What jobs run from (this environment, its base Python, Ray's package, and this provider's, which
    ``@task.ray`` drivers and ``hand_back`` import): never hidden from a sandbox, and bound back
    (read-only) where it lies under a folder the sandbox makes fresh (a venv or a checkout in /tmp)."""
    provider = Path(__file__).parents[2]  # the airflow_ray_platform package (an editable checkout's too)
    paths = (sys.prefix, sys.base_prefix, Path(sys.executable).parent, _ray_package_folder(), provider)
    return sorted({str(Path(path).resolve()) for path in paths})


def _ray_package_folder() -> str:
    """Where Ray is installed, found without importing it (an import costs about a second)."""
    spec = importlib.util.find_spec("ray")
    assert spec is not None and spec.submodule_search_locations, "Ray is a dependency of this package"
    return next(iter(spec.submodule_search_locations))


def _sandbox_refusal() -> str | None:
    """Why this machine refuses a sandbox (None: it allows one); asked once per process."""
    try:
        sandbox.probe()
    except sandbox.SandboxUnavailableError as error:
        return str(error)
    return None


class LocalBackend:
    """Ray clusters as local processes, found again by any process through the registry."""

    name = "local"

    def __init__(
        self,
        root_dir: str | Path | None = None,
        probe_timeout: float = 2.0,
        pass_env: Collection[str] = (),
        sandbox: str = "auto",
        hide_paths: Collection[str] = (),
        writable_paths: Collection[str] = (),
    ) -> None:
        """:param sandbox: ``auto`` (each cluster in namespaces of its own where the kernel allows it, else
            as plain processes, with a warning), ``required`` (refuse to start a cluster without) or ``off``.
        :param hide_paths: more paths a sandboxed cluster must not see, besides the defaults.
        :param writable_paths: folders of this machine that jobs in a sandbox may write (where they leave
            outputs; every cluster of this connection shares them). Everything else outside a cluster's
            own folder is read-only to its jobs.
        """
        if sandbox not in SANDBOX_MODES:
            raise BackendError(f"local backend option 'sandbox' must be one of {list(SANDBOX_MODES)}, not {sandbox!r}")
        self.registry = LocalClusterRegistry(Path(root_dir) if root_dir else default_root())
        self.probe_timeout = probe_timeout
        self.pass_env = frozenset(pass_env)
        self.sandbox = sandbox
        self.hide_paths = tuple(hide_paths)
        self.writable_paths = tuple(self._checked_writable(path) for path in writable_paths)
        self._clients: dict[tuple[str, str], JobsApiClient] = {}

    # ----------------------------------------------------------------- clusters
    def validate_configuration(self, config: JobConfiguration) -> None:
        """Nothing beyond the model's rules: any valid configuration starts locally."""

    def create_or_get_cluster(
        self, name: str, spec: ClusterSpec, labels: Mapping[str, str], lease: Lease | None = None
    ) -> ClusterInfo:
        with self.registry.lock(name):
            record = self.registry.load(name)
            if record is not None:
                if record.nodes and record.nodes[0].process() is not None:
                    check_same_spec(name, record.spec, spec)
                    if lease is not None:
                        self._lease(record, lease)
                    return self._describe(record)
                # The head is gone (a reboot, a kill): clear what is left, then start afresh.
                stop_cluster_processes(record, self._token_paths(record))
                self.registry.remove(name)
            return self._describe(self._start(name, spec, dict(labels), lease))

    def _lease(self, record: LocalClusterRecord, lease: Lease) -> None:
        """Record ``lease`` and mark activity (under the cluster's lock, held by the caller)."""
        record.leases = leases_to_mapping(with_lease(leases_from_mapping(record.leases), lease))
        record.last_active_at = to_text()
        self.registry.save(record)

    def acquire_lease(self, name: str, lease: Lease) -> ClusterInfo:
        with self.registry.lock(name):
            record = self.registry.load(name)
            if record is None:
                raise ClusterNotFoundError(f"no local Ray cluster named {name!r}")
            self._lease(record, lease)
            return self._describe(record)

    def release_leases(self, name: str, keys: Collection[str]) -> ClusterInfo | None:
        with self.registry.lock(name):
            record = self.registry.load(name)
            if record is None:
                return None
            kept = {key: value for key, value in record.leases.items() if key not in set(keys)}
            if kept != record.leases:
                record.leases = kept
                self.registry.save(record)
            return self._describe(record)

    def _ray_environment(self, private_dir: Path, sandboxed: bool) -> dict[str, str]:
        """The environment of the cluster's processes and jobs: an allow-list of the worker's, plus the
        path of the cluster's copy of its token (a job needs its cluster's token, and no other secret).
        In a sandbox, whose file tree is read-only, a job's home and temp folders are its own."""
        env = {
            key: value
            for key, value in os.environ.items()
            if (key in INHERITED_ENVIRONMENT or key.startswith(INHERITED_ENVIRONMENT_PREFIXES) or key in self.pass_env)
            and key not in INHERITED_RAY_VARIABLES
        }
        env.update(
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN_PATH=str(cluster_token_copy(private_dir)),
            RAY_USAGE_STATS_ENABLED="0",
            # Job drivers run ``python`` from the raylet's PATH: make it this interpreter.
            PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
        )
        if sandboxed:
            home = private_dir / "home"
            home.mkdir(mode=0o700, exist_ok=True)
            env.update(HOME=str(home), TMPDIR="/tmp")
        return env

    def _private_parent(self) -> Path:
        """This registry's own 0700 folder of clusters' private folders (a sandbox hides it whole)."""
        return Path(tempfile.gettempdir()) / f"{PRIVATE_DIR_PREFIX}{_short_hash(str(self.registry.root.resolve()))}"

    def _private_dir_of(self, name: str) -> Path:
        return self._private_parent() / f"{PRIVATE_DIR_PREFIX}{_short_hash(name)}"

    def _private_dir(self, name: str) -> Path:
        """The cluster's private temp folder, created exclusively inside :meth:`_private_parent` (its own
        folder bound back in its sandbox)."""
        parent = self._private_parent()
        with contextlib.suppress(FileExistsError):
            parent.mkdir(mode=0o700)
        found = parent.lstat()
        if not stat.S_ISDIR(found.st_mode) or found.st_uid != os.getuid() or stat.S_IMODE(found.st_mode) != 0o700:
            raise BackendError(
                f"cannot start local Ray cluster {name!r}: {parent} is not this user's private folder "
                "(another user's, or a link?)"
            )
        private_dir = self._private_dir_of(name)
        shutil.rmtree(private_dir, ignore_errors=True)
        try:  # ours alone, created here: another local user cannot have prepared it, nor enter it
            private_dir.mkdir(mode=0o700)
        except FileExistsError:
            raise BackendError(
                f"cannot start local Ray cluster {name!r}: its temp dir {private_dir} exists and cannot be removed"
            ) from None
        return private_dir

    def sandbox_refusal(self) -> str | None:
        """Why a cluster started now would run outside the sandbox (None: it would be inside)."""
        if self.sandbox == "off":
            return "the ray connection's sandbox option is off"
        return _sandbox_refusal()

    def _sandboxed(self) -> bool:
        """Whether new clusters start in a sandbox (``auto``: where this machine allows it)."""
        refusal = self.sandbox_refusal()
        if refusal is None:
            return True
        if self.sandbox == "required":
            raise BackendError(f"cannot start a sandboxed local Ray cluster (sandbox: required): {refusal}")
        if self.sandbox == "auto":
            _log.warning("Local Ray clusters start without a sandbox: %s", refusal)
        return False

    def _checked_writable(self, path: str) -> Path:
        """A ``writable_paths`` entry, refused if writing under it would undo the sandbox: relative, or
        holding, or lying in, the Python environment Ray runs from, Airflow's home or the registry."""
        resolved = Path(path).expanduser().resolve()
        if not Path(path).expanduser().is_absolute():
            raise BackendError(f"local backend option 'writable_paths': {path!r} must be an absolute path")
        protected = {
            "the Python environment Ray runs from": Path(sys.prefix),
            "Airflow's home": airflow_home(),
            "the local backend's registry": self.registry.root,
        }
        for what, protected_path in protected.items():
            protected_path = protected_path.resolve()
            if resolved == protected_path or protected_path in resolved.parents or resolved in protected_path.parents:
                raise BackendError(
                    f"local backend option 'writable_paths': {path!r} holds or lies in {what} ({protected_path}): "
                    "jobs writing there could change what runs outside their sandbox"
                )
        return resolved

    def _hidden_paths(self, private_parent: Path) -> list[str]:
        """What a sandboxed cluster must not see; never a folder holding this interpreter (Ray runs from it)."""
        # the configuration on its own too: hidden even where Airflow's home cannot be (it holds the venv)
        paths = [self.registry.root, private_parent, airflow_home(), airflow_config_path()]
        paths += [Path.home() / path for path in HIDDEN_HOME_PATHS]
        paths += [Path(path) for path in self.hide_paths]
        needed = [Path(path) for path in _interpreter_paths()]
        hidden = []
        for path in (path.resolve() for path in paths):
            if any(path == kept or path in kept.parents for kept in needed):
                _log.warning("Not hiding %s from local Ray clusters: Ray itself runs from it", path)
            else:
                hidden.append(str(path))
        return hidden

    def _start(self, name: str, spec: ClusterSpec, labels: dict[str, str], lease: Lease | None) -> LocalClusterRecord:
        sandboxed = self._sandboxed()  # before anything is made: a refusal leaves nothing behind
        cluster_dir = self.registry.cluster_dir(name)
        cluster_dir.mkdir(mode=0o700, exist_ok=True)
        token = secrets.token_urlsafe(32)
        self.registry.write_token(name, token)
        private_dir = self._private_dir(name)
        write_private(cluster_token_copy(private_dir), token)  # the cluster's own: the registry stays outside
        temp_dir = private_dir / "r"  # Ray makes its own temp dir world-writable: keep it inside ours
        env = self._ray_environment(private_dir, sandboxed)
        ray_bin = str(Path(sys.executable).parent / "ray")

        gcs_port, dashboard_port, client_port, dashboard_metrics, autoscaler_metrics, *node_ports = free_ports(
            5 + 6 * (1 + sum(group.replicas for group in spec.worker_groups))
        )
        # Ray's head serves its dashboard's and autoscaler's own metrics on fixed default ports (44227,
        # 44217) unless told otherwise: two heads on one machine would clash, and "every port free" would lie.
        env.update(DASHBOARD_METRIC_PORT=str(dashboard_metrics), AUTOSCALER_METRIC_PORT=str(autoscaler_metrics))
        now = to_text()
        # Recorded before anything starts, each node as it starts: if this process dies half-way, the
        # record (and the temp dir every Ray process names) still finds what it launched.
        record = LocalClusterRecord(
            name=name,
            labels=labels,
            created_at=now,
            last_active_at=now,
            dashboard_port=dashboard_port,
            gcs_port=gcs_port,
            client_port=client_port,
            temp_dir=str(temp_dir),
            resources=spec.requested_resources,
            nodes=[],
            spec=spec.recorded(),
            leases=leases_to_mapping([lease] if lease is not None else []),
        )
        self.registry.save(record)

        def node(role: str, node_spec: NodeResources, role_args: list[str]) -> tuple[sandbox.NodeLaunch, int, int]:
            """A node's ``ray start`` command line, with its agent's and metrics' ports."""
            cpus, mem, store, gpus = node_resources(node_spec)
            manager, objects, agent_http, agent_grpc, runtime_env, metrics = (node_ports.pop() for _ in range(6))
            args = [
                ray_bin,
                "start",
                "--block",
                *role_args,
                "--node-ip-address",
                "127.0.0.1",
                "--node-manager-port",
                str(manager),
                "--object-manager-port",
                str(objects),
                "--dashboard-agent-listen-port",
                str(agent_http),
                "--dashboard-agent-grpc-port",
                str(agent_grpc),
                "--runtime-env-agent-port",
                str(runtime_env),
                "--metrics-export-port",
                str(metrics),
                "--num-cpus",
                str(cpus),
                "--num-gpus",
                str(gpus),
                "--memory",
                str(mem),
                "--object-store-memory",
                str(store),
                "--temp-dir",
                str(temp_dir),
                "--disable-usage-stats",
            ]
            for key, value in node_spec.ray_start_params.items():
                args += [f"--{key.replace('_', '-')}", value]
            log_path = str(cluster_dir / f"{role}.log")
            # its working directory: never the registry folder, which holds the token
            return sandbox.NodeLaunch(role, args, log_path, str(private_dir)), agent_http, metrics

        head_args = [
            "--head",
            "--port",
            str(gcs_port),
            "--dashboard-host",
            "127.0.0.1",
            "--dashboard-port",
            str(dashboard_port),
            "--ray-client-server-port",
            str(client_port),
            "--include-dashboard",
            "true",
        ]
        nodes = [node("head", spec.head, head_args)] + [
            node(f"worker-{group.group_name}-{index}", group, ["--address", f"127.0.0.1:{gcs_port}"])
            for group in spec.worker_groups
            for index in range(group.replicas)
        ]
        if sandboxed:
            self._start_sandboxed(record, nodes, env, private_dir)
            return record
        for launch, agent_port, metrics_port in nodes:
            with private_log(Path(launch.log_path)) as log:
                process = subprocess.Popen(
                    launch.args,
                    env=env,
                    cwd=launch.cwd,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            created = psutil.Process(process.pid).create_time()
            node_process = NodeProcess(launch.role, process.pid, created, launch.log_path, agent_port, metrics_port)
            record.nodes.append(node_process)
            self.registry.save(record)
        return record

    def _start_sandboxed(
        self,
        record: LocalClusterRecord,
        nodes: list[tuple[sandbox.NodeLaunch, int, int]],
        env: dict[str, str],
        private_dir: Path,
    ) -> None:
        """Start every node inside one sandbox (:mod:`.sandbox`), which relays to this machine's loopback
        only the ports used from outside: the dashboard, Ray Client's, and each node's agent and metrics.

        The sandbox gets the node logs and a pipe for the started pids as descriptors opened here: the
        registry folder, where they are kept, is never inside."""
        cluster_dir = self.registry.cluster_dir(record.name)
        log_path = cluster_dir / "sandbox.log"
        started_read, started_write = os.pipe()
        handed = [started_write]
        try:
            launches = [launch for launch, _, _ in nodes]
            for launch in launches:
                launch.log_fd = os.open(launch.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
                handed.append(launch.log_fd)
            sandbox_spec = sandbox.SandboxSpec(
                hide=self._hidden_paths(private_dir.parent),
                writable=[str(private_dir), *self._writable_folders()],
                readable=_interpreter_paths(),
                forward_ports=[record.dashboard_port, record.client_port]
                + [port for _, agent, metrics in nodes for port in (agent, metrics)],
                nodes=launches,
                started_fd=started_write,
                env=env,
            )
            with private_log(log_path) as log:
                process = subprocess.Popen(
                    [sys.executable, "-m", "airflow_ray_platform.backends.local.sandbox"],
                    env=env,
                    cwd=private_dir,
                    stdin=subprocess.PIPE,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    pass_fds=handed,
                )
        finally:
            for fd in handed:
                os.close(fd)
        record.sandbox_pid, record.sandbox_create_time = process.pid, psutil.Process(process.pid).create_time()
        self.registry.save(record)
        assert process.stdin is not None
        with process.stdin:
            process.stdin.write(sandbox_spec.to_json().encode())
        reported = read_until_closed(started_read, SANDBOX_START_SECONDS)
        try:
            inside = json.loads(reported)
        except ValueError:
            tail = log_path.read_text(errors="replace").strip().splitlines()[-3:]
            raise BackendError(
                f"cannot start local Ray cluster {record.name!r} in its sandbox: " + (" ".join(tail) or "no output")
            ) from None
        outside = outer_pids(process.pid)
        for launch, agent_port, metrics_port in nodes:
            pid = outside[inside[launch.role]]
            created = psutil.Process(pid).create_time()
            record.nodes.append(NodeProcess(launch.role, pid, created, launch.log_path, agent_port, metrics_port))
        self.registry.save(record)

    def _writable_folders(self) -> list[str]:
        """The ``writable_paths``, made if missing (a sandbox binds only what exists)."""
        for path in self.writable_paths:
            path.mkdir(parents=True, exist_ok=True)
        return [str(path) for path in self.writable_paths]

    def _token_paths(self, record: LocalClusterRecord) -> list[Path]:
        """Where the cluster's processes were told its token is: its copy (and, for a cluster started
        before the copy was made, the registry's)."""
        return [cluster_token_copy(record.private_dir), self.registry.token_path(record.name)]

    def _probe(self, url: str, token: str) -> bool:
        request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
        try:
            with urllib.request.urlopen(request, timeout=self.probe_timeout) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def _describe(self, record: LocalClusterRecord) -> ClusterInfo:
        dead = [node for node in record.nodes if node.process() is None]
        message = None
        if not record.nodes:
            state = ClusterState.PROVISIONING
            message = "launching its head node"
        elif dead:
            state = ClusterState.FAILED
            message = "; ".join(
                f"{node.role} process {node.pid} exited: {node.log_tail() or 'no output'}" for node in dead
            )
        elif not self.registry.token_path(record.name).is_file():
            state = ClusterState.FAILED
            message = "its token file is missing from the registry: nothing can authenticate to it"
        elif all(node.started() for node in record.nodes) and self._ray_healthy(record):
            state = ClusterState.READY
        else:
            state = ClusterState.PROVISIONING
            message = record.nodes[0].log_tail(3) or None
        return ClusterInfo(
            name=record.name,
            backend=self.name,
            state=state,
            dashboard_url=record.dashboard_url,
            labels=dict(record.labels),
            resources=dict(record.resources),
            created_at=datetime.fromisoformat(record.created_at),
            last_active_at=datetime.fromisoformat(record.last_active_at),
            message=message,
            leases=leases_from_mapping(record.leases),
            spec=record.spec,
            sandboxed=bool(record.sandbox_pid),
        )

    def _ray_healthy(self, record: LocalClusterRecord) -> bool:
        """Ray's own readiness probes (KubeRay's too): GCS through the dashboard, raylet via the agent."""
        token = self.registry.read_token(record.name)
        return self._probe(f"{record.dashboard_url}/api/gcs_healthz", token) and all(
            self._probe(f"http://127.0.0.1:{node.agent_port}/api/local_raylet_healthz", token) for node in record.nodes
        )

    def describe_cluster(self, name: str) -> ClusterInfo | None:
        try:
            record = self.registry.load(name)
        except UnreadableRecordError as error:
            return self._broken(name, str(error))
        return None if record is None else self._describe(record)

    def list_clusters(self, labels: Mapping[str, str] | None = None) -> list[ClusterInfo]:
        """Every recorded cluster whose labels include ``labels``; one whose record cannot be read is
        listed as FAILED with the reason (when no label is asked for), never failing the whole listing."""
        wanted = dict(labels or {})
        found = []
        for name in self.registry.names():
            try:
                record = self.registry.load(name)
            except UnreadableRecordError as error:
                if not wanted:
                    found.append(self._broken(name, str(error)))
                continue
            except (BackendError, OSError) as error:  # perhaps passing: listed, never collected for it
                if not wanted:
                    why = f"its registry record cannot be read now: {error}"
                    found.append(ClusterInfo(name, self.name, ClusterState.FAILED, None, message=why))
                continue
            if record is not None and wanted.items() <= record.labels.items():
                found.append(self._describe(record))
        return found

    def _broken(self, name: str, why: str) -> ClusterInfo:
        """A cluster whose record cannot be read: in this backend's own registry, so this provider made
        it; unusable, so the cleanup DAG deletes it."""
        _log.warning("Local Ray cluster %r: %s", name, why)
        born = datetime.fromtimestamp(self.registry.born_at(name), UTC)
        return ClusterInfo(
            name=name,
            backend=self.name,
            state=ClusterState.FAILED,
            dashboard_url=None,
            labels={MANAGED_BY_LABEL: MANAGED_BY_VALUE},
            created_at=born,
            last_active_at=born,
            message=why,
            unusable=why,
        )

    def _stand_in(self, name: str) -> LocalClusterRecord:
        """What is known of a cluster whose record cannot be read, enough to stop its processes: the temp
        dir every one of them names (its folder is named after the cluster) and when it was made."""
        born = to_text(datetime.fromtimestamp(self.registry.born_at(name), UTC))
        temp_dir = self._private_dir_of(name) / "r"
        return LocalClusterRecord(name, {}, born, born, 0, 0, str(temp_dir), {})

    def delete_cluster(self, name: str, condition: DeleteCondition | None = None) -> bool:
        with self.registry.lock(name):
            try:
                record = self.registry.load(name)
            except UnreadableRecordError:
                record = self._stand_in(name)  # nothing could lease it or submit to it since
            if record is None:
                return False
            if condition is not None:
                self._check_condition(record, condition)
            stop_cluster_processes(record, self._token_paths(record))
            shutil.rmtree(record.private_dir, ignore_errors=True)
            self.registry.remove(name)
            self._clients = {key: client for key, client in self._clients.items() if key[0] != name}
            return True

    def _check_condition(self, record: LocalClusterRecord, condition: DeleteCondition) -> None:
        """Compare-and-delete: refuse if the cluster is leased, was touched after the condition's mark,
        or has an active job.

        Runs under the cluster's lock, which a submitter must take to mark activity before it submits
        (and a task to take a lease), so neither can slip in between this check and the delete.
        """
        jobs: list[JobInfo] = []
        if record.nodes and record.nodes[0].process() is not None:
            try:
                jobs = self._jobs(record.name).list()
            except BackendError:
                if self._describe(record).state == ClusterState.READY:
                    raise  # a ready cluster whose jobs cannot be listed is kept
                # Never became ready (its creator died while it started): nothing ran on it.
        condition.check(
            record.name,
            datetime.fromisoformat(record.last_active_at),
            leases_from_mapping(record.leases),
            [job.submission_id for job in jobs if not job.state.is_terminal],
        )

    # --------------------------------------------------------------------- jobs
    def _jobs(self, cluster_name: str) -> JobsApiClient:
        record = self.registry.load(cluster_name)
        if record is None:
            raise ClusterNotFoundError(f"no local Ray cluster named {cluster_name!r}")
        key = (cluster_name, record.created_at)
        if key not in self._clients:
            self._clients[key] = JobsApiClient(
                cluster_name, record.dashboard_url, self.registry.read_token(cluster_name)
            )
        return self._clients[key]

    def _touch(self, cluster_name: str) -> None:
        with self.registry.lock(cluster_name):
            record = self.registry.load(cluster_name)
            if record is not None:
                record.last_active_at = to_text()
                self.registry.save(record)

    def submit_job(self, cluster_name: str, submission_id: str, job: JobSpec, metadata: Mapping[str, str]) -> JobInfo:
        # Mark activity first: a garbage collector's compare-and-delete then sees it and keeps the cluster.
        self._touch(cluster_name)
        return self._jobs(cluster_name).submit(submission_id, job, metadata)

    def describe_job(self, cluster_name: str, submission_id: str) -> JobInfo | None:
        info = self._jobs(cluster_name).describe(submission_id)
        if info is not None and not info.state.is_terminal:
            self._touch(cluster_name)
        return info

    def list_jobs(self, cluster_name: str) -> list[JobInfo]:
        return self._jobs(cluster_name).list()

    def job_logs(self, cluster_name: str, submission_id: str) -> str:
        return self._jobs(cluster_name).logs(submission_id)

    def _open_driver_log(self, cluster_name: str, submission_id: str) -> BinaryIO:
        """The job's driver log file (what Ray's Jobs API reads too), under the cluster's temp dir, which
        every node of a local cluster shares. Its jobs can write there: it is opened as
        :func:`open_cluster_file` allows, never through a link out of the cluster's folder."""
        record = self.registry.load(cluster_name)
        if record is None:
            raise ClusterNotFoundError(f"no local Ray cluster named {cluster_name!r}")
        logs = Path(record.temp_dir) / "session_latest" / "logs"
        return open_cluster_file(logs / driver_log_name(submission_id), record.private_dir)

    def job_log_chunks(self, cluster_name: str, submission_id: str) -> Iterator[bytes]:
        """The driver log file itself, chunk by chunk (Ray's websocket log tail would also stream it, but
        only ends ~5 s after a finished job's EOF); the Jobs API's when the file is not there."""
        try:
            log = self._open_driver_log(cluster_name, submission_id)
        except FileNotFoundError:
            yield from self._jobs(cluster_name).log_chunks(submission_id)
            return
        with log:
            while chunk := log.read(LOG_CHUNK_BYTES):
                yield chunk

    def job_log_since(
        self, cluster_name: str, submission_id: str, offset: int, *, complete_lines: bool = True
    ) -> tuple[str, int]:
        """The driver log after byte ``offset``, read from the file from there on: each byte once."""
        try:
            with self._open_driver_log(cluster_name, submission_id) as log:
                log.seek(offset)
                data = log.read()
        except FileNotFoundError:  # no output yet
            return "", offset
        if complete_lines:  # a line still being written (or a character cut in two) waits for its end
            data = data[: data.rfind(b"\n") + 1]
        return data.decode(errors="replace"), offset + len(data)

    def stop_job(self, cluster_name: str, submission_id: str) -> bool:
        return self._jobs(cluster_name).stop(submission_id)

    def metrics_urls(self, cluster_name: str) -> list[str]:
        record = self.registry.load(cluster_name)
        nodes = record.nodes if record is not None else []
        return [f"http://127.0.0.1:{node.metrics_port}/metrics" for node in nodes if node.metrics_port]

    def job_dashboard_url(self, cluster_name: str, submission_id: str) -> str | None:
        record = self.registry.load(cluster_name)
        return None if record is None else dashboard_job_url(record.dashboard_url, submission_id)

    def connection(self, cluster_name: str, *, valid_for: timedelta | None = None) -> RayConnection:
        """Ray Client on the head (the one Ray port a sandbox relays out, besides the dashboard's), with the
        cluster's own token (it does not expire)."""
        record = self.registry.load(cluster_name)
        if record is None:
            raise ClusterNotFoundError(f"no local Ray cluster named {cluster_name!r}")
        if not record.client_port:
            raise BackendError(f"local Ray cluster {cluster_name!r} was started before Ray Client's port was kept")
        token = self.registry.read_token(cluster_name)
        return RayConnection(f"ray://127.0.0.1:{record.client_port}", record.dashboard_url, token)
