"""``airflow-ray``: the platform from a terminal, with the same ``job_configuration`` and rules as a DAG.

A developer runs the YAML a DAG will run, against the same connections (``--conn-id``: the embedded
local backend by default, a KubeRay or dashboard connection as configured for Airflow), through the same
code: the configuration is validated before anything is created, the cluster is created (or reused) and
the job submitted by :mod:`~airflow_ray_platform.runs.job_run` as the operator does, with a deterministic
submission id (the same ``--run-id`` reattaches to its job instead of submitting again), and every
transition recorded in the same state store, so the job shows up in usage and its log outlives its
cluster. A submission acts as the task ``airflow-ray-cli/<name>/<run id>``; under a platform policy the
CLI authenticates no one (it acts with the caller's own backend credentials), so it requires ``--team``
to match the configuration's and records the operating-system user in the audit trail.

Output for people goes to stderr (Rich), data (logs, ``--json``) to stdout. An error is one line naming
the field or the reason, with exit code 2 for bad input and 1 for a failed job or backend; never a
traceback. Heavy modules are imported by the commands that need them, so ``--help`` is instant.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import Any

import click

from airflow_ray_platform.spec.naming import CLI_DAG_ID

#: Exit codes: the job failed, stopped or timed out (or the backend failed); the input was refused.
EXIT_FAILED, EXIT_BAD_INPUT = 1, 2


class CliError(click.ClickException):
    """One line for the user, and an exit code; never a traceback."""

    def __init__(self, message: str, exit_code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


class _Platform:
    """What every command shares: the connection, the state store, the actor, built on first use."""

    def __init__(self, conn_id: str, state_store_conn_id: str | None, log_storage_uri: str | None) -> None:
        self.conn_id = conn_id
        self.state_store_conn_id = state_store_conn_id
        self.log_storage_uri = log_storage_uri
        self.team: str | None = None

    @cached_property
    def console(self) -> Any:
        from rich.console import Console

        return Console(stderr=True, highlight=False)

    @cached_property
    def recorder(self) -> Any:
        from airflow_ray_platform.records.lifecycle import LifecycleRecorder

        return LifecycleRecorder(self.state_store_conn_id, self.log_storage_uri)

    @cached_property
    def store(self) -> Any:
        from airflow_ray_platform.records.state_store import StateStore

        store = StateStore.from_airflow_connection(self.state_store_conn_id)
        store.migrate()
        return store

    def actor(self, identity: Any = None, claimed_team: str | None = None) -> Any:
        """Who acts (``Actor.outside_airflow``): ``--team`` under a policy, the operating-system user."""
        from airflow_ray_platform.tenancy.policy import Actor

        return Actor.outside_airflow(self.team, identity, claimed_team, team_field="--team")

    def backend(self, actor: Any) -> Any:
        """The connection's backend for ``actor``, authorized and audited as the hook's is (without Airflow)."""
        from airflow_ray_platform.tenancy.connected import connected_backend
        from airflow_ray_platform.tenancy.policy import configured_policy

        backend = connected_backend(  # the recorder (and its database driver) made only when first used
            self.conn_id,
            actor,
            configured_policy(),
            lambda entry: self.recorder.audit(entry),
            lambda submission_id: self.recorder.job_team(submission_id),
        )
        return backend


def _os_user() -> str | None:
    from airflow_ray_platform.tenancy.policy import os_user

    return os_user()


def _handle_errors(function: Callable[..., Any]) -> Callable[..., Any]:
    """The platform's errors as one line each: bad input (exit 2) or a backend's reason (exit 1)."""
    import functools

    @functools.wraps(function)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from airflow_ray_platform.backends.base import BackendError
        from airflow_ray_platform.connections import ConnectionNotFoundError
        from airflow_ray_platform.spec.models import JobConfigurationError
        from airflow_ray_platform.tenancy.policy import PolicyError, PolicyViolation

        try:
            return function(*args, **kwargs)
        except click.ClickException:
            raise
        except (JobConfigurationError, PolicyViolation, PolicyError) as error:
            raise CliError(_one_line(error), EXIT_BAD_INPUT) from None
        except ConnectionNotFoundError as error:
            raise CliError(f"connection: {_one_line(error)}", EXIT_BAD_INPUT) from None
        except LookupError as error:
            raise CliError(_one_line(error.args[0] if error.args else error)) from None
        except BackendError as error:
            raise CliError(_one_line(error)) from None
        except Exception as error:  # a bug still gets one line (and its type), never a traceback
            raise CliError(f"{type(error).__name__}: {_one_line(error)}") from None

    return wrapper


def _emit_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, sort_keys=True, default=str))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--conn-id",
    default="ray_default",
    show_default=True,
    envvar="AIRFLOW_RAY_CONN_ID",
    help="The Airflow `ray` connection naming the backend (absent ray_default: the embedded local backend).",
)
@click.option(
    "--state-store-conn-id",
    default=None,
    envvar="AIRFLOW_RAY_STATE_STORE_CONN_ID",
    help="The state store's connection (default: [ray_platform] state_store_conn_id, else the embedded SQLite).",
)
@click.option("--log-storage-uri", default=None, help="Where finished jobs' logs go (default: [ray_platform]).")
@click.option("--team", default=None, envvar="AIRFLOW_RAY_TEAM", help="The team you act for (under a policy).")
@click.pass_context
def main(ctx: click.Context, conn_id: str, state_store_conn_id: str | None, log_storage_uri: str | None, team) -> None:
    """Run and inspect Ray jobs and clusters of airflow-ray-platform, with a DAG's job_configuration."""
    from airflow_ray_platform import settings

    store = state_store_conn_id or settings.state_store_conn_id()
    logs = log_storage_uri or settings.log_storage_uri()
    if settings.custom_secrets_backend() or settings.metrics_enabled():
        _load_airflow()  # connections come from Airflow's secrets backend, or metrics go through Airflow
    _quiet_logging()
    ctx.obj = _Platform(conn_id, store, logs)
    ctx.obj.team = team


