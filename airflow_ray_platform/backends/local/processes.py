"""A local cluster's processes: the ports and environment they start with, what ``ray start`` is told, and
finding and stopping every process a cluster started (and nothing else).
"""

from __future__ import annotations

import contextlib
import math
import os
import select
import signal
import socket
import time
from collections.abc import Collection, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil

from airflow_ray_platform.backends.local.registry import LocalClusterRecord
from airflow_ray_platform.spec.models import NodeResources
from airflow_ray_platform.spec.quantities import parse_quantity

#: Ray refuses an object store smaller than this.
MIN_OBJECT_STORE_BYTES = 80 * 1024**2
#: Environment a cluster must not inherit: it would point Ray at another cluster or another token.
INHERITED_RAY_VARIABLES = ("RAY_ADDRESS", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE")
#: What a local cluster's processes (and so its jobs) inherit from the worker's environment: what
#: programs need to run, never Airflow's settings, connections, Fernet key or cloud credentials.
#: Anything else a job needs goes in its ``runtime_env.env_vars``, or the backend's ``pass_env``.
INHERITED_ENVIRONMENT = frozenset(
    {"PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TERM", "TMPDIR", "LD_LIBRARY_PATH"}
)
INHERITED_ENVIRONMENT_PREFIXES = ("LC_", "RAY_", "CUDA_", "NVIDIA_")


def free_ports(count: int) -> list[int]:
    """Ports the kernel reports free right now, all distinct (held open together while chosen)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def outer_pids(ancestor: int) -> dict[int, int]:
    """Pid inside its PID namespace -> pid here, for every descendant of ``ancestor`` (``/proc``'s NSpid)."""
    found = {}
    for process in psutil.Process(ancestor).children(recursive=True):
        with contextlib.suppress(OSError, psutil.Error):
            for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
                if line.startswith("NSpid:"):
                    found[int(line.split()[-1])] = process.pid
    return found


def environment_has(pid: int, entry: str) -> bool:
    """Whether process ``pid``'s environment holds ``entry`` (``NAME=value``): read from ``/proc``, where
    the kernel lets a user read only its own processes' environments."""
    with open(f"/proc/{pid}/environ", "rb") as environ:
        return entry.encode() in environ.read().split(b"\0")


def node_resources(resources: NodeResources) -> tuple[int, int, int, int]:
    """(num_cpus, memory, object_store_memory, num_gpus) for ``ray start``: whole CPUs, rounded up (the
    record keeps what was requested, by the configuration's rule)."""
    num_cpus = max(1, math.ceil(parse_quantity(resources.cpu)))
    memory = int(parse_quantity(resources.memory))
    if resources.object_store_memory is not None:
        object_store = int(parse_quantity(resources.object_store_memory))
    else:
        object_store = int(memory * 0.3)
    return num_cpus, memory, max(object_store, MIN_OBJECT_STORE_BYTES), resources.gpu


def stop_cluster_processes(record: LocalClusterRecord, token_paths: Collection[Path]) -> None:
    """Stop every process this cluster's nodes started, and nothing else.

    A node's processes are its ``ray start`` process, that process's session (Ray's daemons are
    reparented to init once ``ray start`` dies, but keep its session id), and their descendants.
    Job drivers start sessions of their own and outlive a head that was killed, orphaned: every
    process of the cluster, drivers included, inherited the cluster's own token path in its
    environment, which names this cluster alone (``token_paths``: where it may have been told it is).
    """
    sessions = {node.pid: node.create_time for node in record.nodes}
    if record.sandbox_pid:  # its PID namespace ends with its init, taking every process inside along
        sessions[record.sandbox_pid] = record.sandbox_create_time
    created = datetime.fromisoformat(record.created_at).timestamp()
    token_variables = [f"RAY_AUTH_TOKEN_PATH={path}" for path in token_paths]
    processes = list(psutil.process_iter(["pid", "create_time", "cmdline"]))
    orphans: dict[int, psutil.Process] = {}
    for process in processes:
        # A node whose pid never reached the record (its creator died right after launching it)
        # still names the cluster's own temp dir on its command line.
        if process.info["create_time"] >= created - 1 and record.temp_dir in (process.info["cmdline"] or []):
            sessions.setdefault(process.pid, process.info["create_time"])
        elif process.info["create_time"] >= created - 1 and process.pid != os.getpid():
            with contextlib.suppress(psutil.Error, OSError):
                if any(environment_has(process.pid, variable) for variable in token_variables):
                    orphans[process.pid] = process
    targets: dict[int, psutil.Process] = {}
    for process in processes:
        with contextlib.suppress(psutil.Error, ProcessLookupError):
            sid = os.getsid(process.pid)
            if sid in sessions and process.info["create_time"] >= sessions[sid] - 1:
                targets[process.pid] = process
                for child in process.children(recursive=True):
                    targets[child.pid] = child
    targets.update({pid: process for pid, process in orphans.items() if pid not in targets})
    for process in targets.values():
        with contextlib.suppress(psutil.Error):
            process.send_signal(signal.SIGTERM)
    _, alive = psutil.wait_procs(list(targets.values()), timeout=3)
    for process in alive:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(alive, timeout=5)


@contextlib.contextmanager
def private_log(path: Path) -> Iterator[Any]:
    """``path`` opened for appending, created 0600."""
    with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), "ab") as log:
        yield log


def read_until_closed(fd: int, timeout: float) -> bytes:
    """What a child writes to the pipe ``fd`` until it closes its end (or dies), at most ``timeout``
    seconds; ``fd`` is closed after."""
    deadline = time.monotonic() + timeout
    chunks = []
    try:
        while (left := deadline - time.monotonic()) > 0:
            readable, _, _ = select.select([fd], [], [], left)
            if not readable:
                break
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks)
