"""The tip catalogue's data model: what breaking a tip means, as data.

Nothing here names a metric or a number of its own: ``tips.py`` and ``slo.py`` fill the model,
generators (``rules.py``, ``runbooks.py``, the dashboards, the doctor) read it.

Expressions are structured, not strings, so one definition gives both PromQL and a local evaluator:

- ``Counter(metric, suffix, match, by)``: per-second rate of a counter (or a histogram's ``_count``/
  ``_sum``), summed by ``by`` (``job`` is always added). PromQL ``sum by (job, ...) (rate(x[w]))``;
  locally ``(after - before) / seconds`` per series, summed the same way (a reset counts from zero).
  ``where`` keeps only the series that also exist in a gauge (PromQL ``and on (...)``), e.g. the
  requests served by sync handlers.
- ``Gauge(metric, match, by, agg)``: a gauge's current value, ``sum``/``max``/``min`` by ``by``.
- ``Quantile(q, metric, match, by)``: ``histogram_quantile`` over the rate of the buckets; locally the
  same linear interpolation Prometheus does.
- ``Total(parts)``: the summed rates of several counters, a series missing from one part kept.
- ``Binary(op, left, right)``: ``+ - * /`` on vectors with the same labels (one-to-one matching;
  a series missing on either side is dropped, as in PromQL).

A ``Signal`` names an expression (its recording rule is ``level:name:operations``, e.g.
``job_route:fastapi_db_n_plus_one_per_request:ratio_rate5m``). A ``Check`` compares a signal with a
named ``Threshold`` and may need a ``guard`` signal above a minimum (enough traffic to judge) and
may be silenced per series by an ``unless`` signal above zero. An ``Alert`` wraps one check; the
doctor evaluates the same check:

- with Prometheus: ``check.promql(window)`` at the window it wants (instant query), or the recorded
  ``check.rule_expr()`` that the alert itself uses;
- without Prometheus: ``check.evaluate(before, after, seconds)`` on two parsed scrapes
  (``parse_scrape(text)``), which returns the series that breach it with their values.

``Threshold.warn`` is where the doctor says "warning" before the alert's value says "broken".
Impact ranking: ``Check.severity_ratio(value)`` (how far past the threshold, 1.0 at it), then the
tip's ``weight`` signal (request-seconds per second on the route, or requests per second) so a
breach on a busy route ranks first; ``project(weights, shared)`` sums the weight onto the labels
it shares with the check's series (a pool-level breach weighs all its job's request time).
``Evidence`` lists what to show beside a verdict (worst routes, stall locations, pools), each a
signal ranked top-k. ``Tip.needs`` says which setting the signal depends on, for "no data, because".
"""

from __future__ import annotations

import json
import math
import operator
import re
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Union

from prometheus_client.parser import text_string_to_metric_families

# Labels every aggregation keeps, so one Prometheus serves many services.
COMMON_BY: tuple[str, ...] = ("job",)

Labels = tuple[tuple[str, str], ...]
Vector = dict[Labels, float]
# One scrape, parsed: sample name (with its suffix) -> [(labels, value)].
Scrape = Mapping[str, Sequence[tuple[Mapping[str, str], float]]]
Matcher = tuple[str, str, str]  # (label, "=" | "!=" | "=~" | "!~", value)


class CatalogueError(Exception):
    """The catalogue, or a setting it depends on, is inconsistent; the message is one line."""


def parse_scrape(text: str) -> dict[str, list[tuple[Mapping[str, str], float]]]:
    """Parse Prometheus text exposition into a ``Scrape``; ValueError when it is not that format."""
    samples: dict[str, list[tuple[Mapping[str, str], float]]] = defaultdict(list)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name].append((dict(sample.labels), float(sample.value)))
    return dict(samples)


def _matches(labels: Mapping[str, str], match: Sequence[Matcher]) -> bool:
    for label, op, value in match:
        actual = labels.get(label, "")
        ok = {
            "=": actual == value,
            "!=": actual != value,
            "=~": re.fullmatch(value, actual) is not None,
            "!~": re.fullmatch(value, actual) is None,
        }[op]
        if not ok:
            return False
    return True