pass_platform = click.make_pass_decorator(_Platform)


def _load_airflow() -> None:
    """Import Airflow (seconds) for a command that needs it, first thing: it sets up its logging then, which
    :func:`_quiet_logging` moves off stdout before anything is printed."""
    import airflow.configuration  # noqa: F401

    _quiet_logging()


def _quiet_logging() -> None:
    """Airflow, once imported, logs to stdout at INFO (migrations, settings): here stdout is the data (a
    log, JSON), so only warnings are logged, and to stderr."""
    if not logging.getLogger().handlers:
        logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    root = logging.getLogger()
    root.setLevel(logging.WARNING)
    for handler in root.handlers:
        if isinstance(handler, logging.StreamHandler) and handler.stream in (sys.stdout, sys.__stdout__):
            handler.setStream(sys.stderr)


# ----------------------------------------------------------------------------- submit
def _render(value: Any, context: dict[str, Any], where: str = "") -> Any:
    """Every string of the configuration rendered as a DAG renders its templated field (Jinja, with
    ``params`` and ``run_id``); an unknown name is bad input naming the field."""
    if isinstance(value, dict):
        return {key: _render(item, context, f"{where}.{key}" if where else str(key)) for key, item in value.items()}
    if isinstance(value, list):
        return [_render(item, context, f"{where}[{index}]") for index, item in enumerate(value)]
    if not isinstance(value, str) or ("{{" not in value and "{%" not in value):
        return value
    import jinja2
    from jinja2.sandbox import SandboxedEnvironment

    try:
        return SandboxedEnvironment(undefined=jinja2.StrictUndefined).from_string(value).render(context)
    except jinja2.UndefinedError as error:
        raise CliError(f"{where}: {error} (pass it with --param NAME=VALUE)", EXIT_BAD_INPUT) from None
    except jinja2.TemplateError as error:
        raise CliError(f"{where}: not a valid template: {error}", EXIT_BAD_INPUT) from None


