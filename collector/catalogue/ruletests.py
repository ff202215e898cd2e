"""``promtool test rules`` files from the catalogue: ``prometheus/tests/*.yml``.

- ``tips.yml``: for every tip alert, a case where it fires (its exact labels and rendered
  annotations, and nothing before its ``for`` has passed), a case at the threshold where it stays
  silent (the comparison is strict), a case under the traffic guard and, for an ``unless``, a case
  where that signal silences it. Inputs are the recorded series the alert reads.
- ``slo.yml``: for every burn-rate rule, a case where both windows burn faster than the factor (it
  fires) and one case per window burning alone (it stays silent).
- ``recording.yml``: every recording rule the alerts read, from raw series of every declared metric,
  checked with ``promql_expr_test`` against the catalogue's own evaluator (``Expr.evaluate``).

Annotations are rendered here the way Prometheus' template functions do it (``humanize``,
``humanize1024``, ``humanizePercentage``, ``humanizeDuration``), for the forms the catalogue uses; an
unknown form is a ``CatalogueError``, and promtool checks every rendering against its own.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable, Mapping, Sequence

from prometheus_client.metrics import MetricWrapperBase

from collector import metrics
from collector.catalogue import slo
from collector.catalogue.model import Alert, CatalogueError, Expr, Labels, Tip
from collector.catalogue.rules import Document, alert_rule, recorded_signals
from collector.catalogue.tips import RULE_WINDOW, SCRAPE_JOB, TIPS

FOLDER = "prometheus/tests"
INTERVAL_MINUTES = 1
# The label values every generated series carries, by label name.
LABEL_VALUES: Mapping[str, str] = {
    "job": SCRAPE_JOB,
    "instance": "10.0.0.7:8000",
    "route": "/orders/{order_id}",
    "pool": "main",
    "cache": "shop",
    "mount": "/static",
}
_UNITS = {"s": 1 / 60, "m": 1, "h": 60, "d": 1440}


def minutes(duration: str) -> float:
    match = re.fullmatch(r"(\d+)([smhd])", duration)
    if match is None:
        raise CatalogueError(f"duration {duration!r} is not a number and one of s, m, h, d")
    return int(match.group(1)) * _UNITS[match.group(2)]


def _g(value: float) -> str:
    """Go's ``%.4g``, which Python's matches."""
    return f"{value:.4g}"


def _scaled(value: float, up: tuple[str, ...], down: tuple[str, ...]) -> tuple[float, str]:
    prefix = ""
    if abs(value) >= 1:
        for p in up:
            if abs(value) < 1000:
                break
            prefix, value = p, value / 1000
    else:
        for p in down:
            if abs(value) >= 1:
                break
            prefix, value = p, value * 1000
    return value, prefix


_DOWN = ("m", "u", "n", "p", "f", "a", "z", "y")


def humanize(value: float) -> str:
    if value == 0 or math.isnan(value) or math.isinf(value):
        return _g(value)
    scaled, prefix = _scaled(value, ("k", "M", "G", "T", "P", "E", "Z", "Y"), _DOWN)
    return _g(scaled) + prefix


def humanize_1024(value: float) -> str:
    if abs(value) <= 1 or math.isnan(value) or math.isinf(value):
        return _g(value)
    prefix = ""
    for p in ("ki", "Mi", "Gi", "Ti", "Pi", "Ei", "Zi", "Yi"):
        if abs(value) < 1024:
            break
        prefix, value = p, value / 1024
    return _g(value) + prefix


def humanize_percentage(value: float) -> str:
    return _g(value * 100) + "%"


def humanize_duration(value: float) -> str:
    if math.isnan(value) or math.isinf(value):
        return _g(value)
    if value == 0:
        return _g(value) + "s"
    if abs(value) >= 1:
        sign, whole = ("-" if value < 0 else ""), int(abs(value))
        days, hours, mins, secs = whole // 86400, whole // 3600 % 24, whole // 60 % 60, whole % 60
        if days:
            return f"{sign}{days}d {hours}h {mins}m {secs}s"
        if hours:
            return f"{sign}{hours}h {mins}m {secs}s"
        if mins:
            return f"{sign}{mins}m {secs}s"
        return f"{sign}{_g(abs(value))}s"
    scaled, prefix = _scaled(value, (), _DOWN)
    return f"{_g(scaled)}{prefix}s"


_FUNCTIONS: dict[str, Callable[[float], str]] = {
    "humanize": humanize,
    "humanize1024": humanize_1024,
    "humanizePercentage": humanize_percentage,
    "humanizeDuration": humanize_duration,
}
_FIELD = re.compile(r"\{\{\s*(?:\$labels\.(\w+)|\$value\s*\|\s*(\w+))\s*\}\}")


def render(template: str, labels: Mapping[str, str], value: float) -> str:
    """An annotation as Prometheus expands it, for ``$labels.x`` and ``$value | humanize...``."""

    def field(match: re.Match[str]) -> str:
        label, function = match.groups()
        if label is not None:
            return labels.get(label, "<no value>")
        if function not in _FUNCTIONS:
            raise CatalogueError(f"template function {function} is not rendered by the rule-test generator")
        return _FUNCTIONS[function](value)

    out = _FIELD.sub(field, template)
    if "{{" in out:
        raise CatalogueError(f"template {template!r} has a form the rule-test generator does not render")
    return out


def _series(record: str, labels: Mapping[str, str]) -> str:
    return record + "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}"


def _labels(expr: Expr) -> dict[str, str]:
    return {label: LABEL_VALUES[label] for label in expr.labels}


def _case(
    name: str,
    inputs: list[tuple[str, float]],
    alert: str,
    eval_minutes: float,
    expected: Sequence[Mapping[str, object]],
    before: float | None = None,
) -> dict[str, object]:
    samples = round(eval_minutes / INTERVAL_MINUTES) + 1
    checks: list[dict[str, object]] = []
    if before is not None:  # still pending: promtool lists only firing alerts
        checks.append({"eval_time": f"{before:g}m", "alertname": alert, "exp_alerts": []})
    checks.append({"eval_time": f"{eval_minutes:g}m", "alertname": alert, "exp_alerts": list(expected)})
    return {
        "name": name,
        "interval": f"{INTERVAL_MINUTES}m",
        "input_series": [{"series": s, "values": f"{v!r}x{samples}"} for s, v in inputs],
        "alert_rule_test": checks,
    }


def tip_cases(tip: Tip, alert: Alert) -> list[dict[str, object]]:
    check, rule = alert.check, alert_rule(tip, alert)
    labels = _labels(check.signal.expr)
    threshold = check.threshold.value
    breach = threshold * 2 if check.comparator == ">" else threshold / 2
    wait = minutes(alert.for_)
    at = wait + 2 * INTERVAL_MINUTES

    def inputs(
        value: float, guard_ok: bool = True, unless: float | None = None, floor_ok: bool = True
    ) -> list[tuple[str, float]]:
        out = [(_series(check.signal.record(RULE_WINDOW), labels), value)]
        for condition, ok in ((check.guard, guard_ok), (check.floor, floor_ok)):
            if condition is not None:
                out.append(
                    (
                        _series(condition.signal.record(RULE_WINDOW), _labels(condition.signal.expr)),
                        condition.minimum.value * (2 if ok else 0.5),
                    )
                )
        if check.unless is not None and unless is not None:
            out.append((_series(check.unless.record(RULE_WINDOW), _labels(check.unless.expr)), unless))
        return out

    annotations = rule["annotations"]
    assert isinstance(annotations, dict) and isinstance(rule["labels"], dict)
    expected = [
        {
            "exp_labels": {**labels, **rule["labels"]},
            "exp_annotations": {k: render(str(v), labels, breach) for k, v in annotations.items()},
        }
    ]
    cases = [
        _case(
            f"{alert.name} fires at {breach:g} after {alert.for_}",
            inputs(breach),
            alert.name,
            at,
            expected,
            wait - INTERVAL_MINUTES,
        ),
        _case(
            f"{alert.name} stays silent at the threshold {threshold:g}", inputs(threshold), alert.name, at, []
        ),
    ]
    silent: list[tuple[str, list[tuple[str, float]]]] = []
    if check.guard is not None:
        silent.append(("under the traffic guard", inputs(breach, guard_ok=False)))
    if check.floor is not None:
        silent.append((f"under the floor of {check.floor.minimum.format()}", inputs(breach, floor_ok=False)))
    if check.unless is not None:
        silent.append((f"when {check.unless.name} is above 0", inputs(breach, unless=1.0)))
    cases += [_case(f"{alert.name} stays silent {why}", data, alert.name, at, []) for why, data in silent]
    return cases


def tips_test() -> dict[str, object]:
    return {
        "rule_files": ["../rules/tips.yml"],
        "evaluation_interval": f"{INTERVAL_MINUTES}m",
        "tests": [case for tip in TIPS for alert in tip.alerts for case in tip_cases(tip, alert)],
    }


def slo_cases(rule: dict[str, object], group: slo.RouteGroup) -> list[dict[str, object]]:
    labels = rule["labels"]
    assert isinstance(labels, dict)
    long, short = str(labels["long_window"]), str(labels["short_window"])
    burn = next(b for b in slo.BURN_WINDOWS if (b.long, b.short) == (long, short))
    kind = slo.ERROR_RECORD if labels["slo"] == "availability" else slo.SLOW_RECORD
    target = (
        group.objective.availability_target if kind == slo.ERROR_RECORD else group.objective.latency_target
    )
    budget = 1 - target
    route = {
        "job": SCRAPE_JOB,
        "route": group.match[0][2] if group.match and group.match[0][1] == "=" else LABEL_VALUES["route"],
    }
    hot, cold = budget * burn.factor * 2, budget * burn.factor / 2

    def inputs(long_ratio: float, short_ratio: float) -> list[tuple[str, float]]:
        return [
            (_series(slo.record_name(kind, long), route), long_ratio),
            (_series(slo.record_name(kind, short), route), short_ratio),
        ]

    annotations = rule["annotations"]
    assert isinstance(annotations, dict)
    rendered = {
        k: render(
            str(v).replace(slo.TIP_ALERTS_BESIDE, "Tip alerts firing beside it: none."), route, hot / budget
        )
        for k, v in annotations.items()
    }
    name, at = str(rule["alert"]), minutes(burn.for_) + 2 * INTERVAL_MINUTES
    expected = [{"exp_labels": {**route, **labels}, "exp_annotations": rendered}]
    scope = f"{name} {long}/{short} ({group.scope})"
    return [
        _case(f"{scope} fires when both windows burn", inputs(hot, hot), name, at, expected),
        _case(f"{scope} stays silent when only the long window burns", inputs(hot, cold), name, at, []),
        _case(f"{scope} stays silent when only the short window burns", inputs(cold, hot), name, at, []),
    ]


def slo_test() -> dict[str, object]:
    rules = slo.alert_rules()
    per_group = len(slo.BURN_WINDOWS)
    cases = []
    index = 0
    for _kind in (slo.ERROR_ALERT, slo.LATENCY_ALERT):
        for group in slo.groups():
            for rule in rules[index : index + per_group]:
                cases += slo_cases(rule, group)
            index += per_group
    return {"rule_files": ["../rules/slo.yml"], "evaluation_interval": f"{INTERVAL_MINUTES}m", "tests": cases}


# Recording rules: raw series of every declared metric, the expected values from the local evaluator.
STEPS = 5  # samples, one a minute: the window of the tip recording rules
RAW_LABEL_VALUES: Mapping[str, tuple[str, ...]] = {
    "route": ("/a", "/b"),
    "method": ("GET",),
    "status": ("200", "500"),
    "phase": ("request", "response"),
    "result": ("hit", "miss"),
    "cache": ("c",),
    "pool": ("p",),
    "mount": ("/static",),
    "location": ("app.py:10", "db.py:3"),
    "name": ("Timing",),
    "pid": ("1", "2"),
}
RAW_KIND: Mapping[str, tuple[str, ...]] = {
    metrics.ROUTE_HANDLERS._name: ("sync", "async"),
    metrics.MIDDLEWARES._name: ("base_http",),
    metrics.RESOURCES_CREATED._name: ("db",),
}
RAW_STATE: Mapping[str, tuple[str, ...]] = {
    metrics.THREADPOOL_TOKENS._name: ("borrowed", "total"),
    metrics.DB_POOL_CONNECTIONS._name: ("checked_out", "size"),
}
RAW_COMMON = {"job": SCRAPE_JOB, "instance": LABEL_VALUES["instance"]}


def declared() -> dict[str, MetricWrapperBase]:
    return {m._name: m for m in vars(metrics).values() if isinstance(m, MetricWrapperBase)}


def raw_series() -> list[tuple[str, dict[str, str], float, float]]:
    """(sample name, labels, value at 0 m, value at 5 m) for every declared metric."""
    out = []
    routes = (*RAW_LABEL_VALUES["route"], *slo.ROUTE_OBJECTIVES)  # every objective's routes have data
    for family, metric in sorted(declared().items()):
        values = {
            **RAW_LABEL_VALUES,
            "route": routes,
            "kind": RAW_KIND.get(family, ("x",)),
            "state": RAW_STATE.get(family, ("x",)),
        }
        combos = itertools.product(*(values.get(label, ("x",)) for label in metric._labelnames))
        for i, combo in enumerate(combos, start=1):
            labels = {**RAW_COMMON, **dict(zip(metric._labelnames, combo, strict=True))}
            if family == metrics.ROUTE_HANDLERS._name and (labels["route"] == "/a") != (
                labels["kind"] == "sync"
            ):
                continue  # /a is the one sync route, so the join on handler kind has something to drop
            kind = metric._type
            if kind == "gauge":
                out.append((family, labels, float(i), float(i)))
            elif kind == "counter":
                out.append((f"{family}_total", labels, 0.0, 300.0 * i))
            else:
                for j, bound in enumerate(metric._upper_bounds):  # type: ignore[attr-defined]
                    le = "+Inf" if bound == math.inf else repr(float(bound))
                    out.append((f"{family}_bucket", {**labels, "le": le}, 0.0, 300.0 * i * min(j + 1, 4)))
                out.append((f"{family}_count", labels, 0.0, 300.0 * i * 4))
                out.append((f"{family}_sum", labels, 0.0, 75.0 * i))  # rates exact in binary
    return out


def recorded() -> list[tuple[str, Expr]]:
    """Every recording rule at the tip window: the tip signals and the SLO ratios of that window."""
    out: list[tuple[str, Expr]] = [(s.record(RULE_WINDOW), s.expr) for s in recorded_signals()]
    for group in slo.groups():
        out.append((slo.record_name(slo.ERROR_RECORD, RULE_WINDOW), slo.error_ratio(group)))
        out.append((slo.record_name(slo.SLOW_RECORD, RULE_WINDOW), slo.slow_ratio(group)))
    return out


def recording_test() -> dict[str, object]:
    if minutes(RULE_WINDOW) != STEPS:
        raise CatalogueError(
            f"the recording-rule test samples {STEPS} minutes, the rules' window is {RULE_WINDOW}"
        )
    series = raw_series()
    before: dict[str, list[tuple[dict[str, str], float]]] = {}
    after: dict[str, list[tuple[dict[str, str], float]]] = {}
    for name, labels, start, end in series:
        before.setdefault(name, []).append((labels, start))
        after.setdefault(name, []).append((labels, end))
    expected: dict[str, dict[Labels, float]] = {}
    for record, expr in recorded():  # an objective per route: one record name, several rules
        expected.setdefault(record, {}).update(expr.evaluate(before, after, STEPS * 60.0))
    checks = []
    for record, values in expected.items():
        if not values:
            raise CatalogueError(f"{record}: the raw series give it no value to check")
        samples = [{"labels": _series(record, dict(key)), "value": v} for key, v in sorted(values.items())]
        checks.append({"expr": record, "eval_time": f"{STEPS}m", "exp_samples": samples})
    return {
        "rule_files": ["../rules/recording.yml"],
        "evaluation_interval": f"{INTERVAL_MINUTES}m",
        "tests": [
            {
                "interval": f"{INTERVAL_MINUTES}m",
                "input_series": [
                    {
                        "series": _series(name, labels),
                        "values": f"{start:g}+{(end - start) / STEPS:g}x{STEPS}",
                    }
                    for name, labels, start, end in series
                ],
                "promql_expr_test": checks,
            }
        ],
    }


def documents() -> dict[str, Document | dict[str, object]]:
    """Output path (relative to the repository) -> promtool test document."""
    return {
        f"{FOLDER}/tips.yml": tips_test(),
        f"{FOLDER}/slo.yml": slo_test(),
        f"{FOLDER}/recording.yml": recording_test(),
    }
