"""Grafana dashboards as code: built from the tip catalogue, validated, written by ``collector build``.

- ``build``: the dashboards, made with ``grafana-foundation-sdk`` (the ``build`` extra, imported only
  here): the "Ten tips" overview (one row per tip: alert state, key signal with its threshold, the
  tip's other panels; an alert list), the SLO view, and drill-downs for a route, the database, and the
  event loop with the thread pool. Panel ids are the catalogue's, so alerts' ``viewPanel`` links work.
- ``validate``: checks dashboards as data (uids, refIds, datasources, units, descriptions, rate
  windows) and parses every expression with ``promtool``; each problem names the dashboard, the panel
  and the reason.

The uids and names below are shared with ``grafana/provisioning`` (checked by the tests) and with
``collector grafana push``, which checks that the Prometheus datasource exists where it uploads.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from collector.catalogue.model import CatalogueError

PROMETHEUS_UID = "fastapi-prometheus"
PROMETHEUS_NAME = "Prometheus"  # the alert list panel filters by datasource name
TRACES_UID = "fastapi-tempo"
# Exemplars carry the trace id under this label; the datasource's exemplar destination has this name.
EXEMPLAR_LABEL = "trace_id"
FOLDER = "fastapi-collector"  # dashboards/<FOLDER>/: the Grafana folder, from the file structure
DIRECTORY = f"dashboards/{FOLDER}"
# Oldest Grafana the JSON is written for (schemaVersion 36, datasource refs by uid, unified alert list).
MIN_GRAFANA = (10, 0)

Dashboard = dict[str, Any]


def dashboards() -> list[Dashboard]:
    """Every dashboard as Grafana JSON (a dict), in a stable order."""
    try:
        from collector._dashboards import build
    except ImportError as exc:
        raise CatalogueError(
            f"building dashboards needs grafana-foundation-sdk ({exc.name} missing): "
            "pip install 'fastapi-collector[build]'"
        ) from None
    return build.dashboards()


def render(dashboard: Dashboard) -> str:
    return json.dumps(dashboard, indent=2, ensure_ascii=False) + "\n"


def path(dashboard: Dashboard) -> str:
    return f"{DIRECTORY}/{dashboard['uid']}.json"


def files() -> dict[str, str]:
    """``collector build``'s generator: the dashboards, validated, by path."""
    from collector._dashboards import validate

    built = dashboards()
    validate.check(built)
    return {path(d): render(d) for d in built}


def load(folder: Path) -> list[Dashboard]:
    """The dashboards in ``folder`` (``DIRECTORY`` of a repository), by file name."""
    try:
        if not folder.is_dir():
            raise FileNotFoundError(f"no such folder {folder}")
        names = sorted(folder.glob("*.json"))
        return [json.loads(p.read_text(encoding="utf-8")) for p in names]
    except (OSError, ValueError) as exc:
        raise CatalogueError(f"cannot read dashboards in {folder}: {exc}") from None
