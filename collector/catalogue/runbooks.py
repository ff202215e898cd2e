"""Runbook pages from the catalogue: one per alert (tip alerts and SLO alerts) and an index."""

from __future__ import annotations

from collector.catalogue import slo
from collector.catalogue.model import Alert, Threshold, Tip
from collector.catalogue.rules import dashboard_url
from collector.catalogue.tips import RULE_WINDOW, TIPS

FOLDER = "docs/runbooks"


def _code(text: str) -> str:
    return f"```python\n{text}\n```"


def _threshold(threshold: Threshold, role: str) -> str:
    warn = (
        f" (the doctor warns from {threshold.format(threshold.warn)})" if threshold.warn is not None else ""
    )
    line = f"- {role} `{threshold.name}` = **{threshold.format()}**{warn}: {threshold.description}"
    return f"{line} Why this number: {threshold.reason}" if threshold.reason else line


def tip_page(tip: Tip, alert: Alert) -> str:
    book, check = alert.runbook, alert.check
    threshold = check.threshold
    guard = (
        f" It judges only series where *{check.guard.signal.description.rstrip('.')}* is at least "
        f"{check.guard.minimum.format()} (`{check.guard.minimum.name}`)."
        if check.guard
        else ""
    )
    if check.floor:
        guard += (
            f" A series breaks the tip only where *{check.floor.signal.description.rstrip('.')}* is also at "
            f"least {check.floor.minimum.format()} (`{check.floor.minimum.name}`)."
        )
    lines = [
        f"# {alert.name}",
        "",
        f"Tip {tip.number}: **{tip.title}**. {tip.advice}",
        "",
        f"Severity `{alert.severity}`, after `{alert.for_}`. {alert.summary}",
        "",
        "## What it means",
        "",
        book.meaning,
        "",
        f"It fires when *{check.signal.description.rstrip('.')}* is {check.comparator} "
        f"**{threshold.format()}** (`{threshold.name}`: {threshold.description}) for `{alert.for_}`.{guard}",
        "",
        "```promql",
        check.promql(RULE_WINDOW),
        "```",
        "",
        "## Thresholds",
        "",
        "Set in `collector/catalogue/tips.py`; the alert, the doctor and this page read the same numbers.",
        "",
        _threshold(threshold, "Threshold"),
        *([_threshold(check.guard.minimum, "Traffic guard")] if check.guard else []),
        *([_threshold(check.floor.minimum, "Floor")] if check.floor else []),
        "",
        "## Confirm it on the dashboard",
        "",
        f"{book.confirm} Panel: [{alert.panel.title}]({dashboard_url(alert)}).",
        "",
        "## Usual causes",
        "",
        *(f"- {cause}" for cause in book.causes),
        "",
        "## Fix",
        "",
        f"{book.fix} The tip in one line: {tip.fix}",
        "",
        "Before:",
        "",
        _code(book.before),
        "",
        "After:",
        "",
        _code(book.after),
        "",
        "## Verify",
        "",
        book.verify,
        "",
    ]
    if tip.needs:
        lines += ["## Needs", "", f"The signal is measured only with {tip.needs}.", ""]
    return "\n".join(lines)


def slo_page(name: str, what: str) -> str:
    rows = [
        f"| {b.long} and {b.short} | {b.factor:g}x | `{b.severity}` | `{b.for_}` |" for b in slo.BURN_WINDOWS
    ]
    objective = slo.DEFAULT_OBJECTIVE
    overrides = [
        f"- `{route}`: {o.latency_target * 100:g} % under {o.latency_threshold:g} s, "
        f"{o.availability_target * 100:g} % without 5xx"
        for route, o in slo.ROUTE_OBJECTIVES.items()
    ] or ["- none"]
    return "\n".join(
        [
            f"# {name}",
            "",
            f"A symptom alert: a route burns its {what} budget faster than its {slo.PERIOD} "
            f"objective allows.",
            "",
            "## What it means",
            "",
            f"Objectives: {objective.latency_target * 100:g} % of requests under "
            f"{objective.latency_threshold:g} s and {objective.availability_target * 100:g} % answered "
            "without a 5xx, for every route unless set per route (in `collector/catalogue/slo.py`):",
            "",
            *overrides,
            "",
            "Each rule fires only when both windows burn faster than the factor:",
            "",
            "| windows | burn rate | severity | for |",
            "|---|---|---|---|",
            *rows,
            "",
            "## Confirm it on the dashboard",
            "",
            "SLO dashboard: the route's burn rate over the long and short windows, and its error or "
            "slow ratio.",
            "",
            "## Usual causes",
            "",
            "The causes are the tips. The paging alert's description lists the tip alerts firing beside it; "
            "open their runbooks first:",
            "",
            *(
                f"- [{a.name}]({a.runbook.slug}.md): tip {t.number}, {a.summary}"
                for t in TIPS
                for a in t.alerts
            ),
            "",
            "## Fix",
            "",
            "Fix the cause the tip alert names; when none fires, read the slowest route's profiles (tip 10) "
            "and the trace exemplars on the latency panel.",
            "",
            "## Verify",
            "",
            "The short-window burn rate falls under the factor within minutes; the long window follows.",
            "",
        ]
    )


def index() -> str:
    lines = [
        "# Runbooks",
        "",
        "One page per alert, generated by `collector build` from the tip catalogue.",
        "",
    ]
    lines += [
        f"- [{slo.ERROR_ALERT}]({slo.ERROR_RUNBOOK}.md)",
        f"- [{slo.LATENCY_ALERT}]({slo.LATENCY_RUNBOOK}.md)",
    ]
    lines += [f"- [{a.name}]({a.runbook.slug}.md): tip {t.number}, {t.title}" for t in TIPS for a in t.alerts]
    return "\n".join(lines) + "\n"


def pages() -> dict[str, str]:
    """Output path (relative to the repository) -> Markdown."""
    out = {f"{FOLDER}/README.md": index()}
    out[f"{FOLDER}/{slo.ERROR_RUNBOOK}.md"] = slo_page(slo.ERROR_ALERT, "errors (5xx)")
    out[f"{FOLDER}/{slo.LATENCY_RUNBOOK}.md"] = slo_page(slo.LATENCY_ALERT, "slow requests")
    for tip in TIPS:
        for alert in tip.alerts:
            out[f"{FOLDER}/{alert.runbook.slug}.md"] = tip_page(tip, alert)
    return out