def _read_configuration(path: Path, params: dict[str, str], run_id: str, working_dir: Path | None) -> Any:
    """The file's configuration, rendered, its relative ``working_dir`` resolved against the file's
    folder (``--working-dir`` wins), then validated: nothing is created before this passes."""
    from airflow_ray_platform.spec.models import JobConfigurationError, load_job_configuration, read_configuration_file

    rendered = _render(read_configuration_file(path), {"params": params, "run_id": run_id})
    job = rendered.get("job") if isinstance(rendered, dict) else None
    if isinstance(job, dict):
        env = job.setdefault("runtime_env", {}) or {}
        job["runtime_env"] = env
        if working_dir is not None:
            env["working_dir"] = str(working_dir.resolve())
        elif isinstance(env.get("working_dir"), str) and "://" not in env["working_dir"]:
            env["working_dir"] = str((path.parent / env["working_dir"]).resolve())
    try:
        return load_job_configuration(rendered)
    except JobConfigurationError as error:
        raise CliError(_one_line(error), EXIT_BAD_INPUT) from None


def _parse_params(values: tuple[str, ...]) -> dict[str, str]:
    params = {}
    for value in values:
        name, equals, text = value.partition("=")
        if not equals or not name.strip():
            raise CliError(f"--param {value!r}: expected NAME=VALUE", EXIT_BAD_INPUT)
        params[name.strip()] = text
    return params


class _ConsoleLog(logging.Handler):
    """The job run's log lines (reattach notices, the driver's output) on the console, above the spinner."""

    def __init__(self, console: Any, output: Callable[[str], None]) -> None:
        super().__init__()
        self.console = console
        self.output = output

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("[ray job "):
            for line in message.splitlines():
                self.output(line.split("] ", 1)[1] if "] " in line else line)
        else:
            self.console.print(message, markup=False)


