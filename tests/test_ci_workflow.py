"""The GitHub Actions workflow of the real-KubeRay suite, validated offline against GitHub's workflow schema."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).parents[1]
WORKFLOW = REPO / ".github" / "workflows" / "kuberay-real.yml"


def test_the_real_kuberay_workflow_is_a_valid_github_workflow():
    """check-jsonschema's vendored copy of GitHub's workflow schema: no network."""
    checker = Path(sys.executable).parent / "check-jsonschema"
    done = subprocess.run(
        [str(checker), "--builtin-schema", "vendor.github-workflows", str(WORKFLOW)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_workflow_runs_the_documented_script_over_kuberay_and_ray_versions():
    workflow = yaml.safe_load(WORKFLOW.read_text())
    (job,) = workflow["jobs"].values()
    matrix = job["strategy"]["matrix"]["include"]
    assert len({entry["kuberay"] for entry in matrix}) >= 2 and len({entry["ray"] for entry in matrix}) >= 2
    assert any("bash scripts/kind-kuberay.sh" in step.get("run", "") for step in job["steps"])
    assert (REPO / "scripts" / "kind-kuberay.sh").exists()