def selector(name: str, match: Sequence[Matcher], extra: Sequence[Matcher]) -> str:
    parts = [f"{label}{op}{json.dumps(value)}" for label, op, value in (*extra, *match)]
    return f"{name}{{{','.join(parts)}}}" if parts else name


def _key(labels: Mapping[str, str], by: Sequence[str]) -> Labels:
    return tuple((label, labels.get(label, "")) for label in by)


def project(vector: Vector, labels: Sequence[str]) -> Vector:
    """Sum a vector onto the given labels (those it lacks read as empty)."""
    out: Vector = defaultdict(float)
    for key, value in vector.items():
        out[_key(dict(key), labels)] += value
    return dict(out)


@dataclass(frozen=True)
class Counter:
    metric: str
    suffix: Literal["_total", "_count", "_sum", "_bucket"] = "_total"
    match: tuple[Matcher, ...] = ()
    by: tuple[str, ...] = ()
    # (gauge metric, its matchers, labels to join on): keep only series present in that gauge.
    where: tuple[str, tuple[Matcher, ...], tuple[str, ...]] | None = None
    # (source, target, regex, replacement): PromQL's label_replace on each series before summing, e.g.
    # a static mount's label read as the route that serves it (replacement ``$1`` is the first group).
    rename: tuple[str, str, str, str] | None = None

    @property
    def labels(self) -> tuple[str, ...]:
        if self.rename is None:
            return (*COMMON_BY, *self.by)
        source, target, _, _ = self.rename
        return (*COMMON_BY, *(target if label == source else label for label in self.by))

    def _renamed(self, labels: Mapping[str, str]) -> Mapping[str, str]:
        if self.rename is None:
            return labels
        source, target, regex, replacement = self.rename
        found = re.fullmatch(regex, labels.get(source, ""))
        if found is None:
            return labels
        return {**labels, target: replacement.replace("$1", found.group(1) or "")}

    def promql(self, window: str, extra: Sequence[Matcher] = ()) -> str:
        return f"sum by ({', '.join(self.labels)}) ({self.rates(window, extra)})"

    def rates(self, window: str, extra: Sequence[Matcher] = ()) -> str:
        """The per-series rates, before aggregation."""
        inner = f"rate({selector(self.metric + self.suffix, self.match, extra)}[{window}])"
        if self.where is not None:
            gauge, match, on = self.where
            inner = (
                f"{inner} and on ({', '.join((*COMMON_BY, 'instance', *on))}) {selector(gauge, match, extra)}"
            )
        if self.rename is not None:
            source, target, regex, replacement = self.rename
            inner = f"label_replace({inner}, {json.dumps(target)}, {json.dumps(replacement)}, "
            inner += f"{json.dumps(source)}, {json.dumps(regex)})"
        return inner

    def evaluate(self, before: Scrape, after: Scrape, seconds: float) -> Vector:
        previous = {_key(lb, sorted(lb)): v for lb, v in before.get(self.metric + self.suffix, ())}
        allowed: set[Labels] | None = None
        if self.where is not None:
            gauge, match, on = self.where
            allowed = {_key(lb, on) for lb, _ in after.get(gauge, ()) if _matches(lb, match)}
        out: Vector = defaultdict(float)
        for labels, value in after.get(self.metric + self.suffix, ()):
            if not _matches(labels, self.match):
                continue
            if allowed is not None and _key(labels, self.where[2] if self.where else ()) not in allowed:
                continue
            old = previous.get(_key(labels, sorted(labels)), 0.0)
            out[_key(self._renamed(labels), self.labels)] += (
                value - old if value >= old else value
            ) / seconds
        return dict(out)


@dataclass(frozen=True)
class Total:
    """The summed rates of several counters, e.g. validation and serialization seconds together.

    PromQL ``sum by (...) (rate(a[w]) or rate(b[w]))``: a route missing from one part still counts the
    others (``a + b`` would drop it). The parts' series must differ in their label sets (here they
    do: validation has ``phase``, serialization has not), else ``or`` keeps only the first.
    """

    parts: tuple[Counter, ...]

    @property
    def labels(self) -> tuple[str, ...]:
        return self.parts[0].labels

    def promql(self, window: str, extra: Sequence[Matcher] = ()) -> str:
        inner = " or ".join(part.rates(window, extra) for part in self.parts)
        return f"sum by ({', '.join(self.labels)}) ({inner})"

    def evaluate(self, before: Scrape, after: Scrape, seconds: float) -> Vector:
        out: Vector = defaultdict(float)
        for part in self.parts:
            for key, value in part.evaluate(before, after, seconds).items():
                out[key] += value
        return dict(out)