def _driver_line(line: str) -> None:
    """One line of the driver's output to stdout as the driver wrote it (its colours kept, as ``logs``
    prints the persisted log)."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _run_logger(platform: _Platform, follow: bool) -> logging.Logger:
    log = logging.getLogger("airflow_ray_platform.cli.main.run")
    log.handlers = [_ConsoleLog(platform.console, _driver_line if follow else lambda line: None)]
    log.propagate = False
    log.setLevel(logging.INFO)
    return log


@main.command()
@click.argument("config_path", metavar="CONFIG.yaml", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--follow", "-f", is_flag=True, help="Print the job's driver log as it runs.")
@click.option("--param", "-p", "params", multiple=True, metavar="NAME=VALUE", help="A template's params.NAME.")
@click.option(
    "--run-id",
    default=None,
    help="This submission's run: the same run id reattaches to its job instead of submitting it again "
    "(default: a new run, cli__<UTC time>).",
)
@click.option("--cluster-name", default=None, help="Run on this existing cluster instead of the configuration's.")
@click.option("--working-dir", type=click.Path(file_okay=False, path_type=Path), help="The job's working_dir.")
@click.option("--poll-interval", default=1.0, show_default=True, type=click.FloatRange(min=0.1))
@click.option("--json", "as_json", is_flag=True, help="Print the job's final record as JSON.")
@pass_platform
@_handle_errors
def submit(
    platform: _Platform,
    config_path: Path,
    follow: bool,
    params: tuple[str, ...],
    run_id: str | None,
    cluster_name: str | None,
    working_dir: Path | None,
    poll_interval: float,
    as_json: bool,
) -> None:
    """Run CONFIG.yaml's job as a DAG task would; the exit code is the job's outcome."""
    from airflow_ray_platform.backends.base import ClusterState
    from airflow_ray_platform.runs.cluster import release_leases, resolve_cluster, wait_for_cluster
    from airflow_ray_platform.runs.job_run import RayJobRun
    from airflow_ray_platform.spec.naming import TaskIdentity
    from airflow_ray_platform.tenancy.policy import configured_policy

    run_id = run_id or f"cli__{datetime.now(UTC).strftime('%Y-%m-%dT%H:%M:%S.%f')}"
    config = _read_configuration(config_path, _parse_params(params), run_id, working_dir)
    config.required_job()
    identity = TaskIdentity(CLI_DAG_ID, config.name, run_id)
    actor = platform.actor(identity, config.team)
    policy = configured_policy()
    if policy is not None:
        policy.check_configuration(actor.team, config)
    backend = platform.backend(actor)
    console, recorder = platform.console, platform.recorder
    cluster = resolve_cluster(
        backend, config, identity, cluster_name=cluster_name, cluster_name_field="--cluster-name", recorder=recorder
    )
    name, info = cluster.info.name, cluster.info
    run = RayJobRun(
        backend,
        name,
        ephemeral_cluster=cluster.ephemeral,
        recorder=recorder,
        config=config,
        log=_run_logger(platform, follow),
    )
    succeeded = False
    try:
        if info.state != ClusterState.READY:
            with console.status(f"Starting Ray cluster {name!r} on {backend.name} …"):
                started = time.monotonic()
                timeout = config.lifecycle.startup_timeout.total_seconds()
                info = wait_for_cluster(backend, name, timeout, min(poll_interval, 1.0))
            console.print(f"Ray cluster {name!r} ready in {time.monotonic() - started:.1f} s")
        job = run.submit_or_reattach(identity, 1)
        console.print(f"Ray job [bold]{job.submission_id}[/bold] on cluster {name!r} (run {run_id})")
        run.start_clock()
        with console.status(f"Ray job {job.submission_id} {str(job.state).lower()} …"):
            event = run.wait(job, poll_interval=poll_interval, stream_logs=follow)
            assert event is not None
            final = run.conclude(event, stream_logs=follow)
        succeeded = event.succeeded
    finally:
        run.end_cluster(succeeded=succeeded)
        if not cluster.ephemeral:  # this command's run is over: its lease on the shared cluster goes with it
            release_leases(backend, name, [identity.key], recorder)
    record = _job_view(final, name, backend.name) if final is not None else {"submission_id": job.submission_id}
    if as_json:
        _emit_json(record)
    if event.succeeded:
        console.print(f"[green]SUCCEEDED[/green] {job.submission_id}")
        return
    first = event.failure.splitlines()[0].rstrip(": ")  # Ray's message goes on with the log's tail
    raise CliError(f"{first} (its log: airflow-ray logs {job.submission_id})")


@main.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("config_path", metavar="CONFIG.yaml", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("command", nargs=-1, type=click.UNPROCESSED, metavar="[-- COMMAND ...]")
@click.option("--param", "-p", "params", multiple=True, metavar="NAME=VALUE", help="A template's params.NAME.")
@click.option(
    "--hold-for",
    default=8.0,
    show_default=True,
    type=click.FloatRange(min=0.01),
    help="Hours the lease holds if this command dies without releasing it.",
)
@pass_platform
@_handle_errors
def session(platform: _Platform, config_path: Path, command: tuple[str, ...], params: tuple[str, ...], hold_for: float):
    """Lease CONFIG.yaml's cluster and run COMMAND (default: your shell) with Ray pointed at it.

    COMMAND gets RAY_ADDRESS and the cluster's token in its environment (never printed), so `ray.init()`
    connects, e.g. `airflow-ray session job.yaml -- jupyter lab`. The lease ends with COMMAND.
    """
    import os
    import subprocess

    from airflow_ray_platform.interactive import ray_cluster

    config = _read_configuration(config_path, _parse_params(params), "session", None)
    with ray_cluster(
        config,
        ray_conn_id=platform.conn_id,
        team=platform.team,
        hold_for=timedelta(hours=hold_for),
        state_store_conn_id=platform.state_store_conn_id,
    ) as cluster:
        platform.console.print(
            f"Ray cluster [bold]{cluster.cluster_name}[/bold] on {cluster.backend}, leased until "
            f"{cluster.lease_expires_at:%Y-%m-%d %H:%M} UTC at the latest: RAY_ADDRESS={cluster.address}"
            + (f", dashboard {cluster.dashboard_url}" if cluster.dashboard_url else "")
        )
        argv = list(command[1:] if command[:1] == ("--",) else command) or [os.environ.get("SHELL") or "/bin/sh"]
        try:
            code = subprocess.call(argv, env={**os.environ, **cluster.environment})
        except OSError as error:
            raise CliError(f"cannot run {argv[0]!r}: {error}", EXIT_BAD_INPUT) from None
    sys.exit(code)


def _job_view(info: Any, cluster_name: str, backend: str) -> dict[str, Any]:
    return {
        "submission_id": info.submission_id,
        "cluster_name": cluster_name,
        "backend": backend,
        "state": str(info.state),
        "message": info.message,
        "start_time": info.start_time,
        "end_time": info.end_time,
        "metadata": dict(info.metadata),
    }


# ----------------------------------------------------------------------------- jobs
def _find(platform: _Platform, submission_id: str, cluster: str | None) -> tuple[Any, Any, dict | None]:
    """(backend, the job as its cluster reports it now, its newest record) of a job on ``--cluster``, else
    on the cluster its record names; the live job is None once its cluster (or the job on it) is gone."""
    from airflow_ray_platform.backends.base import ClusterNotFoundError

    row = platform.store.latest_job(submission_id)
    if cluster is None and row is None:
        raise LookupError(f"no Ray job {submission_id!r} is recorded; name its cluster with --cluster")
    cluster = cluster or row["cluster_name"]
    backend = platform.backend(platform.actor())
    try:
        live = backend.describe_job(cluster, submission_id) if backend.describe_cluster(cluster) else None
    except ClusterNotFoundError:
        live = None
    return backend, live, row


@main.command()
@click.argument("submission_id")
@click.option("--cluster", default=None, help="The job's cluster (default: from its record).")
@click.option("--json", "as_json", is_flag=True)
@pass_platform
@_handle_errors
def status(platform: _Platform, submission_id: str, cluster: str | None, as_json: bool) -> None:
    """A job's state: live from its cluster, else as last recorded (its cluster gone)."""
    backend, live, row = _find(platform, submission_id, cluster)
    if live is not None:
        view = {**_job_view(live, live.cluster_name, backend.name), "source": "live"}
    elif row is not None:
        keys = ("submission_id", "cluster_name", "state", "message", "team", "owner", "dag_id", "run_id")
        view = {
            **{key: row.get(key) for key in keys},
            "backend": row.get("cluster_backend"),
            "submitted_at": row.get("submitted_at"),
            "started_at": row.get("started_at"),
            "end_time": row.get("ended_at"),
            "log_uri": row.get("log_uri"),
            "cluster_deleted_at": row.get("cluster_deleted_at"),
            "source": "record",
        }
    else:
        raise LookupError(f"no Ray job {submission_id!r} on cluster {cluster!r}")
    if as_json:
        _emit_json(view)
        return
    from rich.table import Table

    table = Table(show_header=False, box=None)
    for key, value in view.items():
        if value not in (None, {}, ""):
            table.add_row(key, str(value))
    platform.console.print(table)


