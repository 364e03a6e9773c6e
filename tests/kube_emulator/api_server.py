"""A small Kubernetes API server emulation, over real HTTP, for the kuberay backend's tests.

No real kube-apiserver runs on these machines, so the official ``kubernetes`` client (and
``kubernetes_asyncio``) talk to this instead. It is faithful where the backend depends on it:

* ``ray.io/v1`` RayClusters and RayJobs: 201 on create, 409 ``AlreadyExists`` on a duplicate, 404
  after delete, 409 ``Conflict`` on a stale ``resourceVersion`` (replace, delete preconditions), the
  ``/status`` subresource (status is ignored on the main resource and vice versa), label selectors
  (``=``, ``==``, ``!=``, exists, ``!key``, ``in``, ``notin``), ``fieldSelector=metadata.name=…``,
  JSON merge patch, and ``watch=true`` streaming ADDED / MODIFIED / DELETED from a resourceVersion;
* server-side validation against the installed CRDs' schemas: a type error is always 422 Invalid,
  an unknown field is 422 with ``fieldValidation=Strict`` (as ``kubectl apply --validate=strict``);
* without the CRDs installed (``crds_installed=False``), ``ray.io`` paths answer 404 with no object
  named, as a real API server does for an unknown resource type;
* core ``v1`` pods (list, get, ``/log``, ``/log?follow=true``) and secrets (get, create), which the simulated controller
  writes;
* service accounts and their ``/token`` subresource (TokenRequest): a short-lived token of that
  account, with its audiences and expiry, which :meth:`KubernetesApiEmulator.review_token` (what a
  TokenReview answers) then resolves to ``system:serviceaccount:<namespace>:<name>`` until it expires.

Every request is counted by verb and resource, for the API-calls-per-job benchmark.
"""

from __future__ import annotations

import copy
import json
import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from airflow_ray_platform.backends.kuberay.schema import CRDS, ManifestValidationError, validate_manifest

RAY_PLURALS = {"rayclusters": "RayCluster", "rayjobs": "RayJob"}
CORE_KINDS = {"pods": "Pod", "secrets": "Secret", "serviceaccounts": "ServiceAccount"}
#: The bearer token of the one identity the emulator's kubeconfig holds (the Airflow worker's own).
KUBECONFIG_TOKEN = "emulator-accepts-any-token"
KUBECONFIG_IDENTITY = "kubeconfig:tester"
_CUSTOM = re.compile(r"^/apis/ray\.io/v1/namespaces/([^/]+)/(rayclusters|rayjobs)(?:/([^/]+))?(?:/(status))?$")
_CORE = re.compile(r"^/api/v1/namespaces/([^/]+)/(pods|secrets|serviceaccounts)(?:/([^/]+))?(?:/(log|token))?$")
_REQUIREMENT = re.compile(
    r"^\s*(!?)([A-Za-z0-9_./-]+)\s*(?:(==|=|!=)\s*([A-Za-z0-9_.-]*)|\s+(in|notin)\s*\(([^)]*)\))?\s*$"
)


class ApiError(Exception):
    """An API error as the server sends it: a ``Status`` (``details`` names the object, if any)."""

    def __init__(self, code: int, reason: str, message: str, details: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details or {}

    def status(self) -> dict[str, Any]:
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "details": self.details,
            "code": self.code,
        }


def _split_selector(selector: str) -> list[str]:
    """Split on commas outside parentheses (``a in (x,y),b=c``)."""
    parts, depth, current = [], 0, ""
    for char in selector:
        depth += char == "("
        depth -= char == ")"
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    return [part for part in [*parts, current] if part.strip()]


def label_selector_matches(selector: str | None, labels: dict[str, str]) -> bool:
    """Kubernetes label-selector semantics (equality- and set-based)."""
    for requirement in _split_selector(selector or ""):
        match = _REQUIREMENT.match(requirement)
        if match is None:
            raise ApiError(400, "BadRequest", f"unable to parse requirement: {requirement!r}")
        negated, key, operator, value, set_operator, values = match.groups()
        present = key in labels
        if negated:
            ok = not present
        elif operator in ("=", "=="):
            ok = labels.get(key) == value
        elif operator == "!=":
            ok = labels.get(key) != value
        elif set_operator:
            members = {v.strip() for v in values.split(",")}
            ok = (present and labels[key] in members) if set_operator == "in" else labels.get(key) not in members
        else:
            ok = present
        if not ok:
            return False
    return True


