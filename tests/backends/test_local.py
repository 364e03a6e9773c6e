"""The local backend against real Ray processes it starts itself."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import pytest

from airflow_ray_platform.backends.base import (
    BackendError,
    ClusterSpecMismatchError,
    ClusterState,
    DeleteCondition,
    JobState,
)
from airflow_ray_platform.backends.local.backend import LocalBackend
from airflow_ray_platform.runs.cluster import wait_for_cluster
from airflow_ray_platform.spec.models import ClusterSpec, JobSpec

from ..conftest import SHARED_CLUSTER, SHARED_SPEC
from ..helpers import WITHOUT_USER_NAMESPACES


def _status(url: str, token: str | None) -> int:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def _wait_job(backend, cluster, submission_id, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = backend.describe_job(cluster, submission_id)
        if info.state.is_terminal:
            return info
        time.sleep(0.3)
    raise AssertionError(f"job {submission_id} did not finish: {info}")


def test_jobs_api_requires_the_clusters_token(backend, shared_cluster):
    url = f"{shared_cluster.dashboard_url}/api/jobs/"
    assert _status(url, None) == 401
    assert _status(url, "not-the-token") == 403
    assert _status(url, backend.registry.read_token(SHARED_CLUSTER)) == 200


def test_registry_is_private_and_info_has_no_token(backend, shared_cluster):
    token = backend.registry.read_token(SHARED_CLUSTER)
    for path in (backend.registry.root, backend.registry.cluster_dir(SHARED_CLUSTER)):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700
    for path in (
        backend.registry.token_path(SHARED_CLUSTER),
        backend.registry.cluster_dir(SHARED_CLUSTER) / "record.json",
    ):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert token not in repr(shared_cluster)
    assert token not in (backend.registry.cluster_dir(SHARED_CLUSTER) / "head.log").read_text()


def test_create_or_get_is_idempotent_and_lists_by_label(backend, shared_cluster):
    again = backend.create_or_get_cluster(SHARED_CLUSTER, SHARED_SPEC, {"other": "labels"})
    with pytest.raises(ClusterSpecMismatchError, match=r'cluster.head.cpu: existing "2", requested "1"'):
        backend.create_or_get_cluster(SHARED_CLUSTER, ClusterSpec(), {"other": "labels"})
    assert again.dashboard_url == shared_cluster.dashboard_url
    assert again.state == ClusterState.READY
    assert [c.name for c in backend.list_clusters({"purpose": "tests"})] == [SHARED_CLUSTER]
    assert backend.list_clusters({"purpose": "nothing"}) == []
    assert shared_cluster.resources["CPU"] == 2


def test_submit_is_idempotent_logs_and_metadata(backend, shared_cluster):
    job = JobSpec(entrypoint="python -c \"import ray; ray.init(); print('cpus', ray.cluster_resources()['CPU'])\"")
    first = backend.submit_job(SHARED_CLUSTER, "backend-submit-1", job, {"k": "v"})
    second = backend.submit_job(SHARED_CLUSTER, "backend-submit-1", job, {"k": "v"})
    assert first.submission_id == second.submission_id == "backend-submit-1"
    done = _wait_job(backend, SHARED_CLUSTER, "backend-submit-1")
    assert done.state == JobState.SUCCEEDED, done.message
    assert done.metadata["k"] == "v"
    assert "cpus 2.0" in backend.job_logs(SHARED_CLUSTER, "backend-submit-1")
    ids = [j.submission_id for j in backend.list_jobs(SHARED_CLUSTER)]
    assert ids.count("backend-submit-1") == 1


def test_stop_job_stops_a_running_job(backend, shared_cluster):
    job = JobSpec(entrypoint="python -c 'import time; time.sleep(300)'")
    backend.submit_job(SHARED_CLUSTER, "backend-stop-1", job, {})
    deadline = time.monotonic() + 60
    while backend.describe_job(SHARED_CLUSTER, "backend-stop-1").state != JobState.RUNNING:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert backend.stop_job(SHARED_CLUSTER, "backend-stop-1")
    assert _wait_job(backend, SHARED_CLUSTER, "backend-stop-1").state == JobState.STOPPED
    assert backend.describe_job(SHARED_CLUSTER, "no-such-job") is None
    assert backend.describe_cluster("never-created") is None


def test_failed_start_reports_the_reason_and_delete_cleans_up(tmp_path):
    backend = LocalBackend(tmp_path / "root")
    spec = ClusterSpec(head={"ray_start_params": {"no-such-ray-flag": "1"}})
    backend.create_or_get_cluster("broken", spec, {})
    deadline = time.monotonic() + 60
    while (info := backend.describe_cluster("broken")).state != ClusterState.FAILED:
        assert time.monotonic() < deadline, info
        time.sleep(0.3)
    assert "no-such-ray-flag" in info.message
    assert backend.delete_cluster("broken")
    assert backend.describe_cluster("broken") is None
    assert not backend.delete_cluster("broken")


def test_delete_stops_every_process_it_started_and_nothing_else(tmp_path):
    """A second cluster with a local worker node: every process of both nodes is gone after delete."""
    backend = LocalBackend(tmp_path / "root")
    bystander = psutil.Popen(["sleep", "120"])  # a process we started that the backend must not touch
    spec = ClusterSpec(
        head={"cpu": "1", "memory": "1Gi", "object_store_memory": "100Mi"},
        worker_groups=[
            {"group_name": "cpu", "replicas": 1, "cpu": "1", "memory": "1Gi", "object_store_memory": "100Mi"}
        ],
    )
    try:
        backend.create_or_get_cluster("two-nodes", spec, {})
        info = wait_for_cluster(backend, "two-nodes", timeout=180, poll_interval=0.5)
        assert info.resources["CPU"] == 2
        job = JobSpec(entrypoint="python -c \"import ray; ray.init(); print('nodes', len(ray.nodes()))\"")
        backend.submit_job("two-nodes", "count-nodes", job, {})
        assert _wait_job(backend, "two-nodes", "count-nodes").state == JobState.SUCCEEDED
        assert "nodes 2" in backend.job_logs("two-nodes", "count-nodes")
        record = backend.registry.load("two-nodes")
        sessions = {node.pid for node in record.nodes}
        members = [p for p in psutil.process_iter() if _sid(p.pid) in sessions]
        assert len(members) > 6  # gcs, raylets, dashboard, agents, ...
        # As if the creator had died right after launching the worker, before recording it: the
        # worker is found by the cluster's temp dir on its command line.
        unrecorded = backend.registry.load("two-nodes")
        unrecorded.nodes = unrecorded.nodes[:1]
        backend.registry.save(unrecorded)
    finally:
        assert backend.delete_cluster("two-nodes")
    assert [p for p in psutil.process_iter() if _sid(p.pid) in sessions] == []
    assert not os.path.exists(record.temp_dir)
    assert bystander.is_running()
    bystander.kill()


def _sid(pid: int) -> int | None:
    try:
        return os.getsid(pid)
    except OSError:
        return None


def test_a_large_log_streams_in_chunks_equal_to_the_whole(backend, shared_cluster):
    """What gets persisted: Ray's log tail, chunk by chunk, adds up to exactly the whole log."""
    entrypoint = "python -c \"import sys\nfor i in range(1000000): sys.stdout.write('zone %06d rmse 0.93\\n' % i)\""
    backend.submit_job(SHARED_CLUSTER, "large-log", JobSpec(entrypoint=entrypoint), {})
    assert _wait_job(backend, SHARED_CLUSTER, "large-log").state == JobState.SUCCEEDED
    whole = backend.job_logs(SHARED_CLUSTER, "large-log").encode()
    chunks = list(backend.job_log_chunks(SHARED_CLUSTER, "large-log"))
    assert len(whole) > 20_000_000 and b"zone 999999 rmse" in whole
    assert b"".join(chunks) == whole
    assert len(chunks) > 1 and max(len(chunk) for chunk in chunks) < len(whole) / 2


