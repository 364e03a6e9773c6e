"""``airflow-ray``, the console script itself, as a subprocess on the session's real local backend."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from airflow_ray_platform.spec.models import JobSpec
from airflow_ray_platform.spec.naming import CLI_DAG_ID, TaskIdentity

from ..conftest import SHARED_CLUSTER
from ..waiting import wait_for

pytestmark = pytest.mark.usefixtures("shared_cluster", "airflow_db")

CLI = str(Path(sys.executable).parent / "airflow-ray")
EXAMPLE = Path(__file__).parents[2] / "dags" / "zone_training"
WHO = "owner: me\nteam: platform\n"


def _cli(*args: str, check: int | None = 0) -> subprocess.CompletedProcess:
    done = subprocess.run([CLI, *args], capture_output=True, text=True, timeout=600)
    if check is not None:
        assert done.returncode == check, (done.returncode, done.stdout[-2000:], done.stderr[-2000:])
    return done


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "job_configuration.yaml"
    path.write_text(text)
    return path


def test_submit_runs_the_example_configuration_and_reads_its_log_once_its_cluster_is_gone(local_backend, tmp_path):
    """The example DAG's own YAML, its params given on the command line: an ephemeral cluster is created,
    the job runs with its log followed, the cluster is deleted, and the log is still readable."""
    run_id = "cli__example"
    done = _cli(
        "submit",
        str(EXAMPLE / "job_configuration.yaml"),
        "--working-dir",
        str(EXAMPLE),
        "-p",
        "zones=6",
        "-p",
        "cpus_per_zone=0.5",
        "-p",
        f"output_dir={tmp_path}",
        "--run-id",
        run_id,
        "--follow",
        "--json",
    )
    record = json.loads(done.stdout[done.stdout.index("{\n") :])
    identity = TaskIdentity(CLI_DAG_ID, "zone-training", run_id)
    assert record["submission_id"] == identity.submission_id() and record["state"] == "SUCCEEDED"
    assert "trained 6/6 zones" in done.stdout and "SUMMARY {" in done.stdout  # the driver's output, followed
    assert local_backend.describe_cluster(record["cluster_name"]) is None  # its ephemeral cluster is gone
    persisted = _cli("logs", record["submission_id"]).stdout
    assert persisted and persisted in done.stdout  # every line that was followed live, read back after
    status = json.loads(_cli("status", record["submission_id"], "--json").stdout)
    assert status["source"] == "record" and status["state"] == "SUCCEEDED" and status["cluster_deleted_at"]
    assert len(list((tmp_path / run_id.replace(":", "-")).glob("zones/zone-*/metrics.json"))) == 6
    usage = json.loads(_cli("usage", "--since", "2026-01-01", "--json").stdout)
    forecasting = next(row for row in usage["teams"] if row["team"] == "forecasting")
    assert forecasting["jobs"] >= 1 and forecasting["cpu_hours"] > 0


def test_the_same_run_id_reattaches_instead_of_submitting_again(local_backend, tmp_path):
    config = _write(
        tmp_path,
        f"{WHO}name: cli-reattach\ncluster: {{name: shared}}\njob: {{entrypoint: \"python -c 'print(42)'\"}}\n",
    )
    first = _cli("submit", str(config), "--run-id", "cli__same", "--json")
    again = _cli("submit", str(config), "--run-id", "cli__same", "--json")
    assert json.loads(first.stdout)["submission_id"] == json.loads(again.stdout)["submission_id"]
    assert "Reattaching to Ray job" in again.stderr
    ids = [job.submission_id for job in local_backend.list_jobs(SHARED_CLUSTER)]
    assert ids.count(json.loads(first.stdout)["submission_id"]) == 1


def test_the_cli_and_the_operator_lease_a_shared_cluster_alike(local_backend, tmp_path):
    """Both go through ``runs.cluster.resolve_cluster``: each holds a lease on the shared cluster for its run
    while its job runs (so no teardown or sweep deletes the cluster under it); the CLI's run ends with the
    command, and its lease with it."""
    from ..test_dags import ray_e2e_dags as dags

    def holders() -> set[tuple[str, str]]:
        return {
            (lease.holder.dag_id, lease.holder.run_id)
            for lease in local_backend.describe_cluster(SHARED_CLUSTER).leases
        }

    config = _write(
        tmp_path,
        f"{WHO}name: cli-lease\ncluster: {{name: shared}}\n"
        "job: {entrypoint: \"python -c 'import time; time.sleep(6)'\"}\n",
    )
    submit = subprocess.Popen([CLI, "submit", str(config), "--run-id", "cli__lease"], stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: (CLI_DAG_ID, "cli__lease") in holders(), timeout=60, what="the CLI's lease")
    finally:
        _, stderr = submit.communicate(timeout=120)
    assert submit.returncode == 0, stderr[-2000:]
    assert (CLI_DAG_ID, "cli__lease") not in holders()

    run = dags.ray_job_blocking.test(run_conf={"entrypoint": "python -c 'print(1)'"})
    assert ("ray_job_blocking", run.run_id) in holders()  # held for the DAG run, released by its teardown


def test_a_failed_job_exits_1_with_its_error_in_one_line(tmp_path):
    config = _write(
        tmp_path,
        f"{WHO}name: cli-fails\ncluster: {{name: shared}}\njob: {{entrypoint: \"python -c 'raise SystemExit(3)'\"}}\n",
    )
    done = _cli("submit", str(config), check=1)
    error = done.stderr.strip().splitlines()[-1]
    assert error.startswith("error: Ray job 'airflow-airflow-ray-cli-cli-fails-") and "FAILED" in error, done.stderr
    assert "exit code 3" in error and "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("text", "args", "expected"),
    [
        (f"{WHO}name: Bad_Name\njob: {{entrypoint: 'true'}}\n", (), "name"),
        (f"{WHO}name: ok\ncluster: {{head: {{cpu: '-1'}}}}\njob: {{entrypoint: 'true'}}\n", (), "cluster.head.cpu"),
        (f"{WHO}name: ok\njob: {{entrypoint: 'true', args: ['{{{{ params.zones }}}}']}}\n", (), "job.args[0]"),
        (f"{WHO}name: ok\njob: {{entrypoint: 'true'}}\n", ("-p", "no-equals-sign"), "--param"),
        (f"{WHO}name: ok\njob: {{entrypoint: 'true'}}\n", ("--cluster-name", "../etc"), "--cluster-name"),
        ("name: ok\njob: {entrypoint: 'true'}\n", (), "owner: Field required"),
        ("name: [unclosed\n", (), "is not valid YAML at line"),
    ],
)
def test_bad_input_is_one_line_naming_the_field_exit_2_and_creates_nothing(
    local_backend, tmp_path, text, args, expected
):
    clusters_before = {info.name for info in local_backend.list_clusters()}
    done = _cli("submit", str(_write(tmp_path, text)), *args, check=2)
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], done.stderr
    assert {info.name for info in local_backend.list_clusters()} == clusters_before


def test_an_unknown_connection_and_a_missing_job_are_clear_errors():
    done = _cli("--conn-id", "no_such_connection", "clusters", "list", check=2)
    assert done.stderr.startswith("error: connection: ") and "no_such_connection" in done.stderr
    done = _cli("logs", "no-such-job", check=1)
    assert done.stderr.strip() == "error: no Ray job 'no-such-job' is recorded; name its cluster with --cluster"


def test_clusters_list_and_a_dry_run_sweep(local_backend):
    listed = json.loads(_cli("clusters", "list", "--json").stdout)
    assert {row["name"]: row["sandboxed"] for row in listed}[SHARED_CLUSTER] is True
    swept = json.loads(_cli("gc", "--dry-run", "--json").stdout)
    decisions = {row["cluster"]: row for row in swept["clusters"]}
    assert decisions[SHARED_CLUSTER]["action"] == "kept" and "not managed" in decisions[SHARED_CLUSTER]["reason"]
    assert local_backend.describe_cluster(SHARED_CLUSTER) is not None
    refused = _cli("clusters", "delete", "nowhere", check=1)
    assert refused.stderr.strip() == "error: no Ray cluster 'nowhere' on backend 'local'"


def test_quick_commands_import_neither_airflow_nor_ray(local_backend):
    """``clusters list`` and ``status`` answer in about half a second: connections and options come from the
    environment and airflow.cfg as Airflow would read them, jobs from the Jobs REST API (docs/cli-and-ray-view.md)."""
    submission_id = "cli-quick-status"
    local_backend.submit_job(SHARED_CLUSTER, submission_id, JobSpec(entrypoint="python -c 'print(1)'"), {})
    commands = [["clusters", "list", "--json"], ["status", submission_id, "--cluster", SHARED_CLUSTER, "--json"]]
    script = (
        "import json, sys\n"
        "from airflow_ray_platform.cli.main import main\n"
        f"for argv in {commands!r}:\n"
        "    main(argv, standalone_mode=False)\n"
        "print(json.dumps(sorted(name for name in ('airflow', 'ray') if name in sys.modules)))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    outputs = done.stdout.strip().splitlines()
    assert json.loads(outputs[-1]) == []
    assert f'"submission_id": "{submission_id}"' in done.stdout and f'"name": "{SHARED_CLUSTER}"' in done.stdout
