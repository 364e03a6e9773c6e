"""The Ray view: clusters, jobs, a job's persisted log and events, usage charts, from the state store.

A FastAPI app that Airflow's API server mounts (``plugin.RayPlatformPlugin``): pages for people and the
same data as JSON under ``api/`` for scripts. Everything is read from the records, so it shows clusters
and jobs long after the clusters are gone; nothing here writes.

* **Auth**: Airflow does not authenticate a plugin's app, so every route, the vendored scripts
  included, depends on Airflow's own ``get_user`` (the UI's session cookie or a bearer token): an
  unauthenticated request gets 401, a refused one 403. A user sees the jobs (their logs, their usage) of
  the DAGs Airflow's auth manager lets them read, and, under a platform policy with Airflow's multi-team
  mode on, only the teams it authorizes them for.
* **Large logs**: a job's log is served a page at a time (a ranged read of the stored object), never
  whole, to the browser or into this process.
* **No network**: the page loads only what this package serves (Vega, Vega-Lite and vega-embed are
  vendored under ``static/vendor``); charts are Vega-Lite specs built here from the aggregates.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Collection
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, urlencode

# Airflow's own authentication (the UI's session cookie, or a bearer token): 401 without, on every route.
from airflow.api_fastapi.core_api.security import GetUserDep as UserDep
from fastapi import Depends, FastAPI, HTTPException, Query
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response

from airflow_ray_platform.spec.naming import CLI_DAG_ID, dashboard_job_url

HERE = Path(__file__).parent
STATIC = HERE / "static"
#: What ``static/`` serves (by name): nothing else under it is reachable.
STATIC_FILES = {
    "ray.css": "text/css",
    "charts.js": "text/javascript",
    "running.js": "text/javascript",
    "vendor/vega.min.js": "text/javascript",
    "vendor/vega-lite.min.js": "text/javascript",
    "vendor/vega-embed.min.js": "text/javascript",
}
#: Bytes of log one page shows.
LOG_PAGE_BYTES = 64 * 1024
#: How often the running-now list refreshes itself, in milliseconds.
RUNNING_REFRESH_MS = 5000


def scope_of(user: Any) -> Any:
    """What ``user`` may see (a :class:`~airflow_ray_platform.records.queries.Scope`).

    DAGs: those the auth manager lets them read (DAG-level permissions), every DAG when it lets them read
    all. Teams: every team without a platform policy or without Airflow's multi-team mode (Airflow then
    says nothing about teams); else the teams the auth manager authorizes."""
    from airflow.api_fastapi.app import get_auth_manager

    from airflow_ray_platform import settings
    from airflow_ray_platform.records.queries import Scope
    from airflow_ray_platform.tenancy.policy import configured_policy

    auth_manager = get_auth_manager()
    teams: Collection[str] | None = None
    if configured_policy() is not None and settings.multi_team():
        teams = set(auth_manager.get_authorized_teams(user=user, method="GET"))
    dag_ids: Collection[str] | None = None
    if not auth_manager.is_authorized_dag(method="GET", user=user):  # no details: every DAG
        dag_ids = set(auth_manager.get_authorized_dag_ids(user=user, method="GET"))
    return Scope(teams, dag_ids)


@cache
def _store() -> Any:
    from airflow_ray_platform import settings
    from airflow_ray_platform.records.state_store import StateStore

    store = StateStore.from_airflow_connection(settings.state_store_conn_id())
    store.migrate()
    return store


def _log_storage() -> Any:
    from airflow_ray_platform import settings
    from airflow_ray_platform.records.lifecycle import log_storage

    return log_storage(settings.log_storage_uri())


def _json(value: Any) -> JSONResponse:
    return JSONResponse(json.loads(json.dumps(value, default=_plain)))


def _plain(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else str(value)


def _day(value: str | None, name: str) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise HTTPException(422, f"{name}: expected an ISO 8601 date or time, got {value!r}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@dataclasses.dataclass
class JobQuery:
    """A jobs list's filters, as query parameters (the page and the JSON endpoint take the same)."""

    team: str | None = None
    owner: str | None = None
    dag_id: str | None = None
    state: str | None = None
    since: str | None = None
    until: str | None = None

    def where(self, user: Any) -> Any:
        from airflow_ray_platform.records.queries import JobFilter

        days = _day(self.since, "since"), _day(self.until, "until")
        return JobFilter(scope_of(user), self.team, self.owner, self.dag_id, self.state, *days)


