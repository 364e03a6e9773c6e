"""The local backend's registry: where each cluster's runtime data lives, found again by any process.

Per cluster, a folder only its owner can read: the record (pids, ports, the spec it was created from,
its leases), its token and its nodes' output. This is the backend's private runtime data, how to find
and stop its processes from any Airflow process; the platform's record of clusters and jobs is the
state store's. A cluster never writes here (a sandboxed one never sees it): every path, pid, time and
label the machine acts on comes from this side. What a cluster writes in its own private folder is
opened by :func:`open_cluster_file`, as data only.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import stat
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import psutil

from airflow_ray_platform.backends.base import BackendError
from airflow_ray_platform.spec.models import JobConfigurationError, validate_cluster_name

#: The private folders of local clusters' temp files: ``<tmp>/arp-<8 hex>/arp-<8 hex>``, one parent per
#: registry and one folder per cluster (short: Ray's unix sockets live under it, at most 108 bytes of path).
PRIVATE_DIR_PREFIX = "arp-"
#: What ``ray start`` prints once its node runs.
READY_MARKER = "Ray runtime started"
#: The cluster's copy of its token, in its private folder (what its processes authenticate with).
TOKEN_COPY_NAME = "auth_token"


def cluster_token_copy(private_dir: Path) -> Path:
    return private_dir / TOKEN_COPY_NAME


def write_private(path: Path, text: str) -> None:
    """``text`` in a new 0600 file at ``path`` (never written through a link)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def open_cluster_file(path: Path, private_dir: Path) -> BinaryIO:
    """A file a cluster's jobs could have written, opened for reading as data only.

    A job can replace any file in its cluster's folder with a link, a FIFO or a device: read through
    the link, the machine would copy a file of the job's choosing (Airflow's configuration, another
    cluster's token) into task logs and object storage; a FIFO would hold the reader. So the last
    component is never followed, what is opened must be a regular file, and the path the kernel
    actually opened must lie in ``private_dir``. Raises ``FileNotFoundError`` when there is no such
    file, :class:`BackendError` when there is something else there.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise BackendError(f"refusing to read {path.name}: the cluster replaced it with a link") from None
        raise
    try:
        opened = os.readlink(f"/proc/self/fd/{fd}")
        inside = opened.startswith(f"{private_dir.resolve()}{os.sep}")
        if not inside or not stat.S_ISREG(os.fstat(fd).st_mode):
            raise BackendError(
                f"refusing to read {path.name}: it is not a file in the cluster's own folder (a link or a "
                "special file put there by a job)"
            )
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


@dataclass
class NodeProcess:
    """One ``ray start --block`` process; the session it leads holds every process of that node."""

    role: str
    pid: int
    create_time: float
    log_path: str
    agent_port: int
    #: Where this node's Prometheus metrics are served (0 in records written before it was kept).
    metrics_port: int = 0

    def process(self) -> psutil.Process | None:
        """The live process, or None if it exited or its pid now belongs to someone else."""
        try:
            process = psutil.Process(self.pid)
            if abs(process.create_time() - self.create_time) > 1 or process.status() == psutil.STATUS_ZOMBIE:
                return None
            return process
        except psutil.NoSuchProcess:
            return None

    def log_tail(self, lines: int = 15) -> str:
        try:
            text = Path(self.log_path).read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])

    def started(self) -> bool:
        try:
            return READY_MARKER in Path(self.log_path).read_text(errors="replace")
        except OSError:
            return False


@dataclass
class LocalClusterRecord:
    name: str
    labels: dict[str, str]
    created_at: str
    last_active_at: str
    dashboard_port: int
    gcs_port: int
    #: Ray's ``--temp-dir`` (which Ray makes world-writable), inside a private folder of this cluster.
    temp_dir: str

    @property
    def private_dir(self) -> Path:
        """The 0700 folder around Ray's temp dir (records from before it existed have none: the temp dir)."""
        parent = Path(self.temp_dir).parent
        return parent if parent.name.startswith(PRIVATE_DIR_PREFIX) else Path(self.temp_dir)

    resources: dict[str, float]
    nodes: list[NodeProcess] = field(default_factory=list)
    #: The sandbox process every node runs under (0: started without a sandbox).
    sandbox_pid: int = 0
    sandbox_create_time: float = 0.0
    #: Ray Client's port on the head (0: a record from before it was kept).
    client_port: int = 0
    #: ``ClusterSpec.recorded()`` of the spec it was started from.
    spec: dict[str, Any] | None = None
    #: Leases by key (``Lease.to_dict()``).
    leases: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @classmethod
    def from_json(cls, text: str) -> LocalClusterRecord:
        data = json.loads(text)
        data["nodes"] = [NodeProcess(**node) for node in data["nodes"]]
        return cls(**data)


class UnreadableRecordError(BackendError):
    """A cluster's record is there but cannot be read (cut short, edited by hand)."""


class LocalClusterRegistry:
    """Cluster records on disk: ``<root>/clusters/<name>/`` holds the record, token and node logs."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.clusters_dir = root / "clusters"
        self.clusters_dir.mkdir(parents=True, exist_ok=True)
        for directory in (root, self.clusters_dir):
            directory.chmod(0o700)

    def cluster_dir(self, name: str) -> Path:
        """The cluster's folder; a name that is not a cluster name (a path, ``..``) is refused first."""
        try:
            validate_cluster_name(name)
        except JobConfigurationError as error:
            raise BackendError(str(error)) from None
        return self.clusters_dir / name

    def token_path(self, name: str) -> Path:
        return self.cluster_dir(name) / "auth_token"

    @contextlib.contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """Serialise create and delete of one cluster across processes."""
        lock_path = self.cluster_dir(name).with_name(f".{name}.lock")
        with open(lock_path, "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def load(self, name: str) -> LocalClusterRecord | None:
        """The cluster's record; None if there is none, :class:`UnreadableRecordError` if it cannot be read."""
        path = self.cluster_dir(name) / "record.json"
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        with os.fdopen(fd, errors="replace") as handle:
            text = handle.read()
        try:
            return LocalClusterRecord.from_json(text)
        except (ValueError, TypeError, KeyError, AttributeError) as error:
            reason = f"{type(error).__name__}: {str(error)[:120]}"
            raise UnreadableRecordError(
                f"local Ray cluster {name!r}: its registry record {path} cannot be read ({reason}); nothing can "
                "use the cluster, and deleting it (the cleanup DAG does) stops what is left of it"
            ) from None

    def born_at(self, name: str) -> float:
        """When the cluster's token was written (just before any of its processes started), else when its
        folder was made: what is known of a cluster whose record cannot be read."""
        for path in (self.token_path(name), self.cluster_dir(name)):
            with contextlib.suppress(OSError):
                return path.stat().st_ctime
        return 0.0

    def save(self, record: LocalClusterRecord) -> None:
        directory = self.cluster_dir(record.name)
        directory.mkdir(mode=0o700, exist_ok=True)
        tmp = directory / "record.json.tmp"
        write_private(tmp, json.dumps(asdict(record), indent=2))
        tmp.replace(directory / "record.json")

    def write_token(self, name: str, token: str) -> Path:
        path = self.token_path(name)
        path.parent.mkdir(mode=0o700, exist_ok=True)
        write_private(path, token)
        return path

    def read_token(self, name: str) -> str:
        return self.token_path(name).read_text().strip()

    def names(self) -> list[str]:
        return sorted(p.name for p in self.clusters_dir.iterdir() if (p / "record.json").exists())

    def remove(self, name: str) -> None:
        shutil.rmtree(self.cluster_dir(name), ignore_errors=True)