def test_a_cluster_still_starting_is_compare_and_deleted(tmp_path):
    """Its creator died while it started: no Jobs API yet, so no job can be on it; GC may delete it."""
    from datetime import UTC, datetime, timedelta

    backend = LocalBackend(tmp_path / "root")
    spec = ClusterSpec(head={"cpu": "1", "memory": "1Gi", "object_store_memory": "100Mi"})
    info = backend.create_or_get_cluster("starting", spec, {})
    assert info.state == ClusterState.PROVISIONING
    record = backend.registry.load("starting")
    assert backend.delete_cluster("starting", DeleteCondition(inactive_since=datetime.now(UTC) + timedelta(seconds=1)))
    assert [p for p in psutil.process_iter() if _sid(p.pid) in {node.pid for node in record.nodes}] == []


def test_a_cluster_name_that_is_a_path_is_refused_and_nothing_is_touched(tmp_path):
    """Found by review: ``"/" + "../"*8 + dir`` deleted any directory holding a record.json."""
    from airflow_ray_platform.backends.base import BackendError

    backend = LocalBackend(tmp_path / "root")
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "record.json").write_text("{}")
    for name in ("/" + "../" * 8 + str(victim).lstrip("/"), "../../victim", "..", "a/b"):
        for call in (backend.delete_cluster, backend.describe_cluster):
            with pytest.raises(BackendError, match="is not a cluster name"):
                call(name)
    assert (victim / "record.json").exists()


