"""A local Ray cluster in Linux namespaces of its own: what its jobs can reach of the machine.

Every process of a local cluster (its ``ray start`` nodes, Ray's daemons, job drivers and workers)
runs as the Airflow worker's user, so without more it reads what that user reads: other clusters'
tokens in the registry, the state store, Airflow's configuration, ``/proc/<pid>/environ`` of the
worker itself. Ray's GCS, raylet and agents also listen where Ray chooses. The sandbox, started as
``python -m airflow_ray_platform.backends.local.sandbox`` with a :class:`SandboxSpec` on stdin, puts the
whole cluster in new user, mount, PID and network namespaces (unprivileged: the kernel's user
namespaces, no setuid helper):

* **files**: the machine's whole file tree is read-only inside (every mount, recursively: the
  interpreter's site-packages, Airflow's DAGs and DAG bundles, the worker's home). ``/tmp``,
  ``/dev/shm`` and ``/run`` are fresh, empty and private to the cluster; each ``hide`` path is covered
  (a directory by an empty tmpfs, a file by ``/dev/null``), and so is every unix socket the machine
  listens on (a database server's, wherever it is); the ``writable`` paths alone (the cluster's own
  private folder: Ray's temp dir, its jobs' working folders, its copy of its token) are bound back
  writable. The registry, where the machine keeps what it knows of each cluster, is never inside: a
  cluster writes nothing the machine then acts on. What the machine reads of a cluster (node logs,
  the started pids) comes through file descriptors it opened itself and handed in;
* **processes**: a PID namespace with its own ``/proc``, so no other process of the machine is
  visible, and the whole cluster dies with its first process (the kernel's rule for a PID
  namespace's init);
* **network**: a network namespace with only its own loopback, so every Ray port (GCS, raylet,
  agents, metrics, Ray Client) is reachable from inside alone; the ports the backend uses from
  outside (dashboard, node agents, metrics) are listened on at ``127.0.0.1`` of the machine by the
  sandbox's init, which relays each connection to the same port inside;
* **privilege**: the capabilities a user namespace grants are dropped from the bounding set before
  any node starts, so nothing inside can undo a mount (not even as uid 0), and the init is not
  dumpable, so no process inside can trace it or take its descriptors (its relays listen outside).

The user namespace maps the user to itself: files the cluster writes are the user's, as before.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import json
import os
import selectors
import signal
import socket
import struct
import subprocess
import sys
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
MS_NOSUID, MS_NODEV, MS_NOEXEC = 0x2, 0x4, 0x8
MS_BIND, MS_REC, MS_PRIVATE = 0x1000, 0x4000, 0x40000
PR_SET_DUMPABLE = 4
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
SIOCGIFFLAGS, SIOCSIFFLAGS = 0x8913, 0x8914
IFF_UP, IFF_RUNNING = 0x1, 0x40
O_PATH = getattr(os, "O_PATH", 0o10000000)
RELAY_CHUNK = 64 * 1024
#: ``mount_setattr(2)`` (Linux 5.12+; the same number on every architecture since 5.x's unified table).
SYS_MOUNT_SETATTR = 442
AT_FDCWD, AT_RECURSIVE = -100, 0x8000
MOUNT_ATTR_RDONLY = 0x1
#: Folders every process writes to, fresh and private inside (with their usual modes).
FRESH_FOLDERS = {"/tmp": "1777", "/dev/shm": "1777", "/run": "0755"}


class SandboxUnavailableError(RuntimeError):
    """The kernel (or a security module) refuses unprivileged namespaces here."""


@dataclass
class NodeLaunch:
    """One ``ray start --block`` process the sandbox's init starts."""

    role: str
    args: list[str]
    #: Where the machine keeps the node's output (outside the sandbox: written through ``log_fd``).
    log_path: str
    cwd: str
    #: The node's output, opened by the machine and handed to the sandbox.
    log_fd: int = -1


@dataclass
class SandboxSpec:
    #: Paths covered inside (directories by an empty tmpfs, files by /dev/null); missing ones are skipped.
    hide: list[str]
    #: The only paths writable inside, bound back at their own place (must exist).
    writable: list[str]
    #: What must stay readable where a fresh folder covers it (the Python environment Ray runs from).
    readable: list[str]
    #: Ports listened on at 127.0.0.1 outside and relayed to the same port inside.
    forward_ports: list[int]
    nodes: list[NodeLaunch]
    #: A pipe's end where the init writes ``{role: pid inside}`` once every node is started.
    started_fd: int
    env: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> SandboxSpec:
        data = json.loads(text)
        data["nodes"] = [NodeLaunch(**node) for node in data["nodes"]]
        return cls(**data)


