"""Prometheus rule groups from the catalogue: tip recording rules, tip alerts, SLO rules.

Each function returns the rule-file document as data (``{"groups": [...]}``) so the plain files and
the Prometheus Operator's ``PrometheusRule`` carry exactly the same rules. ``window`` is the rate
window of the tip recording rules: the committed files use ``RULE_WINDOW``; a test that scrapes
every second may ask for a shorter one (the rules' names carry it, so the alerts follow).
"""

from __future__ import annotations

from collector.catalogue import slo
from collector.catalogue.model import Alert, CatalogueError, Signal, Tip
from collector.catalogue.tips import GRAFANA_URL, RULE_WINDOW, RUNBOOK_BASE_URL, TIPS, TIPS_DASHBOARD_UID

Document = dict[str, list[dict[str, object]]]


def recorded_signals(tips: tuple[Tip, ...] = TIPS, window: str = RULE_WINDOW) -> tuple[Signal, ...]:
    """Every signal the tip alerts read, once; two different expressions under one name is an error."""
    seen: dict[str, Signal] = {}
    for tip in tips:
        for check in tip.checks:
            for signal in check.signals():
                name = signal.record(window)
                if name in seen and seen[name].expr != signal.expr:
                    raise CatalogueError(f"recording rule {name} is defined twice with different expressions")
                seen.setdefault(name, signal)
    return tuple(seen.values())


def runbook_url(slug: str) -> str:
    return f"{RUNBOOK_BASE_URL}{slug}.md"


def dashboard_url(alert: Alert) -> str:
    return f"{GRAFANA_URL}/d/{TIPS_DASHBOARD_UID}?viewPanel={alert.panel.id}"


def alert_rule(tip: Tip, alert: Alert, window: str = RULE_WINDOW) -> dict[str, object]:
    return {
        "alert": alert.name,
        "expr": alert.check.rule_expr(window),
        "for": alert.for_,
        "labels": {"severity": alert.severity, "tip": str(tip.number)},
        "annotations": {
            "summary": alert.summary,
            "description": alert.description,
            "runbook_url": runbook_url(alert.runbook.slug),
            "dashboard_url": dashboard_url(alert),
        },
    }


def recording_document(window: str = RULE_WINDOW) -> Document:
    tip_rules = [
        {"record": s.record(window), "expr": s.expr.promql(window)} for s in recorded_signals(window=window)
    ]
    return {
        "groups": [
            {"name": "fastapi-collector.tips.recording", "rules": tip_rules},
            {"name": "fastapi-collector.slo.recording", "rules": slo.recording_rules()},
        ]
    }


def tips_document(window: str = RULE_WINDOW) -> Document:
    return {
        "groups": [
            {
                "name": "fastapi-collector.tips",
                "rules": [alert_rule(tip, alert, window) for tip in TIPS for alert in tip.alerts],
            }
        ]
    }


def slo_document() -> Document:
    return {"groups": [{"name": "fastapi-collector.slo", "rules": slo.alert_rules()}]}


# Output path (relative to the repository) -> document.
def documents(window: str = RULE_WINDOW) -> dict[str, Document]:
    return {
        "prometheus/rules/recording.yml": recording_document(window),
        "prometheus/rules/tips.yml": tips_document(window),
        "prometheus/rules/slo.yml": slo_document(),
    }