def _task_link(job: dict[str, Any]) -> str | None:
    """The job's task instance in Airflow's UI (None for a job the CLI submitted)."""
    if not job.get("dag_id") or job["dag_id"] == CLI_DAG_ID:
        return None
    path = f"dags/{quote(job['dag_id'])}/runs/{quote(job['run_id'] or '')}/tasks/{quote(job['task_id'] or '')}"
    return f"../{path}" + (f"/mapped/{job['map_index']}" if (job.get("map_index") or -1) >= 0 else "")


def _dashboard_link(job: dict[str, Any]) -> str | None:
    """The job's page in the Ray dashboard, while its cluster lives."""
    if job.get("cluster_deleted_at") or not job.get("dashboard_url"):
        return None
    return dashboard_job_url(job["dashboard_url"], job["submission_id"])


def _aware(value: datetime | None) -> datetime | None:
    return value if value is None or value.tzinfo else value.replace(tzinfo=UTC)


def running_now(jobs: list[dict[str, Any]], now: datetime) -> list[dict[str, Any]]:
    """The running-now list's rows, formatted once for the page and for its refresh alike: how long each
    job has been at it, and its queue wait (still growing while it has not been seen running)."""
    from airflow_ray_platform.plugins.ui import humane

    rows = []
    for job in jobs:
        submitted, running = _aware(job.get("submitted_at")), _aware(job.get("running_at"))
        waited = (running or now) - submitted if submitted else None
        rows.append(
            {
                "submission_id": job["submission_id"],
                "href": f"jobs/{quote(job['submission_id'], safe='')}",
                "state": job["state"],
                "team": job.get("team") or "-",
                "task": f"{job.get('dag_id') or '-'} / {job.get('task_id') or '-'}",
                "cluster": job.get("cluster_name") or "-",
                "elapsed": humane.duration((now - submitted).total_seconds() if submitted else None),
                "queue_wait": humane.duration(waited.total_seconds() if waited else None)
                + ("" if running else " (not yet seen running)"),
            }
        )
    return rows