_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        code = ctypes.get_errno()
        raise OSError(code, f"{what}: {os.strerror(code)}")


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    source_b, fstype_b, data_b = (value.encode() if value is not None else None for value in (source, fstype, data))
    _check(_libc.mount(source_b, target.encode(), fstype_b, flags, data_b), f"mount {target}")


def _enter_namespaces() -> None:
    """New user, mount, network and PID namespaces for this (single-threaded) process, the user mapped
    to itself; the PID namespace takes effect for the next child."""
    uid, gid = os.getuid(), os.getgid()
    _check(_libc.unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID), "unshare")
    Path("/proc/self/setgroups").write_text("deny")
    Path("/proc/self/uid_map").write_text(f"{uid} {uid} 1")
    Path("/proc/self/gid_map").write_text(f"{gid} {gid} 1")
    _mount(None, "/", None, MS_REC | MS_PRIVATE)


def machine_sockets() -> list[str]:
    """The paths of the unix sockets listening in this network namespace (``/proc/net/unix``), read
    before leaving it: a database server's socket connects even on a read-only mount."""
    paths = set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/unix").read_text().splitlines()[1:]:
            fields = line.split()
            if len(fields) >= 8 and fields[7].startswith("/"):
                paths.add(fields[7])
    return sorted(paths)


def _read_only(path: str, read_only: bool, *, recursive: bool) -> None:
    """Set (or clear) the read-only flag of the mount at ``path`` (and, ``recursive``, of every mount
    under it: a ``remount,ro`` of ``/`` alone would miss them, each keeping its own flag)."""
    set_flags, clear_flags = (MOUNT_ATTR_RDONLY, 0) if read_only else (0, MOUNT_ATTR_RDONLY)
    attr = struct.pack("QQQQ", set_flags, clear_flags, 0, 0)
    result = _libc.syscall(
        SYS_MOUNT_SETATTR,
        AT_FDCWD,
        path.encode(),
        AT_RECURSIVE if recursive else 0,
        ctypes.c_char_p(attr),
        ctypes.c_size_t(len(attr)),
    )
    _check(result, f"mount_setattr {path} {'read-only' if read_only else 'writable'}")


def _under_fresh_folder(path: str) -> bool:
    return any(path == folder or path.startswith(folder + "/") for folder in FRESH_FOLDERS)


def _build_filesystem(hide: list[str], writable: list[str], readable: list[str], sockets: list[str]) -> None:
    """Cover each ``hide`` path and socket, make the whole tree read-only, mount the fresh folders, then
    bind back what a fresh folder covered of ``readable`` (read-only) and each ``writable`` path (all
    opened before anything is covered)."""
    kept = [(path, os.open(path, O_PATH), False) for path in readable if _under_fresh_folder(path)]
    kept += [(path, os.open(path, O_PATH), True) for path in writable]
    for path in sorted(hide, key=len):
        if os.path.isdir(path):
            _mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0700")
        elif os.path.exists(path):
            _mount("/dev/null", path, None, MS_BIND)
    for path in sockets:
        with contextlib.suppress(OSError):  # gone since, or under a folder hidden already
            _mount("/dev/null", path, None, MS_BIND)
    _read_only("/", True, recursive=True)
    for path, mode in FRESH_FOLDERS.items():
        if os.path.isdir(path):
            _mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV, f"mode={mode}")
    for path, fd, write in kept:
        if os.path.isdir(f"/proc/self/fd/{fd}"):
            os.makedirs(path, exist_ok=True)
        else:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            Path(path).touch()
        # recursive: whatever is hidden under it stays covered (and read-only)
        _mount(f"/proc/self/fd/{fd}", path, None, MS_BIND | MS_REC)
        if write:
            _read_only(path, False, recursive=False)  # a bind copies its source's flags: read-only by now
        os.close(fd)


def _loopback_up() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        name = struct.pack("16sh", b"lo", 0)
        flags = struct.unpack("16sh", fcntl.ioctl(sock, SIOCGIFFLAGS, name))[1]
        fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sh", b"lo", flags | IFF_UP | IFF_RUNNING))


