"""The tip catalogue: for each of the article's ten tips, what breaking it means, as data.

One source for the alerts, recording rules, dashboards, runbooks and the doctor (SPEC: mechanism in
``collector/``, policy here). Modules:

- ``model``: the data types (``Tip``, ``Alert``, ``Check``, ``Signal``, ``Threshold``, ``Panel``,
  ``Runbook``, ``Evidence``) and the structured expressions (``Counter``, ``Gauge``, ``Quantile``,
  ``Binary``) that render PromQL and evaluate two scrapes locally.
- ``names``: metric names, read from ``collector.metrics``.
- ``tips``: the ten tips' content (``TIPS``) and the link settings (runbook base URL, dashboard uid).
- ``slo``: objectives per route and the multi-window, multi-burn-rate rules.
- ``rules``, ``runbooks``, ``yaml``: generators used by ``collector build``.

A generator reads ``TIPS`` (``tip.alerts``, ``tip.panels``, ``tip.checks``, ``tip.evidence``) and
``slo``; the helpers below walk them.
"""

from __future__ import annotations

from collector.catalogue.model import Alert, CatalogueError, Check, Panel, Tip
from collector.catalogue.tips import TIPS


def tip(number: int) -> Tip:
    for candidate in TIPS:
        if candidate.number == number:
            return candidate
    raise KeyError(number)


def alerts() -> tuple[tuple[Tip, Alert], ...]:
    return tuple((t, a) for t in TIPS for a in t.alerts)


def panels() -> tuple[tuple[Tip, Panel], ...]:
    return tuple((t, p) for t in TIPS for p in t.panels)


def checks() -> tuple[tuple[Tip, Check], ...]:
    return tuple((t, c) for t in TIPS for c in t.checks)


__all__ = ["TIPS", "Alert", "CatalogueError", "Check", "Panel", "Tip", "alerts", "checks", "panels", "tip"]
