"""The platform's clock and its one text form of a moment.

Records, registry files and KubeRay annotations all carry moments as ISO-8601 text in UTC with
microseconds: the compare-and-delete of garbage collection compares them, so they must never lose
precision or mix zones. (Label values cannot hold ``:``; their compact form lives in :mod:`.naming`.)
"""

from __future__ import annotations

from datetime import UTC, datetime


def utc_now() -> datetime:
    return datetime.now(UTC)


def to_text(moment: datetime | None = None) -> str:
    """``moment`` (default: now) as ISO-8601 UTC text, e.g. ``2026-01-02T03:04:05.123456+00:00``."""
    return (moment or utc_now()).astimezone(UTC).isoformat()


def parse(text: str | None) -> datetime | None:
    """The moment in ``text`` (ISO-8601, ``Z`` allowed, as Kubernetes writes it); None for no text."""
    return datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None
