"""Strict validation of rendered manifests against KubeRay's own CRD schemas.

Kubernetes silently prunes fields a CRD does not know; ``kubectl apply --validate=strict`` rejects them.
This module does the latter, offline: each object schema of the CRD's ``openAPIV3Schema`` that lists
its properties (and does not preserve unknown fields) gets ``additionalProperties: false``, so a
misspelt field is an error that names its path. The CRDs are KubeRay v1.7.0's, vendored unchanged in
``crds/`` beside their license.
"""

from __future__ import annotations

import copy
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

CRDS = Path(__file__).parent / "crds"
CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml"}


class ManifestValidationError(ValueError):
    """A manifest breaks its CRD's schema; the message lists every offending path."""


def _strict(node: Any) -> Any:
    if isinstance(node, dict):
        node = {key: _strict(value) for key, value in node.items()}
        if (
            "properties" in node
            and "additionalProperties" not in node
            and not node.get("x-kubernetes-preserve-unknown-fields")
        ):
            node["additionalProperties"] = False
        return node
    if isinstance(node, list):
        return [_strict(item) for item in node]
    return node


@cache
def _validator(kind: str, crd_dir: Path = CRDS, strict: bool = True) -> jsonschema.Draft7Validator:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    crd = yaml.load((crd_dir / CRD_FILES[kind]).read_text(), Loader=loader)
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema = copy.deepcopy(version["schema"]["openAPIV3Schema"])
    if strict:
        schema = _strict(schema)
    return jsonschema.Draft7Validator(schema)


def validate_manifest(manifest: dict[str, Any], crd_dir: Path = CRDS, strict: bool = True) -> None:
    """Raise :class:`ManifestValidationError` unless ``manifest`` passes its kind's CRD schema.

    ``strict`` (the default) also rejects unknown fields; without it, only what the API server
    itself rejects after pruning (types, enums, required fields).
    """
    kind = manifest.get("kind")
    if kind not in CRD_FILES or manifest.get("apiVersion") != "ray.io/v1":
        raise ManifestValidationError(f"not a ray.io/v1 RayCluster or RayJob: {manifest.get('apiVersion')}/{kind}")
    errors = sorted(_validator(kind, crd_dir, strict).iter_errors(manifest), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"  {'.'.join(str(p) for p in error.absolute_path) or kind}: {error.message}" for error in errors]
        raise ManifestValidationError(
            f"{kind} {manifest['metadata'].get('name')!r} fails the CRD schema:\n" + "\n".join(lines)
        )