_AGGREGATES: dict[str, Callable[[list[float]], float]] = {"sum": math.fsum, "max": max, "min": min}


@dataclass(frozen=True)
class Gauge:
    metric: str
    match: tuple[Matcher, ...] = ()
    by: tuple[str, ...] = ()
    agg: Literal["sum", "max", "min"] = "sum"

    @property
    def labels(self) -> tuple[str, ...]:
        return (*COMMON_BY, *self.by)

    def promql(self, window: str, extra: Sequence[Matcher] = ()) -> str:
        return f"{self.agg} by ({', '.join(self.labels)}) ({selector(self.metric, self.match, extra)})"

    def evaluate(self, before: Scrape, after: Scrape, seconds: float) -> Vector:
        groups: dict[Labels, list[float]] = defaultdict(list)
        for labels, value in after.get(self.metric, ()):
            if _matches(labels, self.match):
                groups[_key(labels, self.labels)].append(value)
        aggregate = _AGGREGATES[self.agg]
        return {key: aggregate(values) for key, values in groups.items()}


def bucket_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float:
    """Prometheus' ``histogram_quantile`` on cumulative (upper bound, count) pairs, step for step."""
    buckets = sorted(buckets)
    if not buckets or buckets[-1][0] != math.inf:
        return math.nan
    if len(buckets) < 2 or buckets[-1][1] <= 0:
        return math.nan
    rank = q * buckets[-1][1]
    b = next((i for i, (_, count) in enumerate(buckets[:-1]) if count >= rank), len(buckets) - 1)
    if b == len(buckets) - 1:
        return buckets[-2][0]
    if b == 0 and buckets[0][0] <= 0:
        return buckets[0][0]
    start, (end, count) = 0.0, buckets[b]
    if b > 0:
        start = buckets[b - 1][0]
        count -= buckets[b - 1][1]
        rank -= buckets[b - 1][1]
    return start + (end - start) * (rank / count)


@dataclass(frozen=True)
class Quantile:
    q: float
    metric: str
    match: tuple[Matcher, ...] = ()
    by: tuple[str, ...] = ()

    @property
    def labels(self) -> tuple[str, ...]:
        return (*COMMON_BY, *self.by)

    def promql(self, window: str, extra: Sequence[Matcher] = ()) -> str:
        rates = Counter(self.metric, "_bucket", self.match, ("le", *self.by)).promql(window, extra)
        return f"histogram_quantile({self.q}, {rates})"

    def evaluate(self, before: Scrape, after: Scrape, seconds: float) -> Vector:
        rates = Counter(self.metric, "_bucket", self.match, ("le", *self.by)).evaluate(before, after, seconds)
        groups: dict[Labels, list[tuple[float, float]]] = defaultdict(list)
        for key, value in rates.items():
            labels = dict(key)
            groups[_key(labels, self.labels)].append((float(labels["le"]), value))
        out = {key: bucket_quantile(self.q, buckets) for key, buckets in groups.items()}
        return {key: value for key, value in out.items() if not math.isnan(value)}


_OPS: dict[str, Callable[[float, float], float]] = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "/": lambda a, b: a / b if b else math.nan,
}


@dataclass(frozen=True)
class Binary:
    op: Literal["+", "-", "*", "/"]
    left: Expr
    right: Expr

    @property
    def labels(self) -> tuple[str, ...]:
        return self.left.labels

    def promql(self, window: str, extra: Sequence[Matcher] = ()) -> str:
        return f"({self.left.promql(window, extra)}\n  {self.op}\n{self.right.promql(window, extra)})"

    def evaluate(self, before: Scrape, after: Scrape, seconds: float) -> Vector:
        left = self.left.evaluate(before, after, seconds)
        right = self.right.evaluate(before, after, seconds)
        out = {key: _OPS[self.op](value, right[key]) for key, value in left.items() if key in right}
        return {key: value for key, value in out.items() if not math.isnan(value)}


