"""Teams under a platform policy, end to end: real Airflow (dag.test) and a real Ray cluster of team-b's.

Team A's DAGs cannot use, stop, read the logs of or delete team B's cluster, and cannot bill team B;
team C, which team B's cluster admits, may submit to it but touches only its own jobs and never
deletes it; the cleanup DAG stops the jobs of a cluster past the policy's hard lifetime and deletes it.
Every refusal changes nothing and is in the audit trail.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sysconfig
import tempfile
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from airflow.utils.state import DagRunState, TaskInstanceState

from airflow_ray_platform.backends.base import ClusterState
from airflow_ray_platform.maintenance.garbage_collection import apply, decide
from airflow_ray_platform.records.lifecycle import LifecycleRecorder
from airflow_ray_platform.records.state_store import StateStore
from airflow_ray_platform.spec.models import JobSpec
from airflow_ray_platform.spec.naming import TEAM_LABEL, TEAM_METADATA
from airflow_ray_platform.spec.timestamps import utc_now
from airflow_ray_platform.tenancy.authorization import authorized
from airflow_ray_platform.tenancy.policy import Actor, load_policy

from ..helpers import dag_test_in_subprocess, recorded_job
from ..test_dags import tenancy_dags as dags
from ..test_dags.tenancy_dags import TEAM_B_CLUSTER

pytestmark = pytest.mark.usefixtures("airflow_db")

POLICY = {
    "defaults": {"max_cpus": "4", "max_memory": "8Gi"},
    "teams": {team: {"match": {"dag_ids": [f"tenancy_{team[-1]}_*"]}} for team in ("team-a", "team-b", "team-c")},
}
HOSTILE_JOB = Path(__file__).parents[1] / "tenancy" / "probes" / "hostile_job.py"
POLICY["teams"]["team-c"]["sandbox"] = "required"
LONG_JOB = "python -c \"import time; print('team b at work', flush=True); time.sleep(600)\""


@pytest.fixture(scope="module")
def policy_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("policy") / "policy.yaml"
    path.write_text(json.dumps(POLICY))  # JSON is YAML
    os.environ["AIRFLOW__RAY_PLATFORM__POLICY"] = str(path)
    yield path
    os.environ.pop("AIRFLOW__RAY_PLATFORM__POLICY")


@pytest.fixture(scope="module")
def team_b_cluster(policy_file, local_backend):
    run = dags.tenancy_b_cluster.test()
    assert run.state == DagRunState.SUCCESS
    yield local_backend.describe_cluster(TEAM_B_CLUSTER)
    local_backend.delete_cluster(TEAM_B_CLUSTER)


@pytest.fixture(scope="module")
def team_b_job(team_b_cluster, local_backend):
    run = dags.tenancy_b_job.test(run_conf={"entrypoint": LONG_JOB})
    assert run.state == DagRunState.SUCCESS
    submission_id = run.get_task_instance("job").xcom_pull(task_ids="job", key="submission_id")
    return local_backend.describe_job(TEAM_B_CLUSTER, submission_id)


def _audit(team: str) -> set[str]:
    return {event["kind"] for event in StateStore.from_airflow_connection(None).audit_trail(team=team)}


def _failed_tasks(run) -> set[str]:
    return {ti.task_id for ti in run.get_task_instances() if ti.state == TaskInstanceState.FAILED}


def test_team_b_works_on_its_own_cluster_stamped_with_its_team(team_b_cluster, team_b_job):
    assert team_b_cluster.state == ClusterState.READY and team_b_cluster.labels[TEAM_LABEL] == "team-b"
    assert team_b_job.metadata[TEAM_METADATA] == "team-b" and not team_b_job.state.is_terminal
    assert {"create_allowed", "submit_allowed"} <= _audit("team-b")


def test_team_a_cannot_use_team_b_cluster(team_b_job, local_backend, capfd):
    run = dags.tenancy_a_use_b.test(run_conf={"entrypoint": "python -c 'print(666)'"})
    assert run.state == DagRunState.FAILED
    assert "refused: team 'team-a' may not use Ray cluster 'tenancy-b': it belongs to team 'team-b'" in (
        capfd.readouterr().out
    )
    teams = {job.metadata.get(TEAM_METADATA) for job in local_backend.list_jobs(TEAM_B_CLUSTER)}
    assert "team-a" not in teams  # nothing was submitted
    assert "use_refused" in _audit("team-a")


def test_team_a_cannot_delete_team_b_cluster_even_with_force(team_b_job, local_backend):
    run = dags.tenancy_a_delete_b.test()
    assert run.state == DagRunState.FAILED
    assert local_backend.describe_cluster(TEAM_B_CLUSTER).state == ClusterState.READY
    assert not local_backend.describe_job(TEAM_B_CLUSTER, team_b_job.submission_id).state.is_terminal
    assert "delete_refused" in _audit("team-a")


def test_team_a_cannot_stop_nor_read_team_b_jobs(team_b_job, local_backend, capfd):
    run = dags.tenancy_a_touch_job.test(run_conf={"submission_id": team_b_job.submission_id})
    assert run.state == DagRunState.FAILED
    assert _failed_tasks(run) == {"stop", "live_log", "persisted_log"}
    out = capfd.readouterr().out
    assert "team b at work" not in out  # not one line of team b's log reached team a's task log
    assert not local_backend.describe_job(TEAM_B_CLUSTER, team_b_job.submission_id).state.is_terminal
    assert {"stop_refused", "read_logs_refused"} <= _audit("team-a")


def test_a_team_cannot_bill_another_nor_exceed_its_ceilings(team_b_cluster, local_backend, capfd):
    before = {cluster.name for cluster in local_backend.list_clusters()}
    claims = dags.tenancy_a_claims_b.test()
    too_big = dags.tenancy_a_too_big.test()
    nobody = dags.tenancy_nobody.test()
    assert DagRunState.FAILED == claims.state == too_big.state == nobody.state
    out = capfd.readouterr().out
    assert "job_configuration.team: 'team-b', but the platform policy assigns this DAG to team 'team-a'" in out
    assert "job_configuration.cluster: up to 64 CPU with every worker group at its max_replicas, over" in out
    assert "job_configuration.cluster.auth: disabled (an unauthenticated Jobs API) is not allowed" in out
    assert "assigns DAG 'tenancy_nobody' (bundle" in out and "to no team" in out
    assert {cluster.name for cluster in local_backend.list_clusters()} == before  # nothing was created
    assert "run_refused" in _audit("team-a")


def test_an_admitted_team_submits_but_touches_only_its_own_jobs_and_never_deletes(team_b_job, local_backend):
    run = dags.tenancy_c_on_b.test(run_conf={"entrypoint": "python -c \"print('team c was here')\""})
    assert run.state == DagRunState.SUCCESS
    own = run.get_task_instance("job").xcom_pull(task_ids="job", key="submission_id")
    assert local_backend.describe_job(TEAM_B_CLUSTER, own).metadata[TEAM_METADATA] == "team-c"
    assert recorded_job(own)["team"] == "team-c"

    mine = dags.tenancy_c_touch_job.test(run_conf={"submission_id": own})
    assert mine.state == DagRunState.SUCCESS  # its own finished job: stop (a no-op), live and persisted log
    assert "team c was here" in mine.get_task_instance("persisted_log").xcom_pull(task_ids="persisted_log")

    theirs = dags.tenancy_c_touch_job.test(run_conf={"submission_id": team_b_job.submission_id})
    # refused; and team b's job, still running, has no persisted log yet (team a's refusal of one is below)
    assert _failed_tasks(theirs) == {"stop", "live_log", "persisted_log"}
    assert not local_backend.describe_job(TEAM_B_CLUSTER, team_b_job.submission_id).state.is_terminal

    assert dags.tenancy_c_delete_b.test().state == DagRunState.FAILED
    assert local_backend.describe_cluster(TEAM_B_CLUSTER) is not None

    outsider = dags.tenancy_a_touch_job.test(run_conf={"submission_id": own})
    assert _failed_tasks(outsider) == {"stop", "live_log", "persisted_log"}  # team c's log is not team a's
    assert {"stop_refused", "delete_refused"} <= _audit("team-c") and "submit_allowed" in _audit("team-c")


def test_an_admitted_team_cannot_take_a_job_whose_metadata_claims_it(team_b_job, local_backend):
    """Found by review: which team a job belongs to was read from its Ray metadata, which whoever holds
    the cluster's token writes (a notebook of team b's, a script). A job claiming team c that the provider
    never submitted for team c is not team c's to stop or read: its records say whose a job is."""
    forged = local_backend.submit_job(
        TEAM_B_CLUSTER, "forged-team-c", JobSpec(entrypoint=LONG_JOB), {TEAM_METADATA: "team-c"}
    )
    try:
        run = dags.tenancy_c_touch_job.test(run_conf={"submission_id": forged.submission_id})
        assert _failed_tasks(run) == {"stop", "live_log", "persisted_log"}
        assert not local_backend.describe_job(TEAM_B_CLUSTER, forged.submission_id).state.is_terminal
    finally:
        local_backend.stop_job(TEAM_B_CLUSTER, forged.submission_id)


