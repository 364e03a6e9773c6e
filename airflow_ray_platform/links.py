"""Extra link from an Airflow task to its Ray job (or cluster) in the Ray dashboard."""

from __future__ import annotations

from typing import TYPE_CHECKING

from airflow.sdk import BaseOperatorLink
from airflow.sdk.execution_time.xcom import XCom

from airflow_ray_platform.spec.naming import XCOM_DASHBOARD_LINK

if TYPE_CHECKING:
    from airflow.sdk import BaseOperator
    from airflow.sdk.types import TaskInstanceKey


class RayDashboardLink(BaseOperatorLink):
    """Pushed by the operators as soon as the address is known, so the link works while a job runs."""

    name = "Ray Dashboard"
    xcom_key = XCOM_DASHBOARD_LINK

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        return XCom.get_value(ti_key=ti_key, key=self.xcom_key) or ""