Expr = Union[Counter, Total, Gauge, Quantile, Binary]  # noqa: UP007  (a runtime alias for dataclass fields)


def _uses_rates(expr: Expr) -> bool:
    if isinstance(expr, Binary):
        return _uses_rates(expr.left) or _uses_rates(expr.right)
    return not isinstance(expr, Gauge)


def ratio(numerator: Expr, denominator: Expr) -> Binary:
    return Binary("/", numerator, denominator)


def mean(metric: str, match: tuple[Matcher, ...] = (), by: tuple[str, ...] = ()) -> Binary:
    """Mean of a histogram's observations over the window: rate of its sum over rate of its count."""
    return ratio(Counter(metric, "_sum", match, by), Counter(metric, "_count", match, by))


@dataclass(frozen=True)
class Signal:
    """A named expression; ``name`` is the middle part of its recording rule ``level:name:operations``."""

    name: str
    expr: Expr
    unit: str  # a Grafana unit id: percentunit, s, reqps, short, ...
    description: str

    def operations(self, window: str) -> str:
        expr = self.expr
        if isinstance(expr, Gauge):
            return expr.agg
        if isinstance(expr, Quantile):
            return f"p{round(expr.q * 100):d}_rate{window}"
        if isinstance(expr, Binary) and expr.op == "/":
            return f"ratio_rate{window}" if _uses_rates(expr) else "ratio"
        return f"rate{window}"

    def record(self, window: str) -> str:
        return f"{'_'.join(self.expr.labels)}:{self.name}:{self.operations(window)}"


@dataclass(frozen=True)
class Threshold:
    """A number the alerts, the doctor and the runbooks share. ``warn`` is the doctor's early level."""

    name: str
    value: float
    unit: Literal["ratio", "seconds", "per_second", "count", "bytes"]
    description: str
    warn: float | None = None
    # Why this number: what the sample app measures broken and fixed, printed in the runbooks.
    reason: str = ""

    def format(self, value: float | None = None) -> str:
        value = self.value if value is None else value
        if self.unit == "ratio":
            return f"{value * 100:g} %"
        if self.unit == "seconds":
            return f"{value * 1000:g} ms" if 0 < value < 0.01 else f"{value:g} s"
        if self.unit == "per_second":
            return f"{value:g}/s"
        if self.unit == "bytes":
            return f"{value / 1024:g} KiB"
        return f"{value:g}"


_COMPARE: dict[str, Callable[[float, float], bool]] = {">": operator.gt, "<": operator.lt}


@dataclass(frozen=True)
class Guard:
    """Judge a series only when this signal is at least ``minimum`` (e.g. enough requests)."""

    signal: Signal
    minimum: Threshold