def test_task_ray_and_notebook_sessions_are_under_the_same_policy(team_b_cluster, local_backend, capfd):
    from airflow_ray_platform.interactive import ray_cluster
    from airflow_ray_platform.tenancy.authorization import AuthorizationError
    from airflow_ray_platform.tenancy.policy import PolicyViolation

    refused = dags.tenancy_a_task_ray_on_b.test()
    assert refused.state == DagRunState.FAILED
    assert "refused: team 'team-a' may not use Ray cluster 'tenancy-b'" in capfd.readouterr().out
    admitted = dags.tenancy_c_task_ray_on_b.test()
    assert admitted.state == DagRunState.SUCCESS
    assert admitted.get_task_instance("job").xcom_pull(task_ids="job") == 42

    on_b = {"name": "notebook", "owner": "me", "team": "team-a", "cluster": {"name": TEAM_B_CLUSTER}}
    with pytest.raises(PolicyViolation, match="team: required under the platform policy"), ray_cluster(on_b):
        pass
    with (
        pytest.raises(AuthorizationError, match="team 'team-a' may not use Ray cluster 'tenancy-b'"),
        ray_cluster(on_b, team="team-a"),
    ):
        pass
    with (  # team-c may submit to team-b's cluster, but not take its token to a notebook
        pytest.raises(AuthorizationError, match="team 'team-c' may not connect a Ray client to Ray cluster"),
        ray_cluster({**on_b, "team": "team-c"}, team="team-c"),
    ):
        pass
    with ray_cluster({**on_b, "team": "team-b"}, team="team-b") as session:
        assert session.connection.token  # its own team's cluster: the address and token are handed over
    assert "use_refused" in _audit("team-a") and "connect_allowed" in _audit("team-b")