def _persisted(platform: _Platform, submission_id: str) -> Iterator[bytes]:
    _load_airflow()  # the hook reads it, authorized as a task's read would be
    from airflow_ray_platform.hooks.ray import RayHook

    hook = RayHook(platform.conn_id, actor=platform.actor(), recorder=platform.recorder)
    return hook.read_persisted_job_log_chunks(submission_id, platform.state_store_conn_id, platform.log_storage_uri)


@main.command()
@click.argument("submission_id")
@click.option("--cluster", default=None, help="The job's cluster (default: from its record).")
@click.option("--follow", "-f", is_flag=True, help="Keep printing while the job runs.")
@pass_platform
@_handle_errors
def logs(platform: _Platform, submission_id: str, cluster: str | None, follow: bool) -> None:
    """A job's driver log: live while its cluster lives, else the copy persisted when it ended."""
    from airflow_ray_platform.runs.job_run import RayJobRun

    backend, live, _ = _find(platform, submission_id, cluster)
    if live is None:
        for chunk in _persisted(platform, submission_id):
            sys.stdout.buffer.write(chunk)
        sys.stdout.flush()
        return
    run = RayJobRun(backend, live.cluster_name, submission_id)
    while True:
        info = run.describe()
        terminal = info is None or info.state.is_terminal or not follow
        sys.stdout.write(run.new_output(final=terminal))
        sys.stdout.flush()
        if terminal:
            return
        time.sleep(1.0)


