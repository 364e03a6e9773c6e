"""The provider's Airflow plugin: the Ray view (``ui.app``), mounted by Airflow's API server under
``/ray`` and linked from Airflow's navigation, and the listener that audits who set a Ray task's state
by hand (``listeners``). Registered through ``get_provider_info()["plugins"]``, so
installing the package is enough."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from airflow_ray_platform.plugins import listeners
from airflow_ray_platform.plugins.ui.app import create_app
from airflow_ray_platform.spec.naming import RAY_VIEW_PATH


class RayPlatformPlugin(AirflowPlugin):
    name = "airflow_ray_platform"
    fastapi_apps = [{"app": create_app(), "url_prefix": RAY_VIEW_PATH, "name": "Ray"}]
    listeners = [listeners]
    external_views = [
        {
            "name": "Ray",
            "href": "ray/jobs",
            "destination": "nav",
            "url_route": "ray",
            "icon": None,
        }
    ]


def _entry_point_plugin() -> type[AirflowPlugin] | None:
    """What the ``airflow.plugins`` entry point loads. Airflow loads providers' plugins (registered in
    ``get_provider_info``) only when it discovers providers eagerly; by default (``[core]
    lazy_discover_providers``) it does not, and then the entry point is what loads this plugin. Where
    providers are discovered eagerly it is None, which Airflow skips: the plugin loads once either way."""
    from airflow import settings

    return RayPlatformPlugin if settings.LAZY_LOAD_PROVIDERS else None


entry_point_plugin = _entry_point_plugin()