def test_one_unreadable_record_is_listed_as_broken_and_the_sweep_goes_on(tmp_path):
    from airflow_ray_platform.maintenance.garbage_collection import apply, plan

    backend = LocalBackend(tmp_path / "root")
    corrupt = backend.registry.cluster_dir("corrupt")
    corrupt.mkdir()
    (corrupt / "record.json").write_text('{"name": "corrupt", "labels": ')
    tokenless = backend.registry.cluster_dir("tokenless")
    tokenless.mkdir()
    record = {
        "name": "tokenless",
        "labels": {},
        "created_at": "2026-01-01T00:00:00+00:00",
        "last_active_at": "2026-01-01T00:00:00+00:00",
        "dashboard_port": 1,
        "gcs_port": 2,
        "temp_dir": str(tmp_path / "gone"),
        "resources": {},
        "nodes": [
            {
                "role": "head",
                "pid": os.getpid(),
                "create_time": psutil.Process().create_time(),
                "log_path": "",
                "agent_port": 3,
            }
        ],
    }
    (tokenless / "record.json").write_text(json.dumps(record))
    listed = {info.name: info for info in backend.list_clusters()}
    assert listed["corrupt"].state == ClusterState.FAILED
    assert listed["tokenless"].state == ClusterState.FAILED and "token file is missing" in listed["tokenless"].message
    assert backend.list_clusters({"purpose": "x"}) == []
    # Found by review: describing or deleting it raised a bare JSONDecodeError, and no sweep collected it.
    described = backend.describe_cluster("corrupt")
    assert described.state == ClusterState.FAILED and described.unusable == listed["corrupt"].message
    assert f"local Ray cluster 'corrupt': its registry record {corrupt / 'record.json'} cannot be read" in (
        described.message
    )
    assert "JSONDecodeError" in described.message and '"labels"' not in described.message  # why, not what
    # A node left running by the corrupt cluster names its temp dir (a folder named after the cluster).
    temp_dir = backend._private_dir_of("corrupt") / "r"
    sleeper = [sys.executable, "-c", "import time; time.sleep(600)"]
    orphan = subprocess.Popen([*sleeper, "--temp-dir", str(temp_dir)], start_new_session=True)
    bystander = subprocess.Popen([*sleeper, "--temp-dir", "/somewhere/else"], start_new_session=True)
    try:
        outcomes = apply(backend, None, plan(backend), dry_run=False, sweep_id="t")
        reasons = {outcome.decision.cluster.name: outcome for outcome in outcomes}
        assert reasons["corrupt"].action == "deleted", reasons["corrupt"].detail
        assert reasons["corrupt"].decision.reason.startswith("unusable: local Ray cluster 'corrupt'")
        assert not corrupt.exists() and "corrupt" not in backend.registry.names()
        assert orphan.wait(timeout=10) is not None and bystander.poll() is None
        assert reasons["tokenless"].action != "deleted"  # readable: kept by the usual rules
    finally:
        for process in (orphan, bystander):
            process.kill()
            process.wait()


