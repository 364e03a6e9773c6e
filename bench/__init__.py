"""Benchmarks: each compares against a baseline measured in the same run, and writes results.json.

Importing this package isolates the run before Airflow or Ray is imported by any benchmark: a private
HOME (Ray keeps tokens in ~/.ray), AIRFLOW_HOME, DAG folder and local-backend root, and one BLAS
thread per process.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

#: A benchmark's helper process (spawned) shares its parent's isolated run, which removes it at exit.
_PARENT_WORK = os.environ.get("ARP_BENCH_WORK")
WORK = Path(_PARENT_WORK or tempfile.mkdtemp(prefix="arp-bench-"))
if _PARENT_WORK is None:
    os.environ["ARP_BENCH_WORK"] = str(WORK)
    atexit.register(shutil.rmtree, WORK, ignore_errors=True)  # the export benchmark alone leaves ~300 MB
BENCH_DAGS = Path(__file__).parent / "dags"

os.environ.update(
    HOME=str(WORK / "home"),
    AIRFLOW_HOME=str(WORK / "airflow"),
    AIRFLOW__CORE__DAGS_FOLDER=str(BENCH_DAGS),
    AIRFLOW__CORE__LOAD_EXAMPLES="False",
    AIRFLOW__CORE__PARALLELISM="4",
    AIRFLOW_RAY_PLATFORM_HOME=str(WORK / "ray-platform"),
    RAY_USAGE_STATS_ENABLED="0",
    # dag.test() runs triggers in its own process, with no scheduler to race a resumed task: no hold (the
    # deployment benchmarks run with deploy/airflow.env and the shipped default)
    AIRFLOW__RAY_PLATFORM__DEFERRAL_SETTLE_SECONDS="0",
    # One BLAS thread per process, as Ray gives a 1-CPU task: the serial baseline then measures one
    # core's work, and "ideal on N cores" means serial / N (numpy would otherwise spread a "serial"
    # loop over every core and make any comparison meaningless).
    OMP_NUM_THREADS="1",
    OPENBLAS_NUM_THREADS="1",
    MKL_NUM_THREADS="1",
)
from airflow_ray_platform.backends.local.processes import INHERITED_RAY_VARIABLES  # noqa: E402 (after HOME is set)

for variable in INHERITED_RAY_VARIABLES:
    os.environ.pop(variable, None)
(WORK / "home").mkdir(exist_ok=True)
