"""What a Ray head does with ``authOptions.enableK8sTokenAuth`` (Ray >= 2.55), in front of a real local
cluster's dashboard: a caller's bearer token is a Kubernetes credential, which Ray checks by
TokenReview (here: the emulated API server's answer) and by a SubjectAccessReview for the custom verb
``ray:write`` on the RayCluster (granted to the identities given, as a Role would). An accepted request
goes on to the local cluster with that cluster's own token; an unknown or expired token gets Ray's 401,
an identity without ``ray:write`` 403. Kubernetes cannot run here: this is the boundary the emulator
stands in for.
"""

from __future__ import annotations

import http.server
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Collection


class KubernetesTokenAuthHead:
    """A dashboard address that authenticates Kubernetes tokens, then relays to ``dashboard_url``.

    :param review: a TokenReview: the identity a token authenticates, or None.
    :param ray_writers: the identities a Role grants ``ray:write`` on this RayCluster.
    """

    def __init__(
        self,
        cluster_name: str,
        dashboard_url: str,
        cluster_token: str,
        review: Callable[[str], str | None],
        ray_writers: Collection[str],
    ) -> None:
        self.cluster_name = cluster_name
        #: (identity, verb, resource, name) of each SubjectAccessReview the head made, in order.
        self.access_reviews: list[tuple[str, str, str, str]] = []
        head = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def _answer(self, status: int, body: bytes = b"") -> None:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _relay(self) -> None:
                bearer = self.headers.get("Authorization") or ""
                identity = review(bearer.removeprefix("Bearer ")) if bearer.startswith("Bearer ") else None
                if identity is None:
                    self._answer(401)
                    return
                head.access_reviews.append((identity, "ray:write", "rayclusters", head.cluster_name))
                if identity not in ray_writers:
                    self._answer(403)
                    return
                length = int(self.headers.get("Content-Length") or 0)
                request = urllib.request.Request(
                    dashboard_url + self.path,
                    data=self.rfile.read(length) if length else None,
                    method=self.command,
                    headers={"Authorization": f"Bearer {cluster_token}", "Content-Type": "application/json"},
                )
                try:
                    with urllib.request.urlopen(request, timeout=30) as response:
                        status, body = response.status, response.read()
                except urllib.error.HTTPError as error:
                    status, body = error.code, error.read()
                self._answer(status, body)

            do_GET = do_POST = do_DELETE = _relay

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> KubernetesTokenAuthHead:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()