PROBE_SCRIPT = """
import json, os, sys
other_token, airflow_config, credentials, worker = sys.argv[1:]

def read(path):
    try:
        with open(path, errors="replace") as handle:
            return handle.read()
    except OSError as error:
        return type(error).__name__

import ctypes, pathlib
libc = ctypes.CDLL(None, use_errno=True)
registry = str(pathlib.Path(other_token).parents[2])
unmounted = libc.umount2(registry.encode(), 2) == 0  # MNT_DETACH: what a job would do to see behind
print(json.dumps({
    "unmounted": unmounted,
    "other_token_after_umount": read(other_token),
    "env": dict(os.environ),
    "cwd": os.getcwd(),
    "own_token": read(os.environ["RAY_AUTH_TOKEN_PATH"]),
    "other_token": read(other_token),
    "airflow_config": read(airflow_config),
    "credentials": read(credentials),
    "worker_cmdline": read(f"/proc/{worker}/cmdline"),
    "processes": len([entry for entry in os.listdir("/proc") if entry.isdigit()]),
}))
"""


def test_a_probe_job_sees_none_of_the_workers_secrets(tmp_path, monkeypatch):
    """Found by review: a job inherited the worker's whole environment (cloud keys, Airflow connections,
    the Fernet key), ran in the registry folder next to every cluster's token, and could read whatever
    the worker's user reads: other clusters' tokens, Airflow's configuration, cloud credential files,
    the worker's own process. In its sandbox it sees its own token and none of those."""
    secrets = {
        "AWS_SECRET_ACCESS_KEY": "probe-aws-secret",
        "AIRFLOW_CONN_WAREHOUSE": "postgresql://user:probe-db-password@db/x",
        "AIRFLOW__CORE__FERNET_KEY": "probe-fernet-key",
        "GOOGLE_APPLICATION_CREDENTIALS": "/probe/gcp.json",
    }
    for key, value in secrets.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("ARP_PASSED_ON_PURPOSE", "visible")
    airflow_home, home = tmp_path / "airflow", tmp_path / "home"
    (airflow_home).mkdir()
    (airflow_home / "airflow.cfg").write_text("[core]\nfernet_key = probe-config-fernet\n")
    (home / ".aws").mkdir(parents=True)
    (home / ".aws" / "credentials").write_text("aws_secret_access_key = probe-file-secret\n")
    monkeypatch.setenv("AIRFLOW_HOME", str(airflow_home))
    monkeypatch.setenv("HOME", str(home))
    backend = LocalBackend(tmp_path / "root", pass_env=["ARP_PASSED_ON_PURPOSE"], sandbox="required")
    other = backend.registry.write_token("other-cluster", "probe-other-clusters-token")
    spec = ClusterSpec(head={"cpu": "1", "memory": "1Gi", "object_store_memory": "100Mi"})
    arguments = [str(other), str(airflow_home / "airflow.cfg"), str(home / ".aws" / "credentials"), str(os.getpid())]
    probe = shlex.join(["python", "-c", PROBE_SCRIPT, *arguments])
    try:
        backend.create_or_get_cluster("probe", spec, {})
        wait_for_cluster(backend, "probe", timeout=180, poll_interval=0.5)
        backend.submit_job("probe", "probe-env", JobSpec(entrypoint=probe), {})
        assert _wait_job(backend, "probe", "probe-env").state == JobState.SUCCEEDED
        output = backend.job_logs("probe", "probe-env")
        seen = json.loads(output.strip().splitlines()[-1])
        record = backend.registry.load("probe")
        own_token = backend.registry.read_token("probe")
        temp_mode = stat.S_IMODE(os.stat(record.private_dir).st_mode)
        log_modes = {stat.S_IMODE(os.stat(node.log_path).st_mode) for node in record.nodes}
    finally:
        backend.delete_cluster("probe")
    leaked = [key for key, value in secrets.items() if key in seen["env"] or value in output]
    assert leaked == []
    assert not [key for key in seen["env"] if key.startswith("AIRFLOW")]
    assert seen["env"]["ARP_PASSED_ON_PURPOSE"] == "visible"
    assert not seen["cwd"].startswith(str(backend.registry.root))
    assert temp_mode == 0o700 and log_modes == {0o600}
    assert seen["own_token"] == own_token  # a job needs its own cluster's token, and has it
    hidden = {name: seen[name] for name in ("other_token", "airflow_config", "credentials")}
    assert hidden == dict.fromkeys(hidden, "FileNotFoundError"), hidden
    # and a job cannot lift what hides them: the sandbox dropped the privilege to unmount, even for uid 0
    assert not seen["unmounted"] and seen["other_token_after_umount"] == "FileNotFoundError"
    assert "pytest" not in seen["worker_cmdline"]  # the worker's process is not there to read
    assert seen["processes"] < len(psutil.pids())


