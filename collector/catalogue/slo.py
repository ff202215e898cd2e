"""Service-level objectives per route and the multi-window, multi-burn-rate alerts on them.

The method of the SRE workbook's alerting chapter, as Sloth and Pyrra generate it: recording rules of
the error ratio (5xx) and the slow ratio (requests above the latency threshold) per route over each
window, then one alert per window pair that fires only when both windows burn the 30-day budget
faster than the factor. The paging pairs carry severity ``critical``; their description lists the
tip alerts firing beside them, which are the causes.

Objectives are set here: ``DEFAULT_OBJECTIVE`` for every route, ``ROUTE_OBJECTIVES`` per route
template. A latency threshold must be a bucket boundary of the request-latency histogram
(``collector.metrics.LATENCY_BUCKETS``, settable with COLLECTOR_LATENCY_BUCKETS): between two
boundaries the ratio can only be estimated, so ``check_objectives`` refuses it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from collector.catalogue import names as n
from collector.catalogue.model import (
    COMMON_BY,
    Binary,
    CatalogueError,
    Counter,
    Expr,
    Matcher,
    Panel,
    Quantile,
    Signal,
    ratio,
    selector,
)
from collector.catalogue.tips import ALERT_PREFIX, RUNBOOK_BASE_URL


@dataclass(frozen=True)
class Objective:
    latency_target: float = 0.99  # share of requests faster than latency_threshold
    latency_threshold: float = 0.5  # seconds; a bucket boundary
    availability_target: float = 0.999  # share of requests not answered 5xx


@dataclass(frozen=True)
class BurnWindow:
    long: str
    short: str
    factor: float
    severity: str
    for_: str


# Budget period the factors are computed for (14.4x for 1 h spends 2 % of 30 days).
PERIOD = "30d"
BURN_WINDOWS: tuple[BurnWindow, ...] = (
    BurnWindow("1h", "5m", 14.4, "critical", "2m"),
    BurnWindow("6h", "30m", 6.0, "critical", "15m"),
    BurnWindow("1d", "2h", 3.0, "ticket", "1h"),
    BurnWindow("3d", "6h", 1.0, "ticket", "3h"),
)
DEFAULT_OBJECTIVE = Objective()
# Per route template: e.g. {"/reports/{report_id}": Objective(latency_threshold=2.5)}.
ROUTE_OBJECTIVES: Mapping[str, Objective] = {}

ERROR_RECORD = "fastapi_requests_errors"
SLOW_RECORD = "fastapi_requests_slow"
LEVEL = "_".join((*COMMON_BY, "route"))
BY = ", ".join((*COMMON_BY, "route"))
ERROR_ALERT = f"{ALERT_PREFIX}ErrorBudgetBurn"
LATENCY_ALERT = f"{ALERT_PREFIX}LatencyBudgetBurn"
ERROR_RUNBOOK = "slo-error-budget-burn"
LATENCY_RUNBOOK = "slo-latency-budget-burn"

# Prometheus template listing the tip alerts firing for the same job: the likely causes.
TIP_ALERTS_BESIDE = (
    'Tip alerts firing beside it:{{ range printf "ALERTS{alertstate=\\"firing\\",tip!=\\"\\",job=%q}" '
    "$labels.job | query }} {{ .Labels.alertname }}{{ with .Labels.route }} ({{ . }}){{ end }}"
    "{{ else }} none{{ end }}."
)


def windows() -> tuple[str, ...]:
    """Every window a ratio is recorded over, shortest first."""
    seen = {w for b in BURN_WINDOWS for w in (b.long, b.short)}
    units = {"m": 60, "h": 3600, "d": 86400}
    return tuple(sorted(seen, key=lambda w: int(w[:-1]) * units[w[-1]]))


def check_objectives(buckets: tuple[float, ...]) -> None:
    """Refuse, in one line, a latency threshold that is not a bucket boundary."""
    for scope, objective in (("every route", DEFAULT_OBJECTIVE), *ROUTE_OBJECTIVES.items()):
        if not any(math.isclose(objective.latency_threshold, b) for b in buckets):
            raise CatalogueError(
                f"latency objective for {scope}: {objective.latency_threshold:g} s is not a bucket boundary "
                f"of {n.REQUESTS} ({', '.join(f'{b:g}' for b in buckets)}); "
                "pick one of them or add it to COLLECTOR_LATENCY_BUCKETS"
            )
        for target in (objective.latency_target, objective.availability_target):
            if not 0 < target < 1:
                raise CatalogueError(f"objective for {scope}: target {target:g} is not between 0 and 1")


@dataclass(frozen=True)
class RouteGroup:
    """The routes sharing one objective, selected by a matcher on ``route``."""

    objective: Objective
    match: tuple[Matcher, ...]
    scope: str


def groups() -> tuple[RouteGroup, ...]:
    overrides = tuple(ROUTE_OBJECTIVES)
    default_match: tuple[Matcher, ...] = (
        (("route", "!~", "|".join(re.escape(r) for r in overrides)),) if overrides else ()
    )
    return (
        RouteGroup(DEFAULT_OBJECTIVE, default_match, "every route"),
        *(RouteGroup(o, (("route", "=", r),), r) for r, o in ROUTE_OBJECTIVES.items()),
    )


def error_ratio(group: RouteGroup) -> Expr:
    """Share of requests answered 5xx, per route (no series while a route has no 5xx)."""
    requests = Counter(n.REQUESTS, "_count", group.match, ("route",))
    return ratio(Counter(n.REQUESTS, "_count", (*group.match, ("status", "=~", "5..")), ("route",)), requests)


def slow_ratio(group: RouteGroup) -> Expr:
    """Share of requests slower than the latency threshold, per route: exact at a bucket boundary."""
    requests = Counter(n.REQUESTS, "_count", group.match, ("route",))
    le = repr(float(group.objective.latency_threshold))  # as client_python writes le: 0.5, 1.0
    fast = Counter(n.REQUESTS, "_bucket", (*group.match, ("le", "=", le)), ("route",))
    return ratio(Binary("-", requests, fast), requests)


def record_name(kind: str, window: str) -> str:
    return f"{LEVEL}:{kind}:ratio_rate{window}"


def recording_rules() -> list[dict[str, str]]:
    rules = []
    for group in groups():
        for window in windows():
            rules.append(
                {"record": record_name(ERROR_RECORD, window), "expr": error_ratio(group).promql(window)}
            )
            rules.append(
                {"record": record_name(SLOW_RECORD, window), "expr": slow_ratio(group).promql(window)}
            )
    return rules


def _burn_expr(kind: str, budget: float, group: RouteGroup, burn: BurnWindow) -> str:
    parts = []
    for window in (burn.long, burn.short):
        series = selector(record_name(kind, window), group.match, ())
        parts.append(f"{series} / {budget:g} > {burn.factor:g}")
    return f"{parts[0]}\nand on ({BY})\n{parts[1]}"


def alert_rules() -> list[dict[str, object]]:
    rules: list[dict[str, object]] = []
    for name, kind, runbook, what in (
        (ERROR_ALERT, ERROR_RECORD, ERROR_RUNBOOK, "errors (5xx)"),
        (LATENCY_ALERT, SLOW_RECORD, LATENCY_RUNBOOK, "slow requests"),
    ):
        for group in groups():
            objective = group.objective
            if kind == ERROR_RECORD:
                target, detail = objective.availability_target, "answered without a 5xx"
            else:
                target = objective.latency_target
                detail = f"faster than {objective.latency_threshold:g} s"
            budget = 1 - target
            for burn in BURN_WINDOWS:
                description = (
                    f"{{{{ $labels.route }}}} of {{{{ $labels.job }}}} burns its {what} budget "
                    f"{{{{ $value | humanize }}}}x as fast as a {PERIOD} objective of "
                    f"{target * 100:g} % {detail} allows, over {burn.long} and {burn.short}."
                )
                if burn.severity == "critical":
                    description += " " + TIP_ALERTS_BESIDE
                rules.append(
                    {
                        "alert": name,
                        "expr": _burn_expr(kind, budget, group, burn),
                        "for": burn.for_,
                        "labels": {
                            "severity": burn.severity,
                            "slo": "availability" if kind == ERROR_RECORD else "latency",
                            "long_window": burn.long,
                            "short_window": burn.short,
                        },
                        "annotations": {
                            "summary": f"A route burns its {what} budget too fast.",
                            "description": description,
                            "runbook_url": f"{RUNBOOK_BASE_URL}{runbook}.md",
                        },
                    }
                )
    return rules


# The SLO dashboard's panels; the burn rates themselves are the recorded series above.
SLO_DASHBOARD_UID = "fastapi-slo"
ERROR_RATIO = Signal(ERROR_RECORD, error_ratio(groups()[0]), "percentunit", "Share of requests answered 5xx.")
SLOW_RATIO = Signal(
    SLOW_RECORD,
    slow_ratio(groups()[0]),
    "percentunit",
    f"Share of requests slower than {DEFAULT_OBJECTIVE.latency_threshold:g} s, on the default objective.",
)
INCOMPLETE = Signal(
    "fastapi_responses_incomplete",
    Counter(n.RESPONSES_INCOMPLETE, by=("route", "reason")),
    "reqps",
    "Responses that failed after they started or that the client abandoned, per second.",
)
EXCLUDED = Signal(
    "fastapi_requests_excluded",
    Counter(n.REQUESTS_EXCLUDED, by=("path",)),
    "reqps",
    "Requests left out of the request metrics (health and readiness probes), per second.",
)
LATENCY = Signal(
    "fastapi_request_duration_seconds",
    Quantile(0.99, n.REQUESTS, by=("route",)),
    "s",
    "99th percentile of request latency per route.",
)
PANELS: tuple[Panel, ...] = (
    Panel(1, "Error ratio per route", (ERROR_RATIO,), "Requests answered 5xx over all requests."),
    Panel(2, "Slow ratio per route", (SLOW_RATIO,), "Requests above the latency objective's threshold."),
    Panel(3, "Latency p99 per route", (LATENCY,), "Exemplars link to traces."),
    Panel(4, "Incomplete responses", (INCOMPLETE,), "Failed after the status line, or abandoned."),
    Panel(5, "Requests left out of the metrics", (EXCLUDED,), "Probes: counted apart so a storm shows."),
)
