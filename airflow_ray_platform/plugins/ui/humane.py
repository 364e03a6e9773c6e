"""Numbers as an operator reads them: durations, sizes and a cluster's resources, never raw floats.

The Ray view's templates use these as filters, and its running-now list sends them already formatted,
so that the page and its refresh show the same text.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

NOTHING = "-"
_BYTE_UNITS = (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024))
_EXIT_CODE = re.compile(r"exit code (-?\d+)")
#: How much of a failure's reason a list shows (the whole of it is a hover, and on the job's page).
REASON_CHARACTERS = 120


def duration(seconds: float | None) -> str:
    """``42 s``, ``3 min 05 s``, ``2 h 07 min``, ``3 d 04 h``."""
    if seconds is None:
        return NOTHING
    whole = max(0, round(seconds))
    if whole < 60:
        return f"{whole} s"
    if whole < 3600:
        return f"{whole // 60} min {whole % 60:02d} s"
    if whole < 86400:
        return f"{whole // 3600} h {whole % 3600 // 60:02d} min"
    return f"{whole // 86400} d {whole % 86400 // 3600:02d} h"


def size(value: float | None) -> str:
    """Bytes in the largest binary unit that keeps the number at 1 or more: ``1.5 GiB``, ``200 MiB``."""
    if value is None:
        return NOTHING
    for unit, scale in _BYTE_UNITS:
        if value >= scale:
            shown = value / scale
            return f"{shown:.1f} {unit}" if shown < 10 else f"{shown:.0f} {unit}"
    return f"{value:.0f} B"


def count(value: float, one: str, many: str) -> str:
    return f"{value:g} {one if value == 1 else many}"


def resources(requested: Mapping[str, Any] | None) -> str:
    """A cluster's resources in words: ``2 cores · 2.0 GiB memory · 200 MiB object store`` (GPUs and
    custom resources only when there are any)."""
    if not requested:
        return NOTHING
    values = {key: float(value) for key, value in requested.items() if value is not None}
    parts = [count(values.pop("CPU", 0.0), "core", "cores")]
    if "memory" in values:
        parts.append(f"{size(values.pop('memory'))} memory")
    if "object_store_memory" in values:
        parts.append(f"{size(values.pop('object_store_memory'))} object store")
    gpus = values.pop("GPU", 0.0)
    if gpus:
        parts.append(count(gpus, "GPU", "GPUs"))
    parts += [f"{name} {value:g}" for name, value in sorted(values.items()) if value]
    return " · ".join(parts)


def reason(message: str | None) -> str:
    """A failed job's reason in one line: Ray's message ends with the driver's last output (the
    traceback's last line, the ``sys.exit`` text), which says why; its first line says how (an exit
    code). ``exit code 1: zone 17: no demand data``."""
    lines = [line.strip() for line in (message or "").splitlines() if line.strip()]
    if not lines:
        return NOTHING
    code = _EXIT_CODE.search(lines[0])
    said = lines[-1] if len(lines) > 1 else lines[0]
    text = f"exit code {code.group(1)}: {said}" if code and len(lines) > 1 else said
    return text if len(text) <= REASON_CHARACTERS else text[: REASON_CHARACTERS - 2] + " …"


def money(value: float | None) -> str:
    """A cost estimate: cents where it is worth them, more digits where it is small."""
    if value is None:
        return NOTHING
    return f"{value:,.2f}" if value >= 1 else f"{value:.4f}"