def create_app() -> FastAPI:
    """The app Airflow mounts under ``/ray``."""
    # No OpenAPI schema or docs pages: FastAPI serves them without authentication, and Swagger UI loads
    # from a CDN (found by review). The JSON routes are documented in docs/cli-and-ray-view.md.
    app = FastAPI(
        title="airflow-ray-platform",
        description="Ray clusters, jobs and usage, from the records",
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )

    @app.get("/", include_in_schema=False)
    async def index(user: UserDep) -> Response:
        return RedirectResponse("jobs")

    @app.get("/static/{name:path}", include_in_schema=False)
    async def static(name: str, user: UserDep) -> Response:
        if name not in STATIC_FILES:
            raise HTTPException(404, "no such file")
        return FileResponse(STATIC / name, media_type=STATIC_FILES[name])

    # ------------------------------------------------------------------ JSON
    @app.get("/api/jobs")
    async def api_jobs(
        user: UserDep,
        chosen: Annotated[JobQuery, Depends()],
        page: Annotated[int, Query(ge=1)] = 1,
        page_size: Annotated[int, Query(ge=1, le=500)] = 50,
    ) -> JSONResponse:
        """Jobs, newest first, filtered and paged on the server."""
        from airflow_ray_platform.records.queries import list_jobs

        rows, total = await asyncio.to_thread(list_jobs, _store(), chosen.where(user), page, page_size)
        for row in rows:
            row["task_link"], row["dashboard_link"] = _task_link(row), _dashboard_link(row)
        return _json({"total": total, "page": page, "page_size": page_size, "jobs": rows})

    @app.get("/api/jobs/{submission_id}")
    async def api_job(submission_id: str, user: UserDep) -> JSONResponse:
        """One job: its record, usage, links and events."""
        return _json(await _job_or_404(submission_id, user))

    @app.get("/api/jobs/{submission_id}/log")
    async def api_job_log(
        submission_id: str,
        user: UserDep,
        offset: Annotated[int, Query(ge=0)] = 0,
        length: Annotated[int, Query(ge=1, le=1024 * 1024)] = LOG_PAGE_BYTES,
    ) -> Response:
        """A page of the job's persisted driver log (bytes ``offset`` to ``offset + length``); the
        headers say the whole size and where the next page starts."""
        job = await _job_or_404(submission_id, user)
        text, size = await _log_page(job, offset, length)
        headers = {"X-Log-Size": str(size), "X-Next-Offset": str(min(size, offset + length))}
        return Response(text, media_type="text/plain; charset=utf-8", headers=headers)

    @app.get("/api/clusters")
    async def api_clusters(
        user: UserDep,
        page: Annotated[int, Query(ge=1)] = 1,
        page_size: Annotated[int, Query(ge=1, le=500)] = 50,
    ) -> JSONResponse:
        """Cluster incarnations, live and past, newest first, with their last GC decision."""
        from airflow_ray_platform.records.queries import list_clusters

        rows, total = await asyncio.to_thread(list_clusters, _store(), scope_of(user), page, page_size)
        return _json({"total": total, "page": page, "page_size": page_size, "clusters": [_cluster(r) for r in rows]})

    @app.get("/api/running")
    async def api_running(user: UserDep) -> JSONResponse:
        """The jobs whose records say they are pending or running, oldest first, formatted for people."""
        from airflow_ray_platform.records.queries import running_jobs

        rows = await asyncio.to_thread(running_jobs, _store(), scope_of(user))
        now = datetime.now(UTC)
        return _json({"now": now, "jobs": running_now(rows, now)})

    @app.get("/api/usage")
    async def api_usage(user: UserDep, since: str | None = None, until: str | None = None) -> JSONResponse:
        """Per team and day: jobs, success, CPU-/GPU-hours, cost; per team the cluster wait p50/p95."""
        return _json(await _usage(user, since, until))

    # ------------------------------------------------------------------ pages
    @app.get("/jobs", response_class=HTMLResponse, include_in_schema=False)
    async def jobs_page(
        user: UserDep, chosen: Annotated[JobQuery, Depends()], page: Annotated[int, Query(ge=1)] = 1
    ) -> HTMLResponse:
        from airflow_ray_platform.records.queries import list_jobs, running_jobs

        rows, total = await asyncio.to_thread(list_jobs, _store(), chosen.where(user), page, 50)
        running = await asyncio.to_thread(running_jobs, _store(), scope_of(user))
        filters = dataclasses.asdict(chosen)
        return _render(
            "jobs.html",
            running=running_now(running, datetime.now(UTC)),
            refresh_ms=RUNNING_REFRESH_MS,
            filtered=any(filters.values()),
            jobs=[{**row, "task_link": _task_link(row), "dashboard_link": _dashboard_link(row)} for row in rows],
            total=total,
            page=page,
            pages=max(1, -(-total // 50)),
            filters=filters,
            query=lambda **change: urlencode({k: v for k, v in {**filters, **change}.items() if v}),
        )

    @app.get("/jobs/{submission_id}", response_class=HTMLResponse, include_in_schema=False)
    async def job_page(submission_id: str, user: UserDep, log_offset: Annotated[int, Query(ge=0)] = 0) -> HTMLResponse:
        job = await _job_or_404(submission_id, user)
        text, size = await _log_page(job, log_offset, LOG_PAGE_BYTES) if job.get("log_uri") else ("", 0)
        return _render(
            "job.html",
            job=job,
            log_text=text,
            log_offset=log_offset,
            log_size=size,
            next_offset=log_offset + LOG_PAGE_BYTES if log_offset + LOG_PAGE_BYTES < size else None,
            previous_offset=max(0, log_offset - LOG_PAGE_BYTES) if log_offset else None,
        )

    @app.get("/clusters", response_class=HTMLResponse, include_in_schema=False)
    async def clusters_page(user: UserDep, page: Annotated[int, Query(ge=1)] = 1) -> HTMLResponse:
        from airflow_ray_platform.records.queries import list_clusters

        rows, total = await asyncio.to_thread(list_clusters, _store(), scope_of(user), page, 50)
        return _render(
            "clusters.html", clusters=[_cluster(row) for row in rows], total=total, page=page, pages=-(-total // 50)
        )

    @app.get("/usage", response_class=HTMLResponse, include_in_schema=False)
    async def usage_page(user: UserDep, since: str | None = None, until: str | None = None) -> HTMLResponse:
        usage = await _usage(user, since, until)
        return _render("usage.html", usage=usage, charts=usage_page_charts(usage))

    return app


async def _job_or_404(submission_id: str, user: Any) -> dict[str, Any]:
    from airflow_ray_platform.records.queries import job_detail

    job = await asyncio.to_thread(job_detail, _store(), submission_id, scope_of(user))
    if job is None:
        raise HTTPException(404, f"no recorded Ray job {submission_id!r}")
    job["task_link"], job["dashboard_link"] = _task_link(job), _dashboard_link(job)
    return job


async def _log_page(job: dict[str, Any], offset: int, length: int) -> tuple[str, int]:
    """(the log's bytes [offset, offset + length) as text, the log's size); a page may start or end in
    the middle of a character, shown replaced."""
    if not job.get("log_uri"):
        raise HTTPException(404, f"Ray job {job['submission_id']!r} has no persisted log (yet)")
    storage = _log_storage()

    def read() -> tuple[str, int]:
        size = storage.size(job["log_uri"])
        return b"".join(storage.read(job["log_uri"], offset, length)).decode(errors="replace"), size

    return await asyncio.to_thread(read)


async def _usage(user: Any, since: str | None, until: str | None) -> dict[str, Any]:
    from airflow_ray_platform.records.queries import usage_by_team_day

    end = _day(until, "until") or datetime.now(UTC)
    start = _day(since, "since") or end - timedelta(days=30)
    return await asyncio.to_thread(usage_by_team_day, _store(), start, end, scope_of(user))


def _cluster(row: dict[str, Any]) -> dict[str, Any]:
    """A cluster record with its lifetime and (while it lives) its idle time, in seconds."""
    now = datetime.now(UTC)
    requested, deleted, active = (_aware(row.get(k)) for k in ("requested_at", "deleted_at", "last_active_at"))
    return {
        **row,
        "lifetime_s": ((deleted or now) - requested).total_seconds() if requested else None,
        "idle_s": (now - active).total_seconds() if active and not deleted else None,
    }


def usage_page_charts(usage: dict[str, Any]) -> Any:
    """The usage page's chart specs as plain JSON values: the template writes them with ``tojson``, which
    escapes ``<``, ``>``, ``&`` and quotes, so no value (a team name from a cluster's labels) can end the
    ``<script>`` element that holds them (found by review: ``| safe`` let one)."""
    from airflow_ray_platform.plugins.ui.charts import usage_charts

    return json.loads(json.dumps(usage_charts(usage), default=_plain))


@cache
def _templates() -> Any:
    import jinja2

    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(HERE / "templates"), autoescape=jinja2.select_autoescape(["html"])
    )
    from airflow_ray_platform.plugins.ui import humane

    environment.filters["when"] = lambda value: "-" if value is None else str(value)[:19].replace("T", " ")
    environment.filters["duration"] = humane.duration
    environment.filters["size"] = humane.size
    environment.filters["resources"] = humane.resources
    environment.filters["money"] = humane.money
    environment.filters["reason"] = humane.reason
    environment.filters["number"] = lambda value, digits=2: "-" if value is None else f"{value:.{digits}f}"
    return environment


def _render(template: str, **values: Any) -> HTMLResponse:
    return HTMLResponse(_templates().get_template(template).render(**values))