@main.command()
@click.argument("submission_id")
@click.option("--cluster", default=None, help="The job's cluster (default: from its record).")
@pass_platform
@_handle_errors
def stop(platform: _Platform, submission_id: str, cluster: str | None) -> None:
    """Stop a running job, recording it STOPPED."""
    from airflow_ray_platform.runs.job_run import RayJobRun

    backend, live, _ = _find(platform, submission_id, cluster)
    if live is None or live.state.is_terminal:
        state = "gone" if live is None else str(live.state)
        raise CliError(f"Ray job {submission_id!r} is not running ({state}): nothing to stop")
    RayJobRun(backend, live.cluster_name, submission_id, recorder=platform.recorder).stop_and_record(
        f"stopped: by {_os_user() or 'the CLI'}"
    )
    platform.console.print(f"Stopped Ray job {submission_id}")


# ----------------------------------------------------------------------------- clusters
@main.group()
def clusters() -> None:
    """List or delete clusters."""


@clusters.command("list")
@click.option("--json", "as_json", is_flag=True)
@pass_platform
@_handle_errors
def clusters_list(platform: _Platform, as_json: bool) -> None:
    """The backend's clusters, with their team, owner, state and age."""
    infos = platform.backend(platform.actor()).list_clusters()
    now = datetime.now(UTC)
    rows = [
        {
            "name": info.name,
            "backend": info.backend,
            "state": str(info.state),
            "team": info.team,
            "owner": info.owner,
            "created_at": info.created_at,
            "age_s": round((now - info.created_at).total_seconds()) if info.created_at else None,
            "resources": dict(info.resources),
            "leases": len(info.leases),
            "sandboxed": info.sandboxed,
            "dashboard_url": info.dashboard_url,
        }
        for info in infos
    ]
    if as_json:
        _emit_json(rows)
        return
    from rich.table import Table

    table = Table("name", "backend", "state", "team", "owner", "age", "CPU", "leases", "sandboxed")
    for row in rows:
        age = timedelta(seconds=row["age_s"]) if row["age_s"] is not None else "-"
        named = (str(row[key] or "-") for key in ("name", "backend", "state", "team", "owner"))
        sandboxed = {True: "yes", False: "NO"}.get(row["sandboxed"], "-")
        table.add_row(*named, str(age), str(row["resources"].get("CPU", "-")), str(row["leases"]), sandboxed)
    platform.console.print(table)


@clusters.command("delete")
@click.argument("name")
@click.option("--force", is_flag=True, help="Delete even while jobs run on it (they are stopped with it).")
@pass_platform
@_handle_errors
def clusters_delete(platform: _Platform, name: str, force: bool) -> None:
    """Delete a managed cluster; refused while jobs run on it, unless --force."""
    from airflow_ray_platform.records.lifecycle import DeleteCause
    from airflow_ray_platform.runs.job_run import RayJobRun
    from airflow_ray_platform.spec.models import validate_cluster_name

    validate_cluster_name(name, "NAME")
    backend = platform.backend(platform.actor())
    if backend.describe_cluster(name) is None:
        raise LookupError(f"no Ray cluster {name!r} on backend {backend.name!r}")
    running = [job.submission_id for job in backend.list_jobs(name) if not job.state.is_terminal]
    if running and not force:
        raise CliError(f"Ray cluster {name!r} has running jobs ({', '.join(running)}); --force deletes it anyway")
    RayJobRun(backend, name, recorder=platform.recorder).delete_cluster(
        f"deleted by {_os_user() or 'the CLI'}", DeleteCause.BY_USER
    )
    platform.console.print(f"Deleted Ray cluster {name}")


