"""The dashboard backend (an existing cluster reached through its Ray dashboard), on the session's real
local cluster: a running job's log is followed once for every reader, each byte fetched once."""

from __future__ import annotations

import time

from airflow_ray_platform.backends.dashboard import DashboardBackend
from airflow_ray_platform.backends.followed_logs import FollowedLogs
from airflow_ray_platform.spec.models import JobSpec

from ..conftest import SHARED_CLUSTER


def test_a_running_jobs_log_is_followed_once_for_every_reader_and_each_byte_fetched_once(backend, shared_cluster):
    """Two readers in one process (two triggers' backends) read a chatty job's log from their offsets
    while it runs: one follow of Ray's log tail serves both, and the last read waits for the last bytes."""
    script = "import time\nfor i in range(40):\n    print('line', i, 'x' * 100, flush=True); time.sleep(0.1)"
    token = backend.registry.read_token(SHARED_CLUSTER)
    readers = [
        DashboardBackend(shared_cluster.dashboard_url, "existing", token, allow_http=True),
        DashboardBackend(shared_cluster.dashboard_url, "existing", token, allow_http=True),
    ]
    readers[0].submit_job("existing", "dashboard-follow", JobSpec(entrypoint=f'python -c "{script}"'), {})
    offsets, texts, reads = [0, 0], ["", ""], 0
    while True:
        state = readers[0].describe_job("existing", "dashboard-follow").state
        for index, reader in enumerate(readers):
            text, offsets[index] = reader.job_log_since(
                "existing", "dashboard-follow", offsets[index], complete_lines=not state.is_terminal
            )
            assert text == "" or text.endswith("\n")  # whole lines while the job runs
            texts[index] += text
            reads += 1
        if state.is_terminal:
            break
        time.sleep(0.3)
    whole = backend.job_logs(SHARED_CLUSTER, "dashboard-follow")
    assert "line 39" in whole and texts == [whole, whole]
    (followed,) = [log for key, log in FollowedLogs._logs.items() if key[-1] == "dashboard-follow"]
    assert reads > 10 and followed.follows == 1
    assert followed.received == len(whole.encode())  # each byte fetched once, for both readers and every read


def test_a_cut_follow_resumes_without_duplicating_a_byte(backend, shared_cluster):
    """The connection to the dashboard is cut while the job writes: the next read opens the tail again
    and skips what was received, so the reader's text is the log, once."""
    from urllib.parse import urlsplit

    from ..tcp_relay import TcpRelay

    address = urlsplit(shared_cluster.dashboard_url)
    relay = TcpRelay(address.hostname, address.port).start()
    script = "import time\nfor i in range(60):\n    print('line', i, flush=True); time.sleep(0.1)"
    token = backend.registry.read_token(SHARED_CLUSTER)
    reader = DashboardBackend(f"http://127.0.0.1:{relay.port}", "existing", token, allow_http=True)
    reader.submit_job("existing", "dashboard-cut", JobSpec(entrypoint=f'python -c "{script}"'), {})
    offset, text, cut = 0, "", False
    try:
        while True:
            state = reader.describe_job("existing", "dashboard-cut").state
            new, offset = reader.job_log_since(
                "existing", "dashboard-cut", offset, complete_lines=not state.is_terminal
            )
            text += new
            if state.is_terminal:
                break
            if not cut and "line 20" in text:
                relay.stop()
                relay.start()
                cut = True
            time.sleep(0.3)
    finally:
        relay.stop()
    whole = backend.job_logs(SHARED_CLUSTER, "dashboard-cut")
    assert cut and "line 59" in whole and text == whole
    (followed,) = [log for key, log in FollowedLogs._logs.items() if key[-1] == "dashboard-cut"]
    assert followed.follows >= 2  # opened again after the cut


