"""Who the kuberay backend is to a cluster's Jobs API, and the client that says so.

Only with ``dashboard_url_template`` does the backend reach a Ray head at all (logs through the Jobs API);
otherwise no credential of any kind is sent. Every cluster the provider creates has Ray token
authentication on, and authenticates callers one of two ways (``ray_auth``):

- ``kubernetes`` (KubeRay >= 1.7, Ray >= 2.55): by a Kubernetes bearer token, which the head checks with
  the API server (TokenReview, then ``ray:write`` on that RayCluster). No static token exists and no
  Secret is read. The token is never the connection's own (which may create and delete clusters and
  read logs, and would reach every head a job on it could listen in place of): it is a short-lived
  token of a dedicated service account (``jobs_api_service_account``) that holds ``ray:write`` and
  nothing else, requested by TokenRequest and renewed before it expires.
- ``secret`` (older pairs): a static token KubeRay keeps in the cluster's Secret, read once.

Which one a cluster uses is read from its ``authOptions`` (fixed at its creation), so a connection's
setting never sends a credential where none is checked. A token is never logged.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from datetime import datetime, timedelta

from airflow_ray_platform.backends.base import BackendError, ClusterNotFoundError
from airflow_ray_platform.backends.jobs_api import JobsApiClient
from airflow_ray_platform.backends.kuberay.client import KubeRayClient
from airflow_ray_platform.spec.timestamps import utc_now

#: How a token-auth cluster authenticates the Jobs API's callers (``KubeRayBackend``'s ``ray_auth``).
RAY_AUTH_MODES = ("kubernetes", "secret")
#: The first Ray whose head checks Kubernetes tokens (``RAY_ENABLE_K8S_TOKEN_AUTH``).
MIN_KUBERNETES_TOKEN_AUTH_RAY = (2, 55)
#: How long a requested Jobs API token lives (the API server's minimum), and when it is renewed.
JOBS_API_TOKEN_SECONDS = 600
JOBS_API_TOKEN_RENEW_BEFORE = timedelta(minutes=2)


class JobsApiAuth:
    """The Jobs API clients of one backend's clusters, each with what authenticates to it.

    :param api: the backend's Kubernetes client.
    :param token_secret_key: with ``ray_auth: secret``, the token's key in the cluster's Secret.
    :param verify: how the dashboards' certificates are checked (a CA bundle's path, True or False).
    :param service_account: the dedicated identity whose tokens authenticate to ``kubernetes`` clusters.
    :param audiences: the audiences those tokens are bound to (empty: the API server's own, which is what a
        Ray head's TokenReview checks unless it was told otherwise).
    """

    def __init__(
        self,
        api: KubeRayClient,
        token_secret_key: str = "auth_token",
        verify: bool | str = True,
        service_account: str | None = None,
        audiences: Sequence[str] = (),
    ) -> None:
        self.api = api
        self.token_secret_key = token_secret_key
        self.verify = verify
        self.service_account = service_account
        self.audiences = tuple(audiences)
        self._issued: tuple[str, datetime] | None = None
        #: Per cluster: (the token it was made with, the Jobs API client).
        self._clients: dict[str, tuple[str | None, JobsApiClient]] = {}
        self._modes: dict[str, str] = {}

    def mode(self, cluster_name: str) -> str:
        """How the cluster authenticates callers: ``kubernetes``, ``secret`` or ``disabled`` (from its
        ``authOptions``, read once: a cluster's are fixed at its creation)."""
        if cluster_name not in self._modes:
            obj = self.api.get("rayclusters", cluster_name)
            if obj is None:
                raise ClusterNotFoundError(f"no RayCluster {cluster_name!r} in namespace {self.api.namespace!r}")
            options = (obj.get("spec") or {}).get("authOptions") or {}
            self._modes[cluster_name] = (
                "disabled"
                if options.get("mode") != "token"
                else "kubernetes"
                if options.get("enableK8sTokenAuth")
                else "secret"
            )
        return self._modes[cluster_name]

    def _service_account(self, cluster_name: str) -> str:
        """The dedicated service account whose tokens authenticate to a ``kubernetes`` cluster."""
        if self.service_account is None:
            raise BackendError(
                f"reading the Jobs API of {cluster_name!r}, which authenticates by Kubernetes credentials: the "
                "kuberay backend option jobs_api_service_account names no service account to request a token of"
            )
        return self.service_account

    def _kubernetes_token(self, cluster_name: str) -> str:
        """The dedicated service account's current token, requested again when it is about to expire."""
        account = self._service_account(cluster_name)
        if self._issued is None or self._issued[1] - utc_now() < JOBS_API_TOKEN_RENEW_BEFORE:
            self._issued = self.api.service_account_token(account, self.audiences, JOBS_API_TOKEN_SECONDS)
        return self._issued[0]

    def _secret_token(self, cluster_name: str) -> str | None:
        """The cluster's Ray token from the Secret KubeRay made (clusters created with ``ray_auth: secret``)."""
        data = self.api.secret_data(cluster_name, f"reading the token Secret of {cluster_name!r}")
        encoded = (data or {}).get(self.token_secret_key)
        return base64.b64decode(encoded).decode() if encoded else None

    def token(self, cluster_name: str, valid_for: timedelta | None = None) -> str | None:
        """What authenticates to the cluster: the dedicated account's Kubernetes token (renewed before it
        expires; with ``valid_for`` longer than that, one of its own that lasts as long: an interactive
        session cannot renew the token Ray's client holds), a Secret's token (read once), or None for a
        cluster without auth."""
        mode = self.mode(cluster_name)
        if mode == "kubernetes" and valid_for is not None and valid_for.total_seconds() > JOBS_API_TOKEN_SECONDS:
            seconds = int(valid_for.total_seconds())
            return self.api.service_account_token(self._service_account(cluster_name), self.audiences, seconds)[0]
        if mode == "kubernetes":
            return self._kubernetes_token(cluster_name)
        cached = self._clients.get(cluster_name)
        if cached is not None:
            return cached[0]
        return self._secret_token(cluster_name) if mode == "secret" else None

    def client(self, cluster_name: str, url: str) -> JobsApiClient:
        """The cluster's Jobs API client at ``url`` with :meth:`token` (a new client whenever the token was
        refreshed); no credential is ever sent where none is checked."""
        token = self.token(cluster_name)
        cached = self._clients.get(cluster_name)
        if cached is None or cached[0] != token:
            cached = self._clients[cluster_name] = (token, JobsApiClient(cluster_name, url, token, self.verify))
        return cached[1]

    def forget(self, cluster_name: str) -> None:
        """A deleted cluster's client and mode: a new cluster of that name is a new one."""
        self._clients.pop(cluster_name, None)
        self._modes.pop(cluster_name, None)