def _field_selector_matches(selector: str | None, obj: dict[str, Any]) -> bool:
    for requirement in _split_selector(selector or ""):
        field, _, value = requirement.partition("=")
        field = field.rstrip("=")
        value = value.lstrip("=")
        if field == "metadata.name":
            actual = obj["metadata"]["name"]
        elif field == "metadata.namespace":
            actual = obj["metadata"].get("namespace")
        else:
            raise ApiError(400, "BadRequest", f"field label not supported: {field}")
        if actual != value:
            return False
    return True


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = _merge_patch(result.get(key), value)
    return result


class ObjectStore:
    """The emulated etcd: objects by (resource, namespace, name), one global resourceVersion."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.events: list[tuple[int, str, str, dict[str, Any]]] = []  # (rv, resource, type, object)
        self.resource_version = 0
        self.changed = threading.Condition()
        self.pod_logs: dict[tuple[str, str], Callable[[], str]] = {}

    # -------------------------------------------------------------- writes
    def _record(self, resource: str, kind: str, obj: dict[str, Any]) -> dict[str, Any]:
        self.resource_version += 1
        obj["metadata"]["resourceVersion"] = str(self.resource_version)
        self.events.append((self.resource_version, resource, kind, copy.deepcopy(obj)))
        self.changed.notify_all()
        return copy.deepcopy(obj)

    def create(self, resource: str, namespace: str, obj: dict[str, Any]) -> dict[str, Any]:
        with self.changed:
            obj = copy.deepcopy(obj)
            metadata = obj.setdefault("metadata", {})
            name = metadata.get("name")
            if not name:
                raise ApiError(422, "Invalid", f"{resource}: metadata.name: Required value")
            key = (resource, namespace, name)
            if key in self.objects:
                raise ApiError(409, "AlreadyExists", f'{resource} "{name}" already exists')
            metadata.update(
                namespace=namespace,
                uid=str(uuid.uuid4()),
                generation=1,
                creationTimestamp=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            )
            metadata.pop("resourceVersion", None)
            if resource in RAY_PLURALS:
                obj.pop("status", None)
            self.objects[key] = obj
            return self._record(resource, "ADDED", obj)

    def get(self, resource: str, namespace: str, name: str) -> dict[str, Any]:
        with self.changed:
            try:
                return copy.deepcopy(self.objects[(resource, namespace, name)])
            except KeyError:
                raise ApiError(
                    404, "NotFound", f'{resource} "{name}" not found', {"name": name, "kind": resource}
                ) from None

    def _check_version(self, current: dict[str, Any], expected: str | None, name: str) -> None:
        if expected and expected != current["metadata"]["resourceVersion"]:
            raise ApiError(
                409,
                "Conflict",
                f"Operation cannot be fulfilled on {name}: the object has been modified; please apply your "
                "changes to the latest version and try again",
            )

    def update(self, resource: str, namespace: str, name: str, obj: dict[str, Any], *, status: bool) -> dict:
        """A replace (PUT); ``status`` for the /status subresource, which changes only the status."""
        with self.changed:
            current = self.objects.get((resource, namespace, name))
            if current is None:
                raise ApiError(404, "NotFound", f'{resource} "{name}" not found', {"name": name, "kind": resource})
            self._check_version(current, obj.get("metadata", {}).get("resourceVersion"), name)
            updated = copy.deepcopy(current)
            if status:
                updated["status"] = copy.deepcopy(obj.get("status"))
            else:
                kept = {k: current["metadata"][k] for k in ("namespace", "uid", "creationTimestamp", "generation")}
                updated = {**copy.deepcopy(obj), "metadata": {**obj.get("metadata", {}), **kept}}
                if "status" in current:
                    updated["status"] = current["status"]
                else:
                    updated.pop("status", None)
                if updated.get("spec") != current.get("spec"):
                    updated["metadata"]["generation"] = current["metadata"]["generation"] + 1
            self.objects[(resource, namespace, name)] = updated
            return self._record(resource, "MODIFIED", updated)

    def delete(self, resource: str, namespace: str, name: str, resource_version: str | None = None) -> dict:
        with self.changed:
            current = self.objects.get((resource, namespace, name))
            if current is None:
                raise ApiError(404, "NotFound", f'{resource} "{name}" not found', {"name": name, "kind": resource})
            self._check_version(current, resource_version, name)
            del self.objects[(resource, namespace, name)]
            self.pod_logs.pop((namespace, name), None)
            return self._record(resource, "DELETED", current)

    # --------------------------------------------------------------- reads
    def list(
        self, resource: str, namespace: str | None, labels: str | None, fields: str | None, *, copies: bool = True
    ) -> list[dict]:
        """Matching objects; ``copies=False`` for a caller that only serializes them (no deep copy)."""
        with self.changed:
            return [
                copy.deepcopy(obj) if copies else obj
                for (res, ns, _), obj in sorted(self.objects.items())
                if res == resource
                and (namespace is None or ns == namespace)
                and label_selector_matches(labels, obj["metadata"].get("labels") or {})
                and _field_selector_matches(fields, obj)
            ]


class _Server(ThreadingHTTPServer):
    """A listen backlog as deep as a real API server's: a thousand clients connecting at once (one
    watch each) queue, where the default backlog of 5 drops their connections."""

    request_queue_size = 1024


class KubernetesApiEmulator:
    """The HTTP front of :class:`ObjectStore`; ``url`` goes into a kubeconfig.

    :param crds_installed: serve the RayCluster and RayJob CRDs (False: "KubeRay is not installed").
    """

    def __init__(self, crd_dir: Path = CRDS, crds_installed: bool = True) -> None:
        self.store = ObjectStore()
        self.crd_dir = crd_dir
        self.crds_installed = crds_installed
        self.requests: Counter[str] = Counter()
        #: Tokens issued by TokenRequest: token -> (identity, audiences, expires at, epoch seconds).
        self.issued_tokens: dict[str, tuple[str, tuple[str, ...], float]] = {}
        #: Time spent answering non-watch requests (handling and encoding), so a benchmark can tell the
        #: emulated server's share of a call from the client's.
        self.server_seconds = 0.0
        self._server = _Server(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, name="k8s-api-emulator", daemon=True)
        self._stopping = False

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> KubernetesApiEmulator:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping = True
        with self.store.changed:
            self.store.changed.notify_all()
        self._server.shutdown()
        self._server.server_close()

    def write_kubeconfig(self, path: Path, namespace: str = "default") -> Path:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "emulated", "cluster": {"server": self.url}}],
            "users": [{"name": "tester", "user": {"token": KUBECONFIG_TOKEN}}],
            "contexts": [
                {"name": "emulated", "context": {"cluster": "emulated", "user": "tester", "namespace": namespace}}
            ],
            "current-context": "emulated",
        }
        path.write_text(json.dumps(config))
        return path

    # ------------------------------------------------------------- requests
    def _validate(self, resource: str, obj: dict[str, Any], strict: bool) -> None:
        if resource not in RAY_PLURALS:
            return
        if obj.get("kind") != RAY_PLURALS[resource]:
            raise ApiError(400, "BadRequest", f"kind {obj.get('kind')!r} does not match {resource}")
        try:
            validate_manifest(obj, self.crd_dir, strict=strict)
        except ManifestValidationError as error:
            raise ApiError(422, "Invalid", str(error)) from None

    def _require_crd(self, resource: str) -> None:
        if resource in RAY_PLURALS and not self.crds_installed:
            raise ApiError(404, "NotFound", "the server could not find the requested resource")

    def handle(self, method: str, path: str, query: dict[str, str], body: Any) -> tuple[int, Any]:
        """One API call: (HTTP status, JSON body). ``watch=true`` is served by the handler itself."""
        store = self.store
        match = _CUSTOM.match(path) or _CORE.match(path)
        if match is None:
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({path})")
        namespace, resource, name, sub = match.groups()
        self.requests[
            f"{method} {resource}{'/' + sub if sub else ''}{'' if name or method != 'GET' else ' (list)'}"
        ] += 1
        self._require_crd(resource)
        strict = query.get("fieldValidation") == "Strict"
        api_version = "ray.io/v1" if resource in RAY_PLURALS else "v1"
        kind = RAY_PLURALS.get(resource) or CORE_KINDS[resource]
        if name is None:
            if method == "GET":
                items = store.list(
                    resource, namespace, query.get("labelSelector"), query.get("fieldSelector"), copies=False
                )
                return 200, {
                    "apiVersion": api_version,
                    "kind": f"{kind}List",
                    "metadata": {"resourceVersion": str(store.resource_version)},
                    "items": items,
                }
            if method == "POST":
                body.setdefault("apiVersion", api_version)
                body.setdefault("kind", kind)
                self._validate(resource, body, strict)
                return 201, store.create(resource, namespace, body)
        elif sub == "token" and method == "POST":
            store.get(resource, namespace, name)  # 404 for an account that does not exist
            return 201, self._issue_token(namespace, name, body or {})
        elif sub == "log":
            store.get(resource, namespace, name)
            reader = store.pod_logs.get((namespace, name))
            return 200, reader() if reader else ""
        elif method == "GET":
            return 200, store.get(resource, namespace, name)
        elif method == "PUT":
            if sub != "status":
                self._validate(resource, body, strict)
            updated = store.update(resource, namespace, name, body, status=sub == "status")
            self._validate(resource, updated, strict=False)
            return 200, updated
        elif method == "PATCH":
            current = store.get(resource, namespace, name)
            patched = _merge_patch(current, body)
            patched["metadata"]["resourceVersion"] = (body.get("metadata") or {}).get("resourceVersion")
            if sub != "status":
                self._validate(resource, patched, strict)
            return 200, store.update(resource, namespace, name, patched, status=sub == "status")
        elif method == "DELETE":
            preconditions = (body or {}).get("preconditions") or {}
            deleted = store.delete(resource, namespace, name, preconditions.get("resourceVersion"))
            return 200, deleted
        raise ApiError(405, "MethodNotAllowed", f"{method} is not supported on {path}")

    def _issue_token(self, namespace: str, account: str, request: dict[str, Any]) -> dict[str, Any]:
        """A TokenRequest's answer: a new token of the account, valid ``expirationSeconds`` (at least 600)."""
        spec = request.get("spec") or {}
        seconds = int(spec.get("expirationSeconds") or 3600)
        if seconds < 600:
            raise ApiError(422, "Invalid", "spec.expirationSeconds: may not specify a duration less than 10 minutes")
        token = f"sa-token-{uuid.uuid4().hex}"
        expires = time.time() + seconds
        identity = f"system:serviceaccount:{namespace}:{account}"
        self.issued_tokens[token] = (identity, tuple(spec.get("audiences") or ()), expires)
        stamp = datetime.fromtimestamp(expires, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return {
            "apiVersion": "authentication.k8s.io/v1",
            "kind": "TokenRequest",
            "metadata": {"name": account, "namespace": namespace},
            "spec": {**spec, "expirationSeconds": seconds},
            "status": {"token": token, "expirationTimestamp": stamp},
        }

    def review_token(self, token: str, audiences: tuple[str, ...] = ()) -> str | None:
        """What a TokenReview answers for ``token``: the identity it authenticates, or None (unknown, expired,
        or not for one of ``audiences``)."""
        if token == KUBECONFIG_TOKEN:
            return KUBECONFIG_IDENTITY
        issued = self.issued_tokens.get(token)
        if issued is None or issued[2] <= time.time():
            return None
        identity, bound, _ = issued
        if audiences and not set(audiences) & set(bound):
            return None
        return identity

    def watch(self, path: str, query: dict[str, str], send: Callable[[dict[str, Any]], bool]) -> None:
        """Stream events after ``resourceVersion`` until ``timeoutSeconds`` or the client leaves."""
        match = _CUSTOM.match(path) or _CORE.match(path)
        if match is None or match.group(3):
            raise ApiError(404, "NotFound", f"cannot watch {path}")
        namespace, resource = match.group(1), match.group(2)
        self.requests[f"WATCH {resource}"] += 1
        self._require_crd(resource)
        store = self.store

        def wanted(res: str, obj: dict[str, Any]) -> bool:
            return (
                res == resource
                and obj["metadata"].get("namespace") == namespace
                and label_selector_matches(query.get("labelSelector"), obj["metadata"].get("labels") or {})
                and _field_selector_matches(query.get("fieldSelector"), obj)
            )

        if query.get("resourceVersion"):
            since = int(query["resourceVersion"])
        else:  # no version: the current objects first, as synthetic ADDED events
            with store.changed:
                since = store.resource_version
                current = [obj for (res, _, _), obj in store.objects.items() if wanted(res, obj)]
            for obj in current:
                if not send({"type": "ADDED", "object": copy.deepcopy(obj)}):
                    return
        timeout = float(query.get("timeoutSeconds") or 1800)
        deadline = threading.Event()
        timer = threading.Timer(timeout, deadline.set)
        timer.daemon = True
        timer.start()
        try:
            while not deadline.is_set() and not self._stopping:
                with store.changed:
                    pending = [event for event in store.events if event[0] > since]
                    if not pending:
                        store.changed.wait(0.5)
                        continue
                since = pending[-1][0]
                for _, res, event_type, obj in pending:
                    if wanted(res, obj) and not send({"type": event_type, "object": obj}):
                        return
        finally:
            timer.cancel()

    def follow_log(self, path: str, send: Callable[[bytes], bool]) -> None:
        """``GET …/pods/NAME/log?follow=true``: the log as it grows, until the pod's phase is terminal
        (its container exited), the pod is deleted or the client leaves."""
        match = _CORE.match(path)
        if match is None or match.group(2) != "pods" or match.group(4) != "log":
            raise ApiError(404, "NotFound", f"cannot follow {path}")
        namespace, _, name, _ = match.groups()
        self.requests["FOLLOW pods/log"] += 1
        store, sent = self.store, 0
        while not self._stopping:
            try:
                phase = (store.get("pods", namespace, name).get("status") or {}).get("phase")
            except ApiError:
                return
            reader = store.pod_logs.get((namespace, name))
            data = (reader() if reader else "").encode()
            if len(data) > sent and not send(data[sent:]):
                return
            sent = max(sent, len(data))
            if phase in ("Succeeded", "Failed"):
                return
            time.sleep(0.1)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        emulator = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet: tests read the request counter instead."""

            def _respond(self, code: int, payload: Any, started: float) -> None:
                text = payload if isinstance(payload, str) else json.dumps(payload)
                data = text.encode()
                emulator.server_seconds += time.perf_counter() - started
                self.send_response(code)
                self.send_header("Content-Type", "text/plain" if isinstance(payload, str) else "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _chunk(self, data: bytes) -> bool:
                try:
                    self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                    self.wfile.flush()
                    return True
                except OSError:
                    return False

            def _serve(self, method: str) -> None:
                started = time.perf_counter()
                url = urlsplit(self.path)
                query = {key: values[-1] for key, values in parse_qs(url.query).items()}
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                try:
                    if method == "GET" and query.get("watch", "").lower() in ("true", "1"):
                        self.send_response(200)
                        self.send_header("Content-Type", "application/json")
                        self.send_header("Transfer-Encoding", "chunked")
                        self.end_headers()
                        emulator.watch(url.path, query, lambda event: self._chunk(json.dumps(event).encode() + b"\n"))
                        self._chunk(b"")
                        return
                    log = _CORE.match(url.path)
                    if (
                        method == "GET"
                        and log
                        and log.group(4) == "log"
                        and query.get("follow", "").lower() in ("true", "1")
                    ):
                        emulator.store.get("pods", log.group(1), log.group(3))  # a 404 before streaming
                        self.send_response(200)
                        self.send_header("Content-Type", "text/plain")
                        self.send_header("Transfer-Encoding", "chunked")
                        self.end_headers()
                        emulator.follow_log(url.path, self._chunk)
                        self._chunk(b"")
                        return
                    code, payload = emulator.handle(method, url.path, query, body)
                except ApiError as error:
                    code, payload = error.code, error.status()
                except (ValueError, KeyError, TypeError) as error:
                    code, payload = 400, ApiError(400, "BadRequest", f"bad request: {error}").status()
                self._respond(code, payload, started)

            def do_GET(self) -> None:
                self._serve("GET")

            def do_POST(self) -> None:
                self._serve("POST")

            def do_PUT(self) -> None:
                self._serve("PUT")

            def do_PATCH(self) -> None:
                self._serve("PATCH")

            def do_DELETE(self) -> None:
                self._serve("DELETE")

        return Handler
