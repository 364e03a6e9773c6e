"""The Ray view on a real ``airflow api-server`` (SimpleAuthManager with a test user), over records that
real DAG runs on the local backend left: the demo's 200 zones, a 10-date backfill with one failure, a
chatty job, one still running, and what the session's other tests ran. Driven in headless Chromium
(Debian's, through Playwright), which also takes the screenshots in ``docs/``."""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from airflow_ray_platform.backends.local.processes import free_ports
from airflow_ray_platform.spec.naming import TaskIdentity

from ..helpers import dag_test_in_subprocess
from ..test_dags import ray_e2e_dags as dags
from ..test_dags.shipped_dags import example_zone_training
from ..waiting import wait_for

pytestmark = pytest.mark.usefixtures("shared_cluster", "airflow_db")

REPO = Path(__file__).parents[2]
#: A user who may read one DAG, and so the Ray jobs of that DAG alone.
READER = "reader-of-ray_job_blocking"
#: Where the screenshots go: the README's (docs/) when ARP_UPDATE_SCREENSHOTS=1, else the test's own folder.
DOCS = Path(__file__).parents[2] / "docs"
PASSWORD = secrets.token_urlsafe(12)
#: About 170 kB of driver log: three pages of the job page's 64 KiB.
# A chatty job that hands a value back at the end (``spec.results``'s line).
CHATTY = "python -c \"[print(i, 'x' * 50) for i in range(3000)]; print('airflow-ray-result:' + str(3000))\""
PLUGIN_ENDPOINTS = [
    "/ray/",
    "/ray/jobs",
    "/ray/clusters",
    "/ray/usage",
    "/ray/api/jobs",
    "/ray/api/clusters",
    "/ray/api/usage",
    "/ray/api/jobs/x",
    "/ray/api/jobs/x/log",
    "/ray/jobs/x",
    "/ray/static/vendor/vega.min.js",
    "/ray/static/ray.css",
]


#: The backfill's dates, and the one whose job fails (as a zone without data would).
BACKFILL = [datetime(2026, 11, day, tzinfo=UTC) for day in range(20, 30)]
FAILING_DATE = BACKFILL[6]
NO_DATA = "python -c 'import sys; sys.exit(\"zone 17: no demand data for 2026-11-26\")'"


@pytest.fixture(scope="module")
def realistic_records(local_backend, tmp_path_factory) -> dict:
    """What a platform's records look like after a week: the demo's 200-zone training, then a 10-date
    backfill of a Ray step, one date of which fails."""
    demo = example_zone_training.test(
        run_conf={"zones": 200, "cpus_per_zone": 0.5, "output_dir": str(tmp_path_factory.mktemp("zones"))}
    )
    assert demo.state == "success"
    runs = {}
    for when in BACKFILL:
        entrypoint = NO_DATA if when == FAILING_DATE else "python -c 'print(\"zone scores written\")'"
        run = dags.ray_job_blocking.test(logical_date=when, run_after=when, run_conf={"entrypoint": entrypoint})
        runs[when] = run.state
    assert [when for when, state in runs.items() if state != "success"] == [FAILING_DATE]
    failed = TaskIdentity("ray_job_blocking", "job", f"manual__{FAILING_DATE.isoformat()}").submission_id()
    return {"failed_submission_id": failed}


@pytest.fixture(scope="module")
def finished_job(local_backend, realistic_records) -> dict:
    """A job of a finished DAG run whose ephemeral cluster was deleted after it."""
    run = dags.ray_job_ephemeral.test(run_conf={"entrypoint": CHATTY})
    assert run.get_task_instance("job").state == "success"
    identity = TaskIdentity("ray_job_ephemeral", "job", run.run_id)
    assert local_backend.describe_cluster(identity.ephemeral_cluster_name("e2e-ephemeral")) is None
    return {"submission_id": identity.submission_id(), "run_id": run.run_id}