def test_a_hostile_job_reaches_nothing_past_its_cluster(team_b_cluster, local_backend, monkeypatch, capfd):
    """A team's job tries, from inside its (sandboxed) cluster, what an attacker on a shared machine
    would: rewrite the record the machine acts on, plant a ``.pth`` in site-packages, edit DAGs, write
    the worker's home, /tmp and /dev/shm, connect to the database servers' sockets, read another
    cluster's token and the worker's environment, and have the machine read a file of its choosing
    through its own driver log. Each fails, and nothing it wrote is on the machine afterwards."""
    from airflow.configuration import conf

    from airflow_ray_platform.backends.local import sandbox

    assert team_b_cluster.sandboxed
    marker = f"arp-hostile-{uuid.uuid4().hex[:12]}"
    worker_secret = f"worker-secret-{uuid.uuid4().hex}"
    monkeypatch.setenv("ARP_PROBE_WORKER_SECRET", worker_secret)
    # where Airflow keeps its configuration (the Fernet key): hidden from every job
    secret_file = Path(os.environ["AIRFLOW_HOME"]) / f"{marker}.cfg"
    secret_file.write_text("[core]\nfernet_key = not-for-jobs\n")
    other_token = local_backend.registry.write_token("hostile-other", "another-clusters-token")
    sockets = sandbox.machine_sockets()
    assert sockets, "no unix socket listens on this machine (PostgreSQL's and MariaDB's are expected)"
    record_path = local_backend.registry.cluster_dir(TEAM_B_CLUSTER) / "record.json"
    worker_home = os.environ["HOME"]
    args = {
        "marker": marker,
        "record": str(record_path),
        "dags_folder": conf.get("core", "dags_folder"),
        "worker_home": worker_home,
        "other_token": str(other_token),
        "secret_file": str(secret_file),
        "sockets": sockets,
        "worker_secret": worker_secret,
    }
    # its text, not its path: the job sees nothing of this checkout where it lies under a fresh /tmp
    entrypoint = shlex.join(["python", "-c", HOSTILE_JOB.read_text(), json.dumps(args)])
    try:
        run = dags.tenancy_b_probe.test(run_conf={"entrypoint": entrypoint})
        out = capfd.readouterr().out
        private_dir = local_backend.registry.load(TEAM_B_CLUSTER).private_dir
        seen = json.loads((private_dir / "home" / "probe.json").read_text())
    finally:
        local_backend.registry.remove("hostile-other")
        secret_file.unlink()

    # (the DAGs folder is read-only, or, in a checkout under /tmp, inside the job's private /tmp: below)
    must_fail = ["write its record", "write site-packages"]
    must_fail += ["read another cluster's token", "read the machine's secret", *(f"connect {path}" for path in sockets)]
    assert {attempt: seen[attempt] for attempt in must_fail if not seen[attempt].startswith("refused")} == {}
    assert seen["environments holding the worker's secret"] == []
    # what it could write landed in its own private /tmp and /dev/shm: nothing of it is on the machine
    written = [Path("/tmp", marker), Path("/dev/shm", marker), Path(worker_home, marker)]
    written += [
        Path(tempfile.gettempdir(), "airflow", "dag_bundles", marker),
        Path(args["dags_folder"], f"{marker}.py"),
    ]
    written += list(Path(sysconfig.get_paths()["purelib"]).glob(f"{marker}*"))
    assert [path for path in written if path.exists()] == []
    assert local_backend.registry.load(TEAM_B_CLUSTER).labels[TEAM_LABEL] == "team-b"  # its record is the machine's
    # the machine did not read the file the job's driver log was made to point to: the task fails, saying why
    assert run.state == DagRunState.FAILED
    assert "the cluster replaced it with a link" in out
    assert "not-for-jobs" not in out
    submission_id = run.get_task_instance("job").xcom_pull(task_ids="job", key="submission_id")
    assert "not-for-jobs" not in json.dumps(recorded_job(submission_id), default=str)


