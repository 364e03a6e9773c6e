"""The ``job_configuration`` reference, generated from the models' own field descriptions.

``python -m airflow_ray_platform.spec.reference`` prints the table that ``docs/job-configuration.md``
holds; a test keeps the two equal, so the reference never drifts from the code.
"""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

from pydantic import BaseModel

from airflow_ray_platform.spec.models import JobConfiguration


def _nested(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """(model, is a list of it) for a field whose type holds a model; (None, False) otherwise."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    for argument in getattr(annotation, "__args__", ()):
        model, _ = _nested(argument)
        if model is not None:
            return model, getattr(annotation, "__origin__", None) is list
    return None, False


def _default_text(field: Any) -> str:
    if field.is_required():
        return "required"
    value = field.default_factory() if field.default_factory is not None else field.default
    if value is None or isinstance(value, BaseModel) or value in ({}, []):
        return ""
    if isinstance(value, timedelta):
        return f"{value.total_seconds():g} s"
    return json.dumps(value)


def reference_rows(model: type[BaseModel] | None = None, prefix: str = "") -> list[tuple[str, str, str]]:
    """(field path, default, description) of every ``job_configuration`` field, nested ones included."""
    rows = []
    for name, field in (model or JobConfiguration).model_fields.items():
        path = f"{prefix}{name}"
        rows.append((path, _default_text(field), field.description or ""))
        nested, is_list = _nested(field.annotation)
        if nested is not None:
            rows.extend(reference_rows(nested, f"{path}{'[]' if is_list else ''}."))
    return rows


def reference_markdown() -> str:
    """The README's ``job_configuration`` reference table, generated from the model (a test keeps them equal)."""
    lines = ["| field | default | meaning |", "| --- | --- | --- |"]
    for path, default, text in reference_rows():
        shown = f"`{default}`" if default and default != "required" else default
        lines.append(f"| `{path}` | {shown} | {text} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(reference_markdown())
