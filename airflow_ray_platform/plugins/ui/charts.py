"""The usage page's charts as Vega-Lite specs, built from the aggregates (``record_queries``); the page
draws them with the vendored vega-embed, as SVG."""

from __future__ import annotations

from typing import Any

SCHEMA = "https://vega.github.io/schema/vega-lite/v5.json"  # an identifier in the spec, never fetched


def _spec(title: str, values: list[dict[str, Any]], mark: dict[str, Any], encoding: dict[str, Any]) -> dict:
    return {
        "$schema": SCHEMA,
        "title": title,
        "width": "container",
        "height": 220,
        "data": {"values": values},
        "mark": {"tooltip": True, **mark},
        "encoding": encoding,
    }


def usage_charts(usage: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """CPU-hours and cost per team per day, success rate per team, cluster wait p50/p95 per team."""
    days = [{**row, "team": row["team"] or "(none)"} for row in usage["days"]]
    teams = [{**row, "team": row["team"] or "(none)"} for row in usage["teams"]]
    waits = [
        {"team": row["team"], "quantile": name, "seconds": row[key]}
        for row in teams
        for name, key in (("p50", "cluster_wait_p50_s"), ("p95", "cluster_wait_p95_s"))
        if row[key] is not None
    ]
    day = {"field": "day", "type": "temporal", "timeUnit": "utcyearmonthdate", "title": "day (UTC)"}
    team = {"field": "team", "type": "nominal", "title": "team"}
    return {
        "cpu_hours": _spec(
            "CPU-hours per team per day",
            days,
            {"type": "bar"},
            {"x": day, "y": {"field": "cpu_hours", "type": "quantitative", "title": "CPU-hours"}, "color": team},
        ),
        "cost": _spec(
            "Estimated cost per team per day",
            days,
            {"type": "line", "point": True},
            {"x": day, "y": {"field": "cost_estimate", "type": "quantitative", "title": "cost"}, "color": team},
        ),
        "success_rate": _spec(
            "Job success rate per team",
            teams,
            {"type": "bar"},
            {
                "x": team,
                "y": {"field": "success_rate", "type": "quantitative", "title": "success", "axis": {"format": "%"}},
                "color": team,
            },
        ),
        "cluster_wait": _spec(
            "Cluster wait (requested -> ready), p50 and p95",
            waits,
            {"type": "bar"},
            {
                "x": team,
                "xOffset": {"field": "quantile"},
                "y": {"field": "seconds", "type": "quantitative", "title": "seconds"},
                "color": {"field": "quantile", "type": "nominal"},
            },
        ),
    }
