"""Extra links from an Airflow task to its Ray job: in the Ray dashboard while its cluster lives, and in the
provider's Ray view, which reads the records and so outlives the cluster."""

from __future__ import annotations

from typing import TYPE_CHECKING
from urllib.parse import quote, urlsplit

from airflow.sdk import BaseOperatorLink
from airflow.sdk.execution_time.xcom import XCom

from airflow_ray_platform.spec.naming import RAY_VIEW_PATH, XCOM_DASHBOARD_LINK, XCOM_SUBMISSION_ID

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator
    from airflow.sdk.types import TaskInstanceKey


class RayDashboardLink(BaseOperatorLink):
    """Pushed by the operators as soon as the address is known, so the link works while a job runs."""

    name = "Ray Dashboard"
    xcom_key = XCOM_DASHBOARD_LINK

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        return XCom.get_value(ti_key=ti_key, key=self.xcom_key) or ""


class RayJobRecordLink(BaseOperatorLink):
    """The job's page in the Ray view (its record, persisted log, result and events): it works after the
    cluster is gone, when the dashboard link no longer does. Empty until the job is submitted."""

    name = "Ray job (records)"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        from airflow_ray_platform import settings

        submission_id = XCom.get_value(ti_key=ti_key, key=XCOM_SUBMISSION_ID)
        if not submission_id:
            return ""
        # A path under Airflow's own base URL: right behind a proxy, and with a sub-path deployment.
        base = urlsplit(settings.api_base_url()).path.rstrip("/")
        return f"{base}{RAY_VIEW_PATH}/jobs/{quote(str(submission_id), safe='')}"
