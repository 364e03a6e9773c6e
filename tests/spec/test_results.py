"""The result line: found in a driver log however it is chunked, refused with the reason when it must be."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from airflow_ray_platform.spec.results import (
    RESULT_LIMIT_BYTES,
    RESULT_MARKER,
    JobResult,
    ResultScanner,
    ResultTooLargeError,
    result_line,
)

LOG = (
    "2026-12-05 INFO job_manager.py -- Runtime env is setting up.\n"
    f"(fit pid=123) {RESULT_MARKER}" + '"from a Ray task, not the driver"\n'
    f"{RESULT_MARKER}" + '{"first": 1}\n'
    "progress 50%\n"
    f"{RESULT_MARKER}" + '{"zones": {"north": 5.0}, "ok": true}\r\n'
    "bye\n"
).encode()


def scan(data: bytes, *cuts: int, credentials=tuple) -> JobResult:
    edges = [0, *sorted(cuts), len(data)]
    return ResultScanner(credentials).scan(data[a:b] for a, b in itertools.pairwise(edges))


@given(st.lists(st.integers(min_value=0, max_value=len(LOG)), max_size=12))
def test_the_drivers_last_result_line_wins_however_the_log_is_chunked(cuts):
    assert scan(LOG, *cuts) == JobResult({"zones": {"north": 5.0}, "ok": True}, present=True)


def test_a_log_without_a_result_line_hands_nothing_back():
    assert scan(b"hello\nairflow-ray-resul\nairflow-ray-result\n") == JobResult()
    assert scan(b"") == JobResult()
    assert JobResult().to_dict() is None


def test_the_last_line_counts_without_a_newline():
    assert scan(f"x\n{RESULT_MARKER}[1, 2]".encode()).value == [1, 2]


def test_a_value_over_the_limit_is_refused_with_its_size():
    value = "x" * RESULT_LIMIT_BYTES
    line = f"{RESULT_MARKER}{json.dumps(value)}\n".encode()
    result = scan(line, 1000, 500_000)
    assert result.refused is not None and not result.present
    assert f"{RESULT_LIMIT_BYTES + 2} bytes of JSON, over the limit of {RESULT_LIMIT_BYTES} bytes" in result.refused
    with pytest.raises(ResultTooLargeError, match="over the limit"):
        result_line(value)
    assert scan(result_line("x" * (RESULT_LIMIT_BYTES - 2)).encode()).present  # exactly at the limit


def test_a_line_that_is_not_json_is_refused():
    assert "is not JSON" in scan(f"{RESULT_MARKER}{{nope\n".encode()).refused


@pytest.mark.parametrize(
    "published",
    ['"s3cr3t-token"', '{"a": ["prefix s3cr3t-token suffix"]}', '"\\u0073\\u0033cr3t-token"'],
    ids=["verbatim", "inside", "json-escaped"],
)
def test_a_value_carrying_the_clusters_token_is_refused(published):
    result = scan(f"{RESULT_MARKER}{published}\n".encode(), credentials=lambda: ["s3cr3t-token", None])
    assert result == JobResult(refused="the job's result contains the cluster's authentication token: it is not kept")
    assert "s3cr3t-token" not in json.dumps(result.to_dict())


def test_the_record_form_round_trips():
    for result in (JobResult(None, present=True), JobResult([1], present=True), JobResult(refused="why")):
        assert JobResult.from_dict(result.to_dict()) == result
    assert JobResult.from_dict({"value": None}).present  # a function that returned None handed None back


def test_hand_back_prints_the_line_from_a_plain_python():
    code = "from airflow_ray_platform.spec.results import hand_back; hand_back({'rows': 3})"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout == f'{RESULT_MARKER}{{"rows":3}}\n'
    assert "airflow" not in subprocess.run(
        [sys.executable, "-c", "import sys, airflow_ray_platform.spec.results; print(sorted(sys.modules))"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.replace("airflow_ray_platform", "")  # a job's driver imports it without Airflow