@pytest.fixture(scope="module")
def api_server(tmp_path_factory, finished_job):
    """``airflow api-server`` with the provider installed (its plugin loads from get_provider_info) and one
    user, on the session's metadata database and state store; stopped by pid."""
    root = tmp_path_factory.mktemp("api-server")
    passwords = root / "passwords.json"
    passwords.write_text(json.dumps({"tester": PASSWORD, READER: PASSWORD}))
    (port,) = free_ports(1)
    env = {
        **os.environ,
        # SimpleAuthManager, with DAG-level read permissions for users named reader-of-<dag id>
        "AIRFLOW__CORE__AUTH_MANAGER": "tests.plugins.dag_scoped_auth.DagScopedAuthManager",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"tester:admin,{READER}:viewer",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
    }
    log = (root / "api-server.log").open("w")
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "airflow"), "api-server", "--port", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=root,
    )
    base = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        assert process.poll() is None, (root / "api-server.log").read_text()[-3000:]
        try:
            return httpx.get(f"{base}/api/v2/monitor/health", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(healthy, timeout=180, interval=1)
    yield base
    process.terminate()
    process.wait(timeout=60)


def _token(base: str, username: str = "tester") -> str:
    response = httpx.post(f"{base}/auth/token", json={"username": username, "password": PASSWORD}, timeout=30)
    assert response.status_code in (200, 201), response.text
    return response.json()["access_token"]


@pytest.mark.parametrize("path", ["/ray/openapi.json", "/ray/docs", "/ray/redoc"])
def test_the_views_api_docs_are_off(api_server, path):
    """Found by review: FastAPI served the schema and Swagger UI (loaded from a CDN) without authentication."""
    headers = {"Authorization": f"Bearer {_token(api_server)}"}
    for sent in ({}, headers):
        response = httpx.get(f"{api_server}{path}", headers=sent, timeout=30, follow_redirects=False)
        assert response.status_code == 404, (path, response.status_code, response.text[:200])


@pytest.mark.parametrize("path", PLUGIN_ENDPOINTS)
def test_no_plugin_endpoint_answers_an_unauthenticated_request(api_server, path):
    response = httpx.get(f"{api_server}{path}", timeout=30, follow_redirects=False)
    assert response.status_code in (401, 403), (path, response.status_code, response.text[:200])
    forged = httpx.get(f"{api_server}{path}", headers={"Authorization": "Bearer forged"}, timeout=30)
    assert forged.status_code in (401, 403), (path, forged.status_code)


def test_the_json_endpoints_serve_the_records_paged_and_the_log_a_page_at_a_time(api_server, finished_job):
    client = httpx.Client(base_url=f"{api_server}/ray/api", headers={"Authorization": f"Bearer {_token(api_server)}"})
    listed = client.get("/jobs", params={"dag_id": "ray_job_ephemeral", "page_size": 1}).json()
    assert listed["total"] >= 1 and len(listed["jobs"]) == 1
    job = client.get(f"/jobs/{finished_job['submission_id']}").json()
    assert job["state"] == "SUCCEEDED" and job["cluster_deleted_at"] and job["dashboard_link"] is None
    assert job["task_link"].endswith(f"dags/ray_job_ephemeral/runs/{quote(finished_job['run_id'])}/tasks/job")
    assert {"requested", "job_succeeded", "deleted"} <= {event["kind"] for event in job["events"]}
    first = client.get(f"/jobs/{finished_job['submission_id']}/log", params={"length": 1000})
    assert first.status_code == 200, first.text
    size = int(first.headers["X-Log-Size"])
    assert len(first.content) == 1000 and size > 150_000 and first.headers["X-Next-Offset"] == "1000"
    last = client.get(f"/jobs/{finished_job['submission_id']}/log", params={"offset": size - 100, "length": 1000})
    assert last.text.rstrip().endswith("2999 " + "x" * 50 + "\nairflow-ray-result:3000")
    assert job["result"] == {"value": 3000}
    usage = client.get("/usage", params={"since": "2026-01-01"}).json()
    platform = next(team for team in usage["teams"] if team["team"] == "platform")
    assert platform["jobs"] >= 1 and platform["cpu_hours"] > 0
    assert client.get("/jobs/no-such-job").status_code == 404
    assert client.get("/jobs", params={"since": "yesterday"}).status_code == 422


def test_a_user_sees_the_jobs_logs_and_usage_of_the_dags_airflow_lets_them_read(api_server, finished_job):
    """Found by review: every logged-in user saw every job, log and cost; Airflow's DAG-level permissions
    were never asked. A reader of one DAG sees that DAG's jobs alone, in lists, pages, logs and usage."""
    readable = dags.ray_job_blocking.test(run_conf={"entrypoint": "python -c 'print(7)'"})
    own = TaskIdentity("ray_job_blocking", "job", readable.run_id).submission_id()
    reader = httpx.Client(
        base_url=f"{api_server}/ray", headers={"Authorization": f"Bearer {_token(api_server, READER)}"}
    )
    listed = reader.get("/api/jobs", params={"page_size": 200}).json()
    assert listed["total"] >= 1 and {job["dag_id"] for job in listed["jobs"]} == {"ray_job_blocking"}
    assert reader.get(f"/api/jobs/{own}").status_code == 200
    hidden = finished_job["submission_id"]  # ray_job_ephemeral's
    for path in (f"/api/jobs/{hidden}", f"/api/jobs/{hidden}/log", f"/jobs/{hidden}"):
        assert reader.get(path).status_code == 404, path
    assert reader.get("/api/jobs", params={"dag_id": "ray_job_ephemeral"}).json()["total"] == 0
    seen = reader.get("/api/usage", params={"since": "2026-01-01"}).json()
    everything = httpx.get(
        f"{api_server}/ray/api/usage",
        params={"since": "2026-01-01"},
        timeout=30,
        headers={"Authorization": f"Bearer {_token(api_server)}"},
    ).json()
    assert sum(team["jobs"] for team in seen["teams"]) < sum(team["jobs"] for team in everything["teams"])


def test_a_ray_task_links_to_its_jobs_page_in_the_view(api_server, realistic_records):
    """The extra link that outlives the cluster: from the task instance (Airflow's REST API, as its UI
    asks) to the job's page in the view, which answers."""
    token = _token(api_server)
    run_id = quote(f"manual__{FAILING_DATE.isoformat()}", safe="")
    links = httpx.get(
        f"{api_server}/api/v2/dags/ray_job_blocking/dagRuns/{run_id}/taskInstances/job/links",
        headers={"Authorization": f"Bearer {token}"},
        timeout=30,
    ).json()["extra_links"]
    submission_id = realistic_records["failed_submission_id"]
    assert links["Ray job (records)"] == f"/ray/jobs/{quote(submission_id, safe='')}"
    page = httpx.get(f"{api_server}{links['Ray job (records)']}", headers={"Authorization": f"Bearer {token}"})
    assert page.status_code == 200 and "zone 17: no demand data for 2026-11-26" in page.text


@pytest.mark.skipif(shutil.which("chromium") is None and not os.environ.get("CI"), reason="no chromium here")
def test_the_four_pages_in_headless_chromium(api_server, finished_job, realistic_records, tmp_path):
    from playwright.sync_api import sync_playwright

    shots = DOCS if os.environ.get("ARP_UPDATE_SCREENSHOTS") == "1" else tmp_path
    when = datetime(2026, 12, 1, tzinfo=UTC)
    running_id = TaskIdentity("ray_job_blocking", "job", f"manual__{when.isoformat()}").submission_id()
    worker_log = tmp_path / "running.log"
    worker = dag_test_in_subprocess("ray_job_blocking", when, "python -c 'import time; time.sleep(45)'", worker_log)
    headers = {"Authorization": f"Bearer {_token(api_server)}"}

    def listed_running() -> bool:
        assert worker.poll() is None, worker_log.read_text()[-3000:]
        running = httpx.get(f"{api_server}/ray/api/running", headers=headers, timeout=30).json()["jobs"]
        return any(job["submission_id"] == running_id and job["state"] == "RUNNING" for job in running)

    wait_for(listed_running, timeout=120, interval=1)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=shutil.which("chromium"),
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--disable-quic",
            ],
        )
        page = browser.new_page(viewport={"width": 1680, "height": 1000})
        requested: list[str] = []
        page.on("request", lambda request: requested.append(request.url))
        page.goto(f"{api_server}/auth/login")
        page.get_by_label("Username").fill("tester")
        page.get_by_label("Password").fill(PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(lambda url: "/auth/login" not in url, timeout=60_000)
        # Airflow's navigation links to the view.
        page.goto(f"{api_server}/")
        page.get_by_role("link", name="Ray").first.wait_for(timeout=60_000)

        page.goto(f"{api_server}/ray/jobs")
        live = page.locator("#running tbody tr", has_text=running_id)
        live.wait_for()
        assert "RUNNING" in live.inner_text() and " s" in live.inner_text()  # its elapsed time, in words
        failed = page.locator("#jobs tbody tr", has_text=realistic_records["failed_submission_id"])
        assert "zone 17: no demand data for 2026-11-26" in failed.locator("td.reason").inner_text()
        page.screenshot(path=str(shots / "ray-view-jobs.png"))
        # The list refreshes itself from api/running, the page not reloaded.
        page.wait_for_selector("#running tbody[data-refreshed-at]", timeout=30_000)

        page.goto(f"{api_server}/ray/jobs?dag_id=ray_job_ephemeral")
        row = page.locator("#jobs tbody tr", has_text=finished_job["submission_id"])
        row.wait_for()
        assert "deleted" in row.inner_text() and "SUCCEEDED" in row.inner_text()
        row.get_by_role("link", name=finished_job["submission_id"]).click()
        page.wait_for_selector("pre#log")
        assert (
            page.locator("pre#log").inner_text().startswith("2026") or "0 xxx" in page.locator("pre#log").inner_text()
        )
        assert page.get_by_role("link", name="next page").count() == 1  # paged, not loaded whole
        assert page.locator("pre#result").inner_text() == "3000"  # what it handed back, its cluster gone
        page.screenshot(path=str(shots / "ray-view-job.png"))

        page.goto(f"{api_server}/ray/clusters")
        row = page.locator("#clusters tbody tr", has_text="e2e-ephemeral").first
        row.wait_for()
        columns = page.locator("#clusters thead th").all_inner_texts()
        sandboxed = row.locator("td").nth(columns.index("sandboxed")).inner_text()
        assert sandboxed == "yes"  # its processes ran in the local backend's sandbox, as recorded
        assert row.locator("td").nth(columns.index("resources")).inner_text().startswith("1 core · 1.0 GiB memory")
        shared = page.locator("#clusters tbody tr", has_text="shared").first
        # the backfill's failed date among its jobs (and whatever else the session ran there)
        assert re.fullmatch(r"\d+ \([1-9]\d* failed\)", shared.locator("td").nth(columns.index("jobs")).inner_text())
        page.screenshot(path=str(shots / "ray-view-clusters.png"))

        page.goto(f"{api_server}/ray/usage?since=2026-01-01")
        for name in ("cpu_hours", "cost", "success_rate", "cluster_wait"):
            page.wait_for_selector(f"#chart-{name}[data-drawn=true] svg", timeout=30_000)
        assert page.locator("#chart-cpu_hours svg .mark-rect path").count() >= 1  # bars drawn, not only a 200
        page.screenshot(path=str(shots / "ray-view-usage.png"), full_page=True)
        browser.close()
    assert worker.wait(timeout=120) == 0, worker_log.read_text()[-3000:]
    outside = [url for url in requested if not url.startswith((api_server, "data:", f"blob:{api_server}"))]
    assert outside == [], outside  # no CDN: everything the pages load is served by the API server


def test_the_usage_page_escapes_what_it_charts():
    """Found by review: the charts' data was written into a ``<script>`` element with ``| safe``, so a team
    name (a cluster label a job could write) ended it and ran as the viewer. Rendered as the route does."""
    from datetime import datetime

    from airflow_ray_platform.plugins.ui.app import _render, usage_page_charts

    hostile = "</script><script>alert(document.cookie)</script>"
    row = {"team": hostile, "jobs": 1, "success_rate": 1.0, "cpu_hours": 1.0, "gpu_hours": 0.0, "cost_estimate": 1.0}
    row |= {"cluster_wait_p50_s": 1.0, "cluster_wait_p95_s": 2.0}
    usage = {
        "since": datetime(2026, 1, 1),
        "until": datetime(2026, 1, 2),
        "teams": [row],
        "days": [row | {"day": "2026-01-01"}],
    }
    html = _render("usage.html", usage=usage, charts=usage_page_charts(usage)).body.decode()
    assert "<script>alert" not in html
    specs = html.split('<script id="chart-specs" type="application/json">')[1].split("</script>")[0]
    assert json.loads(specs)["success_rate"]["data"]["values"][0]["team"] == hostile  # the data, intact