def test_a_sandboxed_cluster_listens_on_this_machines_loopback_only_where_it_is_used(backend, shared_cluster):
    """Found by review: Ray's GCS, raylet and agents listened on every interface. Outside its sandbox, a
    cluster answers only on 127.0.0.1 and only at its dashboard, Ray Client's port (interactive sessions)
    and its nodes' agent and metrics ports; the GCS and every other Ray port are not reachable from this
    machine at all."""
    record = backend.registry.load(SHARED_CLUSTER)
    assert record.sandbox_pid
    sessions = {node.pid for node in record.nodes} | {record.sandbox_pid}
    used = {record.dashboard_port, record.client_port}
    used |= {port for node in record.nodes for port in (node.agent_port, node.metrics_port)}
    assert _listening_ports(sessions) == _listening_ports(sessions, "127.0.0.1") == used
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", record.gcs_port), timeout=5)


def test_a_sandbox_that_is_required_where_none_can_be_made_refuses_before_anything_starts(tmp_path):
    """``sandbox: required`` on a machine whose kernel really refuses namespaces (a user namespace of its
    own with ``max_user_namespaces`` 0): a clear error naming the refusal, and no cluster."""
    root = tmp_path / "root"
    code = (
        "import sys; from airflow_ray_platform.backends.base import BackendError; "
        "from airflow_ray_platform.backends.local.backend import LocalBackend; "
        "from airflow_ray_platform.spec.models import ClusterSpec\n"
        "backend = LocalBackend(sys.argv[1], sandbox='required')\n"
        "try: backend.create_or_get_cluster('refused', ClusterSpec(head={'cpu': '1', 'memory': '1Gi'}), {})\n"
        "except BackendError as error: print(error)\n"
        "print('clusters:', backend.registry.names(), backend.list_clusters())"
    )
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_USER_NAMESPACES, sys.executable, "-c", code, str(root)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    refused = "cannot start a sandboxed local Ray cluster (sandbox: required): unprivileged namespaces are refused"
    assert refused in done.stdout and "unshare" in done.stdout  # the kernel's own refusal, named
    assert "clusters: [] []" in done.stdout
    with pytest.raises(BackendError, match="'sandbox' must be one of"):
        LocalBackend(tmp_path / "root", sandbox="sometimes")


