"""The documentation as users read it: the README's DAG runs, and every relative link resolves."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).parents[1]
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def _markdown_files() -> list[Path]:
    skip = {".venv", ".git", "node_modules"}
    return sorted(p for p in REPO.rglob("*.md") if not skip & set(p.relative_to(REPO).parts))


def _anchors(path: Path) -> set[str]:
    """GitHub's anchors of a Markdown file's headings."""
    anchors = set()
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            text = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", text).replace(" ", "-"))
    return anchors


@pytest.mark.parametrize("path", _markdown_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_resolves(path):
    broken = []
    for target in LINK.findall(path.read_text()):
        if re.match(r"^[a-z]+:", target):  # https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists() or (anchor and linked.suffix == ".md" and anchor not in _anchors(linked)):
            broken.append(target)
    assert broken == [], f"{path.relative_to(REPO)}: links to nothing: {broken}"


@pytest.mark.usefixtures("airflow_db", "shared_cluster")
def test_the_readmes_dag_runs_as_written(local_backend, capfd):
    """Executed exactly as the README prints it: the Ray step gets a cluster of its own, its value reaches
    the next task, and the cluster is gone afterwards."""
    from airflow.utils.state import DagRunState

    from .test_dags.readme_dag import dag

    before = {cluster.name for cluster in local_backend.list_clusters()}
    run = dag.test()
    assert run.state == DagRunState.SUCCESS
    assert run.get_task_instance("train").xcom_pull(task_ids="train") == {
        "north": 5.0,
        "south": 5.0,
        "east": 4.0,
        "west": 4.0,
    }
    assert "best zone: north" in capfd.readouterr().out
    assert {cluster.name for cluster in local_backend.list_clusters()} == before
