#!/usr/bin/env bash
# The main job on the embedded local backend: the per-zone training DAG through `airflow dags test`.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
export AIRFLOW_HOME="$root/.airflow-home"
export AIRFLOW__CORE__DAGS_FOLDER="$root/dags"
export AIRFLOW__CORE__LOAD_EXAMPLES=False
export AIRFLOW__CORE__PARALLELISM=4
export AIRFLOW_RAY_PLATFORM_HOME="$AIRFLOW_HOME/ray"
export ZONE_TRAINING_OUTPUT="$root/demo-output/zone_training"
export RAY_USAGE_OUTPUT="$root/demo-output/usage"
# The local backend's jobs run in a read-only sandbox: the one folder of this machine they may write.
export AIRFLOW_CONN_RAY_DEFAULT="{\"conn_type\": \"ray\", \"extra\": {\"backend\": \"local\", \"writable_paths\": [\"$root/demo-output\"]}}"
mkdir -p "$AIRFLOW_HOME"
airflow db migrate > "$AIRFLOW_HOME/db-migrate.log" 2>&1 || { cat "$AIRFLOW_HOME/db-migrate.log"; exit 1; }
log="$AIRFLOW_HOME/demo-zone-training.log"
echo "Running example_zone_training (log: $log) ..."
if ! airflow dags test example_zone_training > "$log" 2>&1; then
    tail -n 60 "$log"; echo "example_zone_training failed; full log: $log"; exit 1
fi
python - "$ZONE_TRAINING_OUTPUT" <<'PY'
import json, sys
from pathlib import Path
summaries = sorted(Path(sys.argv[1]).glob("*/summary.json"), key=lambda p: p.stat().st_mtime)
if not summaries:
    sys.exit(f"no summary.json under {sys.argv[1]}: the training job wrote nothing")
summary = json.loads(summaries[-1].read_text())
zones = len(list((summaries[-1].parent / "zones").glob("zone-*/metrics.json")))
print(f"Trained {summary['zones']} zones ({zones} models on disk), mean RMSE {summary['mean_rmse']:.3f}, "
      f"mean R2 {summary['mean_r2']:.3f}, {summary['wall_seconds']:.1f}s on Ray")
print(f"Outputs: {summaries[-1].parent}")
PY

# The two DAGs the provider ships: sweep idle clusters, then export today's usage to Parquet.
airflow dags test ray_cleanup_idle_clusters > "$AIRFLOW_HOME/demo-cleanup.log" 2>&1 \
    || { tail -n 40 "$AIRFLOW_HOME/demo-cleanup.log"; exit 1; }
grep -E "deleted [0-9]+ of [0-9]+ cluster" "$AIRFLOW_HOME/demo-cleanup.log" | tail -n 1 | sed 's/^.*deleted/Cleanup: deleted/'
tomorrow="$(python -c 'import datetime; print((datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=1)).date())')"
airflow dags test ray_usage_metrics_export "$tomorrow" > "$AIRFLOW_HOME/demo-export.log" 2>&1 \
    || { tail -n 40 "$AIRFLOW_HOME/demo-export.log"; exit 1; }
python - "$RAY_USAGE_OUTPUT" <<'PY'
import sys
from pathlib import Path
import pyarrow.parquet as pq
files = sorted(Path(sys.argv[1]).glob("jobs/date=*/*.parquet"), key=lambda p: p.stat().st_mtime)
if not files:
    sys.exit(f"no usage exported under {sys.argv[1]}")
jobs = pq.read_table(files[-1]).to_pylist()
print(f"Usage ({files[-1].parent.name}): {len(jobs)} job(s)")
for job in jobs:
    measured = job["measured_cpu_utilisation"]
    print(f"  {job['team']}/{job['dag_id']}.{job['task_id']}: {job['state']}, {job['duration_s']:.0f}s, "
          f"{job['cpu_hours']:.4f} CPU-h, cost {job['cost_estimate']:.5f}, "
          f"measured CPU {'n/a' if measured is None else f'{measured:.0f}%'}")
print(f"Parquet: {Path(sys.argv[1])}")
PY
