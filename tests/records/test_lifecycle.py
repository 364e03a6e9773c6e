"""What the lifecycle recorder keeps of what it reads back from a backend."""

from __future__ import annotations

from datetime import UTC, datetime

from airflow_ray_platform.backends.base import ClusterInfo, ClusterState
from airflow_ray_platform.records.lifecycle import LifecycleRecorder, _uid
from airflow_ray_platform.spec.naming import OWNER_LABEL, TEAM_LABEL


def test_a_team_label_that_is_no_label_value_is_not_recorded(tmp_path):
    """Found by review: a cluster's labels are written by whoever may edit the cluster (a RayCluster's
    metadata, a local record before it left the sandbox), and the recorded team reaches the Ray view and
    the bills. A team or owner that is no label value is recorded as none."""
    recorder = LifecycleRecorder(None, log_storage_uri=tmp_path.as_uri())
    info = ClusterInfo(
        name="labelled",
        backend="local",
        state=ClusterState.READY,
        dashboard_url=None,
        labels={TEAM_LABEL: "</script><script>alert(1)</script>", OWNER_LABEL: "alice"},
        created_at=datetime(2026, 12, 6, tzinfo=UTC),
    )
    recorder.cluster_seen(info, requested=True)
    row = recorder.store.cluster(_uid(info))
    assert row["team"] is None and row["owner"] == "alice"