def _drop_privileges() -> None:
    """Empty the capability bounding set (what a uid 0 regains at exec) and forbid gaining any back."""
    for capability in range(64):
        if _libc.prctl(PR_CAPBSET_DROP, capability, 0, 0, 0) != 0 and ctypes.get_errno() == errno.EINVAL:
            break
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(NO_NEW_PRIVS)")
    _check(_libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0), "prctl(DUMPABLE)")


def _relay(listener: socket.socket) -> None:
    """Accept on ``listener`` (outside) and pump each connection to the same port inside."""
    port = listener.getsockname()[1]
    while True:
        outside, _ = listener.accept()
        try:
            inside = socket.create_connection(("127.0.0.1", port))
        except OSError:
            outside.close()
            continue
        threading.Thread(target=_pump, args=(outside, inside), daemon=True).start()


def _pump(first: socket.socket, second: socket.socket) -> None:
    peers = {first: second, second: first}
    with selectors.DefaultSelector() as selector:
        for sock in peers:
            selector.register(sock, selectors.EVENT_READ)
        open_reads = 2
        try:
            while open_reads:
                for key, _ in selector.select():
                    data = key.fileobj.recv(RELAY_CHUNK)
                    if data:
                        peers[key.fileobj].sendall(data)
                    else:  # one side is done sending: pass the end on, keep reading the other way
                        selector.unregister(key.fileobj)
                        open_reads -= 1
                        peers[key.fileobj].shutdown(socket.SHUT_WR)
        except OSError:
            pass
        finally:
            first.close()
            second.close()


def _init(spec: SandboxSpec, listeners: list[socket.socket]) -> int:
    """PID 1 of the sandbox: its own /proc, the nodes, the relays; reaps every orphan until the nodes end."""
    _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    _loopback_up()
    _drop_privileges()
    nodes = {}
    for node in spec.nodes:
        nodes[node.role] = subprocess.Popen(
            node.args,
            env=spec.env,
            cwd=node.cwd,
            stdin=subprocess.DEVNULL,
            stdout=node.log_fd,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        os.close(node.log_fd)
    with os.fdopen(spec.started_fd, "w") as started:
        started.write(json.dumps({role: process.pid for role, process in nodes.items()}))
    for listener in listeners:
        threading.Thread(target=_relay, args=(listener,), daemon=True).start()
    node_pids = {process.pid for process in nodes.values()}

    def stop_nodes(*_: object) -> None:  # an init ignores SIGTERM without a handler: pass it on to the nodes
        for pid in list(node_pids):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop_nodes)
    while node_pids:
        try:
            pid, _ = os.wait()
        except ChildProcessError:
            break
        node_pids.discard(pid)
    return 0


def run(spec: SandboxSpec) -> int:
    """Set the sandbox up and wait for its init (the kernel ends every process inside with it)."""
    listeners = []
    for port in spec.forward_ports:  # bound in the machine's network namespace, before leaving it
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(128)
        listeners.append(listener)
    sockets = machine_sockets()
    _enter_namespaces()
    _build_filesystem(spec.hide, spec.writable, spec.readable, sockets)
    child = os.fork()
    if child == 0:
        try:
            os._exit(_init(spec, listeners))
        except BaseException as error:  # the init must never return into the parent's code
            print(f"sandbox init failed: {error}", file=sys.stderr, flush=True)
            os._exit(1)
    for fd in [spec.started_fd, *(node.log_fd for node in spec.nodes)]:  # the init's alone from here on
        os.close(fd)
    for listener in listeners:
        listener.close()
    _, status = os.waitpid(child, 0)
    return os.waitstatus_to_exitcode(status)


def probe() -> None:
    """Raise :class:`SandboxUnavailableError` unless this machine lets this user make the namespaces."""
    try:
        result = subprocess.run(
            [sys.executable, "-m", __name__, "--probe"], capture_output=True, text=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise SandboxUnavailableError(f"the namespace probe did not run: {error}") from None
    if result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or ["no reason given"])[-1]
        raise SandboxUnavailableError(f"unprivileged namespaces are refused here: {reason}")


def _probe_here() -> int:
    _enter_namespaces()
    _read_only("/", True, recursive=True)
    child = os.fork()
    if child == 0:
        _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        _loopback_up()
        os._exit(0)
    _, status = os.waitpid(child, 0)
    return os.waitstatus_to_exitcode(status)


def main() -> int:
    if sys.argv[1:] == ["--probe"]:
        return _probe_here()
    return run(SandboxSpec.from_json(sys.stdin.read()))


if __name__ == "__main__":
    sys.exit(main())