def test_the_persisting_read_completes_the_followed_log_as_rays_tail_would_send_it(backend, shared_cluster):
    """A finished job's log, read whole to persist it, completes the followed log at once (Ray's tail
    closes only 2-3 s after the job's end, and every reader's last read waited for that): the persisted
    bytes are the file's, and the readers' text is what Ray's tail sends, carriage returns and UTF-8
    included."""
    from airflow_ray_platform.backends.jobs_api import JobsApiClient

    script = (
        "import sys, time\nw = sys.stdout.buffer\nfor i in range(15):\n"
        "    w.write(('step %d caf\\u00e9 \\u2713\\r\\n' % i).encode()); w.write(b'progress 50%\\rprogress 100%\\n')\n"
        "    w.flush(); time.sleep(0.1)\nw.write(b'last words'); w.flush()"
    )
    token = backend.registry.read_token(SHARED_CLUSTER)
    reader = DashboardBackend(shared_cluster.dashboard_url, "existing", token, allow_http=True)
    reader.submit_job("existing", "dashboard-persist", JobSpec(entrypoint=f'python -c "{script}"'), {})
    offset, text = 0, ""
    while not reader.describe_job("existing", "dashboard-persist").state.is_terminal:
        new, offset = reader.job_log_since("existing", "dashboard-persist", offset, complete_lines=True)
        text += new
        time.sleep(0.2)
    (followed,) = [log for key, log in FollowedLogs._logs.items() if key[-1] == "dashboard-persist"]
    assert followed.received > 0  # followed while the job ran

    persisted = b"".join(reader.job_log_chunks("existing", "dashboard-persist"))
    assert followed.complete and followed._generation == 1  # completed by that read: the last read does not wait
    rest, offset = reader.job_log_since("existing", "dashboard-persist", offset, complete_lines=False)
    text += rest

    raw = b"".join(backend.job_log_chunks(SHARED_CLUSTER, "dashboard-persist"))  # the file, read on its node
    assert b"\r\n" in raw and b"progress 50%\rprogress" in raw and raw.endswith(b"last words")
    assert persisted == raw
    tail_sends = b"".join(JobsApiClient("existing", shared_cluster.dashboard_url, token).tail("dashboard-persist"))
    assert text.encode() == tail_sends and "step 14 café ✓\n" in text


def test_a_runs_end_persists_first_so_its_last_read_is_served_by_that_read(backend, shared_cluster, tmp_path):
    """A run's conclusion persists the finished log before it reads the rest into the task's log: the
    persisting read completes the followed log, and the task's log still gets the job's last line."""
    import logging

    from airflow_ray_platform.records.lifecycle import LifecycleRecorder
    from airflow_ray_platform.runs.job_run import RayJobRun

    script = "import time\nfor i in range(10):\n    print('line', i, flush=True); time.sleep(0.1)\nprint('the end')"
    token = backend.registry.read_token(SHARED_CLUSTER)
    reader = DashboardBackend(shared_cluster.dashboard_url, "existing", token, allow_http=True)
    reader.submit_job("existing", "dashboard-conclude", JobSpec(entrypoint=f'python -c "{script}"'), {})
    lines: list[str] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    log = logging.getLogger("tests.dashboard.conclude")
    log.addHandler(Collect())
    log.setLevel(logging.INFO)
    recorder = LifecycleRecorder(None, log_storage_uri=tmp_path.as_uri())
    run = RayJobRun(reader, "existing", "dashboard-conclude", recorder=recorder, log=log)
    event = run.wait(run.describe(), poll_interval=0.2, stream_logs=True)
    assert event is not None and event.succeeded
    run.conclude(event, stream_logs=True)

    (followed,) = [log for key, log in FollowedLogs._logs.items() if key[-1] == "dashboard-conclude"]
    assert followed._generation == 1  # completed by the persisting read, not by waiting for Ray's tail to close
    assert run.log_uri and "the end" in "\n".join(lines)
    assert lines[-1].startswith("Ray job 'dashboard-conclude' log persisted to")