# ----------------------------------------------------------------------------- gc, usage
@main.command()
@click.option("--dry-run", is_flag=True, help="Decide and record, delete and stop nothing.")
@click.option("--json", "as_json", is_flag=True)
@pass_platform
@_handle_errors
def gc(platform: _Platform, dry_run: bool, as_json: bool) -> None:
    """Sweep as the cleanup DAG does: stop jobs whose task ended without them, delete idle clusters.

    The same sweep as the DAG's; Airflow's metadata database says which task instances ended and which
    DAG runs still hold their leases."""
    _load_airflow()  # the sweep reads Airflow's metadata database
    from airflow_ray_platform.maintenance.abandoned_jobs import task_state_from_metadata_db
    from airflow_ray_platform.maintenance.garbage_collection import report, sweep
    from airflow_ray_platform.maintenance.leases import DagRunLiveness
    from airflow_ray_platform.tenancy.policy import Actor, configured_policy

    done = sweep(
        platform.backend(Actor.cleanup_outside_airflow(configured_policy())),
        platform.recorder,
        task_state=task_state_from_metadata_db,
        lease_is_live=DagRunLiveness.from_metadata_db(),
        dry_run=dry_run,
        sweep_id=f"cli/{datetime.now(UTC).isoformat()}",
    )
    if as_json:
        _emit_json(
            {
                "stopped_jobs": [
                    {"submission_id": job.submission_id, "cluster": job.cluster_name, "task_state": state}
                    for job, state in done.stopped_jobs
                ],
                "clusters": [
                    {"cluster": o.decision.cluster.name, "action": o.action, "reason": o.decision.reason}
                    for o in done.outcomes
                ],
            }
        )
        return
    click.echo(report(done))


@main.command()
@click.option("--json", "as_json", is_flag=True, help="The checks as JSON on stdout.")
@pass_platform
@_handle_errors
def doctor(platform: _Platform, as_json: bool) -> None:
    """Check the platform piece by piece: the connection and its backend, authentication, the state store,
    object storage, the sandbox and the policy; each with a verdict and its fix. Exits 1 if one fails.

    Nothing is changed but one probe object, written to log storage, read back and deleted."""
    from airflow_ray_platform.cli.doctor import Verdict, run_checks

    checks = run_checks(platform.conn_id, platform.state_store_conn_id, platform.log_storage_uri, platform.team)
    if as_json:
        _emit_json([check.to_dict() for check in checks])
    else:
        from rich.markup import escape
        from rich.table import Table

        colour = {Verdict.OK: "green", Verdict.WARN: "yellow", Verdict.FAIL: "red", Verdict.SKIP: "dim"}
        table = Table("check", "verdict", "what was found", "fix", show_lines=True)
        for check in checks:
            verdict = f"[{colour[check.verdict]}]{check.verdict}[/]"
            table.add_row(check.name, verdict, escape(check.detail), escape(check.fix))
        platform.console.print(table)
    failed = [check.name for check in checks if check.verdict == Verdict.FAIL]
    if failed:
        raise CliError(f"failed: {', '.join(failed)}")


def _day(value: str, option: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise CliError(
            f"{option} {value!r}: expected a date or time (ISO 8601, e.g. 2026-12-01)", EXIT_BAD_INPUT
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@main.command()
@click.option("--since", required=True, help="Start of the interval (ISO date or time, UTC unless it says).")
@click.option("--until", default=None, help="End of the interval (default: now).")
@click.option("--json", "as_json", is_flag=True)
@pass_platform
@_handle_errors
def usage(platform: _Platform, since: str, until: str | None, as_json: bool) -> None:
    """Per team: jobs, success rate, CPU-hours, GPU-hours, cost and cluster wait, from the state store."""
    from airflow_ray_platform.records.queries import usage_by_team_day

    start = _day(since, "--since")
    end = _day(until, "--until") if until else datetime.now(UTC)
    if end <= start:
        raise CliError("--until: must be after --since", EXIT_BAD_INPUT)
    rows = usage_by_team_day(platform.store, start, end)["teams"]
    if as_json:
        _emit_json({"since": start, "until": end, "teams": rows})
        return
    from rich.table import Table

    table = Table("team", "jobs", "success", "CPU-h", "GPU-h", "cost", "wait p50 s", "wait p95 s")

    def number(value: Any, digits: int = 2) -> str:
        return "-" if value is None else f"{value:.{digits}f}"

    for row in rows:
        success = "-" if row["success_rate"] is None else f"{100 * row['success_rate']:.0f}%"
        table.add_row(
            row["team"] or "-",
            str(row["jobs"]),
            success,
            number(row["cpu_hours"], 3),
            number(row["gpu_hours"], 3),
            number(row["cost_estimate"], 4),
            number(row["cluster_wait_p50_s"], 1),
            number(row["cluster_wait_p95_s"], 1),
        )
    platform.console.print(table)