@dataclass(frozen=True)
class Check:
    signal: Signal
    comparator: Literal[">", "<"]
    threshold: Threshold
    guard: Guard | None = None
    unless: Signal | None = None  # a series is fine when this signal is above zero for it
    # A series breaks the tip only when this signal also reaches its minimum: an absolute floor under a
    # relative threshold (a large share of a tiny cost is no problem).
    floor: Guard | None = None

    def _on(self) -> str:
        return f"on ({', '.join(self.signal.expr.labels)})"

    def _compose(self, value: str, guard: str | None, unless: str | None, floor: str | None = None) -> str:
        text = f"{value}\n{self.comparator} {self.threshold.value:g}"
        if guard is not None and self.guard is not None:
            text += f"\nand {self._on()}\n{guard}\n>= {self.guard.minimum.value:g}"
        if floor is not None and self.floor is not None:
            text += f"\nand {self._on()}\n{floor}\n>= {self.floor.minimum.value:g}"
        if unless is not None:
            text += f"\nunless {self._on()}\n{unless}\n> 0"
        return text

    def promql(self, window: str, extra: Sequence[Matcher] = ()) -> str:
        """The check as one instant query over ``window``; ``extra`` adds matchers (e.g. job)."""
        return self._compose(
            self.signal.expr.promql(window, extra),
            self.guard.signal.expr.promql(window, extra) if self.guard else None,
            self.unless.expr.promql(window, extra) if self.unless else None,
            self.floor.signal.expr.promql(window, extra) if self.floor else None,
        )

    def rule_expr(self, window: str) -> str:
        """The check over recorded series, as the alert rule writes it."""
        return self._compose(
            self.signal.record(window),
            self.guard.signal.record(window) if self.guard else None,
            self.unless.record(window) if self.unless else None,
            self.floor.signal.record(window) if self.floor else None,
        )

    def signals(self) -> tuple[Signal, ...]:
        guard, floor = self.guard and self.guard.signal, self.floor and self.floor.signal
        return tuple(s for s in (self.signal, guard, floor, self.unless) if s)

    def evaluate(self, before: Scrape, after: Scrape, seconds: float) -> Vector:
        """Every series of the signal that passes the guard and the unless, with its value."""
        return self.judge(lambda expr: expr.evaluate(before, after, seconds))

    def judge(self, vector: Callable[[Expr], Vector]) -> Vector:
        """``evaluate`` over any source of vectors (two scrapes, or Prometheus queries)."""
        values = vector(self.signal.expr)
        for condition in (self.guard, self.floor):
            if condition is not None:
                reached = vector(condition.signal.expr)
                values = {k: v for k, v in values.items() if reached.get(k, 0.0) >= condition.minimum.value}
        if self.unless is not None:
            unless = vector(self.unless.expr)
            values = {k: v for k, v in values.items() if unless.get(k, 0.0) <= 0}
        return values

    def breaches(self, value: float, level: float | None = None) -> bool:
        return _COMPARE[self.comparator](value, self.threshold.value if level is None else level)

    def severity_ratio(self, value: float) -> float:
        """How far past the threshold a value is: 1.0 at the threshold, larger is worse."""
        if self.comparator == ">":
            return value / self.threshold.value if self.threshold.value else math.inf
        return self.threshold.value / value if value else math.inf


PanelKind = Literal["timeseries", "stat", "table"]


@dataclass(frozen=True)
class Panel:
    """A dashboard panel. ``id`` is stable: alerts link to it (``viewPanel``)."""

    id: int
    title: str
    signals: tuple[Signal, ...]
    description: str
    kind: PanelKind = "timeseries"
    unit: str = ""  # defaults to the first signal's unit
    thresholds: tuple[Threshold, ...] = ()

    @property
    def panel_unit(self) -> str:
        return self.unit or self.signals[0].unit

    def targets(self, window: str = "$__rate_interval", extra: Sequence[Matcher] = ()) -> tuple[str, ...]:
        return tuple(signal.expr.promql(window, extra) for signal in self.signals)


@dataclass(frozen=True)
class Runbook:
    """One page per alert: ``docs/runbooks/<slug>.md``."""

    slug: str
    meaning: str
    confirm: str
    causes: tuple[str, ...]
    fix: str
    before: str
    after: str
    verify: str


Severity = Literal["critical", "warning", "ticket"]


@dataclass(frozen=True)
class Alert:
    name: str
    check: Check
    for_: str
    severity: Literal["warning", "ticket"]
    summary: str
    description: str  # a Prometheus template: $labels, $value
    runbook: Runbook
    panel: Panel


@dataclass(frozen=True)
class Evidence:
    """What the doctor shows beside a verdict: the top ``top`` series of a signal."""

    title: str
    signal: Signal
    top: int = 5


@dataclass(frozen=True)
class Tip:
    number: int
    title: str
    advice: str
    fix: str
    key_signals: tuple[Signal, ...]
    alerts: tuple[Alert, ...]
    panels: tuple[Panel, ...]
    weight: Signal
    evidence: tuple[Evidence, ...] = ()
    # When the collector does not measure the tip unless a setting is on (profiling), say so.
    needs: str = ""
    thresholds: tuple[Threshold, ...] = ()

    @property
    def checks(self) -> tuple[Check, ...]:
        return tuple(alert.check for alert in self.alerts)