def test_writable_paths_that_would_undo_the_sandbox_are_refused(tmp_path):
    """A folder jobs may write must not hold, nor lie in, what runs outside their sandbox: found by review,
    a writable_paths entry inside the Python environment let a job plant a ``.pth`` file after all."""
    import sysconfig

    root = tmp_path / "root"
    environment = "holds or lies in the Python environment Ray runs from"
    refused = {
        sysconfig.get_paths()["purelib"]: environment,
        "/": environment,
        str(Path(os.environ["AIRFLOW_HOME"]) / "dags"): "holds or lies in Airflow's home",
        str(root / "clusters"): "holds or lies in the local backend's registry",
        "outputs": "must be an absolute path",
    }
    for path, rule in refused.items():
        with pytest.raises(BackendError, match=re.escape(rule)):
            LocalBackend(root, writable_paths=[path])
    allowed = LocalBackend(root, writable_paths=[str(tmp_path / "outputs")])
    assert allowed.writable_paths == ((tmp_path / "outputs").resolve(),)


def _listening_ports(sessions: set[int], address: str | None = None) -> set[int]:
    """Every TCP port on this machine's network that a process of these sessions listens on (at ``address``)."""
    ports = set()
    for connection in psutil.net_connections(kind="inet"):
        if connection.status != psutil.CONN_LISTEN or not connection.pid:
            continue
        with contextlib.suppress(ProcessLookupError):
            if os.getsid(connection.pid) in sessions and address in (None, connection.laddr.ip):
                ports.add(connection.laddr.port)
    return ports


def test_without_a_sandbox_the_heads_own_metrics_servers_are_on_ports_chosen_free(tmp_path):
    """Where a cluster runs without a sandbox (``sandbox: off``, or a machine refusing namespaces), its
    ports are this machine's: Ray's dashboard and autoscaler serve metrics on 44227 and 44217 unless told
    otherwise, so a second head would clash with the first, and a fixed port is one anybody can predict."""
    backend = LocalBackend(tmp_path / "root", sandbox="off")
    try:
        backend.create_or_get_cluster("plain", ClusterSpec(head={"cpu": "1", "memory": "1Gi"}), {})
        wait_for_cluster(backend, "plain", timeout=180, poll_interval=0.5)
        record = backend.registry.load("plain")
        ports = _listening_ports({node.pid for node in record.nodes})
    finally:
        backend.delete_cluster("plain")
    assert record.sandbox_pid == 0
    assert record.dashboard_port in ports and not ports & {44217, 44227}, sorted(ports)


def test_a_running_jobs_log_is_read_from_its_offset_each_byte_once(backend, shared_cluster):
    """A chatty job's log, polled while it runs as a wait does: whole lines only, nothing read twice."""
    script = (
        "import sys, time\n"
        "for batch in range(20):\n"
        "    sys.stdout.write(''.join(f'line {batch}-{i} ' + 'x' * 200 + '\\n' for i in range(500)))\n"
        "    sys.stdout.write('partial-')\n"  # a line cut in two across polls
        "    sys.stdout.flush(); time.sleep(0.15)\n"
        "    print('done', batch, 'é' * 3, flush=True)\n"
    )
    job = JobSpec(entrypoint="python -c " + shlex.quote(script))
    backend.submit_job(SHARED_CLUSTER, "backend-incremental-1", job, {})
    me = psutil.Process()
    read_before, text, offset, polls = me.io_counters().read_chars, "", 0, 0
    while True:
        state = backend.describe_job(SHARED_CLUSTER, "backend-incremental-1").state
        new, offset = backend.job_log_since(SHARED_CLUSTER, "backend-incremental-1", offset)
        assert new == "" or new.endswith("\n"), "a line still being written was handed over"
        text, polls = text + new, polls + 1
        if state.is_terminal:
            break
        time.sleep(0.1)
    rest, offset = backend.job_log_since(SHARED_CLUSTER, "backend-incremental-1", offset, complete_lines=False)
    text += rest
    read = me.io_counters().read_chars - read_before
    whole = backend.job_logs(SHARED_CLUSTER, "backend-incremental-1")
    assert state == JobState.SUCCEEDED and text == whole and "done 19 ééé" in text
    assert offset == len(whole.encode())
    # each byte of the log read once; besides it, each poll reads the small registry record (and the
    # status call's HTTP response, a few kB)
    assert read < 1.1 * offset + polls * 64 * 1024, (read, offset, polls)