def test_a_team_whose_policy_requires_the_sandbox_never_runs_outside_it(
    team_b_cluster, local_backend, monkeypatch, capfd, tmp_path
):
    """Team c's policy says ``sandbox: required``. On team b's (sandboxed) cluster it works (above); a
    cluster of its own, where the connection turns the sandbox off or the machine cannot make one (a
    worker process whose kernel refuses it user namespaces), is refused before anything starts, and the
    refusal is audited."""
    off = json.dumps({"conn_type": "ray", "extra": {"backend": "local", "sandbox": "off"}})
    monkeypatch.setenv("AIRFLOW_CONN_RAY_SANDBOX_OFF", off)
    before = {cluster.name for cluster in local_backend.list_clusters()}
    turned_off = dags.tenancy_c_sandbox_off.test()
    assert turned_off.state == DagRunState.FAILED
    out = capfd.readouterr().out
    log = tmp_path / "unable.log"
    worker = dag_test_in_subprocess(
        "tenancy_c_own_cluster", utc_now(), None, log, module="tenancy_dags", user_namespaces=False
    )
    assert worker.wait(timeout=300) == 0, log.read_text()[-3000:]
    unable = log.read_text()
    refusal = (
        r"refused: team 'team-c' may not create Ray cluster 'tenancy-[0-9a-f]+' outside the local backend's "
        r"sandbox, which the policy requires for this team \(sandbox: required\), and none can be made here: "
    )
    assert re.search(refusal + "the ray connection's sandbox option is off", out)
    assert re.search(refusal + r"unprivileged namespaces are refused here: .*No space left on device", unable)
    assert {cluster.name for cluster in local_backend.list_clusters()} == before  # nothing was created
    assert "create_refused" in _audit("team-c")


def test_past_the_hard_lifetime_the_cleanup_dag_stops_the_jobs_and_deletes_the_cluster(
    policy_file, team_b_job, local_backend
):
    """Last in this module: it ends team b's job and cluster."""
    policy = load_policy(policy_file)
    recorder = LifecycleRecorder(None)
    cleanup = authorized(local_backend, Actor(None, cleanup=True), policy, recorder.audit)
    cluster = cleanup.describe_cluster(TEAM_B_CLUSTER)
    jobs = cleanup.list_jobs(TEAM_B_CLUSTER)
    decision = decide(cluster, jobs, utc_now(), hard_lifetime=lambda team: timedelta(seconds=1))
    assert decision.delete and [job.submission_id for job in decision.stop_jobs] == [team_b_job.submission_id]
    (outcome,) = apply(cleanup, recorder, [decision], dry_run=False, sweep_id="hard-lifetime")
    assert outcome.action == "deleted", outcome.detail
    assert local_backend.describe_cluster(TEAM_B_CLUSTER) is None
    row = recorded_job(team_b_job.submission_id)
    assert row["state"] == "STOPPED" and "hard max_lifetime" in row["message"]
    assert {"stop_allowed", "delete_allowed"} <= _audit("cleanup")
