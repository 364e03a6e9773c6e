"""What a Ray head does with ``authOptions.enableK8sTokenAuth`` (Ray >= 2.55), in front of a real local
cluster's dashboard: a caller's bearer token is a Kubernetes credential, which Ray checks by
TokenReview (here: the one identity the emulated API server's kubeconfig holds) and by a
SubjectAccessReview for the custom verb ``ray:write`` on the RayCluster (recorded, and granted to that
identity). An accepted request goes on to the local cluster with that cluster's own token; any other
gets Ray's 401. Kubernetes cannot run here: this is the boundary the emulator stands in for.
"""

from __future__ import annotations

import http.server
import threading
import urllib.error
import urllib.request

KNOWN_IDENTITY_TOKEN = "emulator-accepts-any-token"


class KubernetesTokenAuthHead:
    """A dashboard address that authenticates Kubernetes tokens, then relays to ``dashboard_url``."""

    def __init__(self, cluster_name: str, dashboard_url: str, cluster_token: str) -> None:
        self.cluster_name = cluster_name
        #: (verb, resource, name) of each SubjectAccessReview the head made, in order.
        self.access_reviews: list[tuple[str, str, str]] = []
        head = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def _relay(self) -> None:
                if self.headers.get("Authorization") != f"Bearer {KNOWN_IDENTITY_TOKEN}":
                    self.send_response(401)
                    self.end_headers()
                    return
                head.access_reviews.append(("ray:write", "rayclusters", head.cluster_name))
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
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_DELETE = _relay

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> KubernetesTokenAuthHead:
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()
