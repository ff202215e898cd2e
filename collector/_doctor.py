"""The doctor's diagnosis: every tip of the catalogue judged over one source of vectors, ranked by impact.

Shared by ``collector doctor`` (Prometheus or two scrapes of ``/metrics``) and the tips page (scrapes of
the process's own registry). A source is any function from a catalogue expression to a vector: the
checks, thresholds and evidence are the catalogue's (``Check.judge``), never copied here.

Per tip: ``broken`` when a series passes the alert's threshold, ``warning`` past the threshold's
``warn`` level, ``ok`` when every judged series is below, ``no data`` when no check could judge a
series (with why: the setting the tip needs, too little traffic, or no samples). A breach's impact is
how far past the threshold it is (``severity_ratio``) times the share of the tip's ``weight`` signal
that its labels carry (a breach on the route holding most of the request time weighs most). Tips are
ranked broken, warning, no data, ok; within a status by their worst finding's impact.

Beside the verdicts: since when each tip's alert has been active (Prometheus' alerts API, matched
by the catalogue's alert names), and the N+1 statements an app's profile listing names (tip 6).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal

from collector._frames import OTHER_LOCATION
from collector.catalogue import TIPS
from collector.catalogue.model import Check, Expr, Labels, Scrape, Tip, Vector, project
from collector.catalogue.tips import N_PLUS_ONE, RUNBOOK_BASE_URL

Status = Literal["broken", "warning", "no data", "ok"]
RANK: dict[Status, int] = {"broken": 0, "warning": 1, "no data": 2, "ok": 3}
VectorOf = Callable[[Expr], Vector]
AlertState = Literal["firing", "pending", "inactive"]
# The tip whose alert judges the N+1 signal: the one the profile listing's N+1 statements explain.
N_PLUS_ONE_TIP = next(t.number for t in TIPS if any(a.check.signal == N_PLUS_ONE for a in t.alerts))
RULES_NOT_LOADED = "since: unknown (the catalogue's alert rules are not loaded in this Prometheus)"


class SourceError(Exception):
    """The source could not be read; the message is one line."""


def scrape_vectors(before: Scrape, after: Scrape, seconds: float) -> VectorOf:
    """A source from two parsed scrapes ``seconds`` apart (the local evaluator of the catalogue)."""
    cache: dict[Expr, Vector] = {}

    def vector(expr: Expr) -> Vector:
        if expr not in cache:
            cache[expr] = expr.evaluate(before, after, seconds)
        return cache[expr]

    return vector


def _clean(labels: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in labels.items() if v}


def format_value(value: float, unit: str) -> str:
    """A signal's value in its Grafana unit, for people."""
    if math.isinf(value):
        return "∞"
    if unit == "percentunit":
        return f"{value * 100:.3g} %"
    if unit == "s":
        return f"{value * 1000:.3g} ms" if abs(value) < 1 else f"{value:.3g} s"
    if unit in ("reqps", "ops"):
        return f"{value:.3g}/s"
    if unit == "bytes":
        return f"{value / 1024:.3g} KiB" if value >= 1024 else f"{value:.0f} B"
    if unit == "Bps":
        return f"{value / 1024:.3g} KiB/s"
    return f"{value:.3g}"


@dataclass
class Finding:
    """One series of a check with its value and verdict."""

    alert: str
    labels: dict[str, str]
    value: float
    shown: str
    threshold: str
    status: Status
    severity: float
    share: float
    note: str = ""

    @property
    def impact(self) -> float:
        return self.severity * self.share

    def as_dict(self) -> dict[str, Any]:
        return {
            "alert": self.alert,
            "labels": self.labels,
            "value": _finite(self.value),
            "shown": self.shown,
            "threshold": self.threshold,
            "status": self.status,
            "severity_ratio": _finite(self.severity),
            "weight_share": round(self.share, 4),
            "impact": _finite(self.impact),
            "note": self.note,
        }


def _finite(value: float) -> float | None:
    return round(value, 6) if math.isfinite(value) else None


@dataclass
class EvidenceItem:
    labels: dict[str, str]
    value: float
    shown: str


@dataclass
class Since:
    """Since when a tip is in its state: its alert's ``activeAt``, or within the two scrapes' interval."""

    active_at: datetime | None = None
    state: AlertState | None = None  # "inactive": the rules are loaded, none of the tip's alerts is active
    alert: str | None = None
    within_seconds: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "since": self.active_at.isoformat() if self.active_at is not None else None,
            "alert_state": self.state,
            "active_alert": self.alert,
            "since_within_seconds": None if self.within_seconds is None else round(self.within_seconds, 1),
        }


@dataclass
class TipResult:
    number: int
    title: str
    status: Status
    why: str
    fix: str
    runbooks: list[str]
    findings: list[Finding] = field(default_factory=list)
    evidence: dict[str, list[EvidenceItem]] = field(default_factory=dict)
    key: float | None = None  # the tip's first key signal, worst series: what the page draws
    since: Since = field(default_factory=Since)
    n_plus_one: list[dict[str, Any]] | None = None  # the N+1 tip's statements, when a listing was read

    @property
    def impact(self) -> float:
        return max((f.impact for f in self.findings if f.status == self.status), default=0.0)

    def top(self, label: str) -> str | None:
        """The worst value of a label: from the worst finding, else from the evidence in order."""
        for finding in sorted(self.findings, key=lambda f: (RANK[f.status], -f.impact)):
            if (
                finding.status in ("broken", "warning")
                and finding.labels.get(label, OTHER_LOCATION) != OTHER_LOCATION
            ):
                return finding.labels[label]
        for items in self.evidence.values():
            for item in items:
                if item.labels.get(label, OTHER_LOCATION) != OTHER_LOCATION:
                    return item.labels[label]
        return None

    def as_dict(self) -> dict[str, Any]:
        return {
            "tip": self.number,
            "title": self.title,
            "status": self.status,
            "why": self.why,
            "fix": self.fix,
            "runbooks": self.runbooks,
            "route": self.top("route"),
            "location": self.top("location"),
            "findings": [f.as_dict() for f in self.findings],
            "evidence": {
                title: [{"labels": i.labels, "value": _finite(i.value), "shown": i.shown} for i in items]
                for title, items in self.evidence.items()
            },
            **self.since.as_dict(),
            **({} if self.n_plus_one is None else {"n_plus_one": self.n_plus_one}),
        }


@dataclass
class Report:
    source: str
    window: str
    tips: list[TipResult]
    profiles: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    worker_pid: int | None = None  # the process whose profile listing was read (each worker has its own)
    at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def broken(self) -> list[TipResult]:
        return [t for t in self.tips if t.status == "broken"]

    def as_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "window": self.window,
            "broken": [t.number for t in self.broken],
            "tips": [t.as_dict() for t in self.tips],
            "profiles": self.profiles,
            "worker_pid": self.worker_pid,
            "notes": self.notes,
            "generated_at": self.at.isoformat(timespec="seconds"),
        }


def _verdict(check: Check, value: float) -> Status:
    if check.breaches(value):
        return "broken"
    if check.threshold.warn is not None and check.breaches(value, check.threshold.warn):
        return "warning"
    return "ok"


def _share(weights: Vector, shared: Sequence[str], key: Labels) -> float:
    """The share of the tip's weight on the labels a series shares with the weight signal."""
    total = math.fsum(weights.values())
    if total <= 0:
        return 1.0
    (own,) = project({key: 1.0}, shared)
    return min(1.0, project(weights, shared).get(own, 0.0) / total)


def _judge_check(
    check: Check, alert: str, vector: VectorOf, weights: Vector, weight_labels: Sequence[str]
) -> tuple[list[Finding], str | None]:
    """The check's findings, or why it judged nothing."""
    raw = vector(check.signal.expr)
    judged = replace(check, unless=None, floor=None).judge(vector) if raw else {}
    if not judged:
        guard = check.guard
        idle = guard is not None and all(v < guard.minimum.value for v in vector(guard.signal.expr).values())
        if guard is not None and (raw or idle):
            return [], f"too little traffic to judge (under {guard.minimum.format()})"
        return [], f"nothing measured ({check.signal.description.rstrip('.').lower()})"
    silenced = vector(check.unless.expr) if check.unless is not None else {}
    floor = check.floor
    reached = vector(floor.signal.expr) if floor is not None else {}
    shared = [label for label in check.signal.expr.labels if label in weight_labels]
    findings = []
    for key, value in judged.items():
        note = ""
        if check.unless is not None and silenced.get(key, 0.0) > 0:
            note = f"silenced, as in the alert: {check.unless.name} > 0"
        elif floor is not None and reached.get(key, 0.0) < floor.minimum.value:
            shown = format_value(reached.get(key, 0.0), floor.signal.unit)
            note = f"under the alert's floor: {floor.signal.name} {shown} < {floor.minimum.format()}"
        status = "ok" if note else _verdict(check, value)
        findings.append(
            Finding(
                alert=alert,
                labels=_clean(dict(key)),
                value=value,
                shown=format_value(value, check.signal.unit),
                threshold=f"{check.comparator} {check.threshold.format()}",
                status=status,
                severity=check.severity_ratio(value),
                share=_share(weights, shared, key),
                note=note,
            )
        )
    return findings, None


def key_value(tip: Tip, vector: VectorOf) -> float | None:
    """The worst series of the tip's first key signal (lowest where its check alerts below)."""
    signal = tip.key_signals[0]
    values = [v for v in vector(signal.expr).values() if not math.isnan(v)]
    lower = any(c.signal == signal and c.comparator == "<" for c in tip.checks)
    return (min if lower else max)(values) if values else None


def judge_tip(tip: Tip, vector: VectorOf) -> TipResult:
    weights = vector(tip.weight.expr)
    findings: list[Finding] = []
    reasons: list[str] = []
    for alert in tip.alerts:
        found, why = _judge_check(alert.check, alert.name, vector, weights, tip.weight.expr.labels)
        findings += found
        if why:
            reasons.append(why)
    statuses = {f.status for f in findings}
    status: Status = min(statuses, key=RANK.__getitem__) if statuses else "no data"
    if status == "no data":
        why = "; ".join(dict.fromkeys(reasons))
        if tip.needs and "nothing measured" in why:
            why += f" (needs {tip.needs})"
    else:
        worst = sorted(findings, key=lambda f: (RANK[f.status], -f.impact))[0]
        where = ", ".join(f"{k}={v}" for k, v in worst.labels.items()) or "service"
        why = f"{worst.shown} (alert {worst.threshold}) on {where}"
        why = f"{worst.alert}: {why}" if status != "ok" else f"worst {why}"
        why += f"; {worst.note}" if worst.note else ""
    lower = {c.signal.name for c in tip.checks if c.comparator == "<"}
    evidence: dict[str, list[EvidenceItem]] = {}
    for item in tip.evidence:
        values = [(k, v) for k, v in vector(item.signal.expr).items() if v and not math.isnan(v)]
        # The overflow label of bounded locations is no place in the code: it goes last.
        values.sort(
            key=lambda kv: (
                ("location", OTHER_LOCATION) in kv[0],
                kv[1] if item.signal.name in lower else -kv[1],
            )
        )
        if values:
            evidence[item.title] = [
                EvidenceItem(_clean(dict(k)), v, format_value(v, item.signal.unit))
                for k, v in values[: item.top]
            ]
    return TipResult(
        number=tip.number,
        title=tip.title,
        status=status,
        why=why,
        fix=tip.fix,
        runbooks=[f"{RUNBOOK_BASE_URL}{a.runbook.slug}.md" for a in tip.alerts],
        findings=sorted(findings, key=lambda f: (RANK[f.status], -f.impact)),
        evidence=evidence,
        key=key_value(tip, vector),
    )


def diagnose(vector: VectorOf, source: str, window: str) -> Report:
    """Every tip of the catalogue over one source, ranked by status then impact."""
    results = [judge_tip(tip, vector) for tip in TIPS]
    results.sort(key=lambda r: (RANK[r.status], -r.impact, r.number))
    return Report(source=source, window=window, tips=results)


def attach_profiles(report: Report, listing: Sequence[Mapping[str, Any]], top: int = 5) -> None:
    """The slowest kept profiles (the profile endpoint's listing), each with its hottest function."""
    slowest = sorted(listing, key=lambda p: -float(p.get("duration_seconds") or 0.0))[:top]
    report.profiles = [
        {
            "route": p.get("route"),
            "method": p.get("method"),
            "duration_seconds": p.get("duration_seconds"),
            "hottest": p.get("hottest"),
            "html": p.get("html"),
        }
        for p in slowest
    ]


def attach_listing(report: Report, listing: Mapping[str, Any]) -> None:
    """A profile endpoint's listing: its slowest profiles, and its N+1 statements on the N+1 tip."""
    attach_profiles(report, listing.get("profiles") or [])
    report.worker_pid = listing.get("pid")
    for tip in report.tips:
        if tip.number == N_PLUS_ONE_TIP:
            tip.n_plus_one = list(listing.get("n_plus_one") or [])  # the most requests first


def parse_timestamp(text: str) -> datetime | None:
    """An RFC 3339 time as Prometheus writes it (nanoseconds cut to microseconds), in UTC."""
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def attach_alerts(
    report: Report, alerts: Sequence[Mapping[str, Any]], loaded: set[str] | None, job: str | None
) -> None:
    """Since when each tip's alert is active, from Prometheus' pending and firing alerts.

    ``loaded`` names the alerting rules Prometheus has (``None``: unknown, then an active alert of
    the catalogue's is the only sign they are loaded). Without them, one note says so.
    """
    catalogue = {alert.name for tip in TIPS for alert in tip.alerts}
    ours = []
    for alert in alerts:
        labels = alert.get("labels") or {}
        if labels.get("alertname") not in catalogue or alert.get("state") not in ("pending", "firing"):
            continue
        if job is not None and labels.get("job") != job:
            continue
        active_at = parse_timestamp(str(alert.get("activeAt") or ""))
        if active_at is not None:
            ours.append((active_at, str(alert["state"]), str(labels["alertname"])))
    named = any((alert.get("labels") or {}).get("alertname") in catalogue for alert in alerts)
    if not (catalogue & loaded if loaded is not None else named):
        report.notes.append(RULES_NOT_LOADED)
        return
    by_tip = {tip.number: {alert.name for alert in tip.alerts} for tip in TIPS}
    for result in report.tips:
        active = sorted(a for a in ours if a[2] in by_tip[result.number])
        if not active:
            result.since = Since(state="inactive")
            continue
        state: AlertState = "firing" if any(a[1] == "firing" for a in active) else "pending"
        result.since = Since(active_at=active[0][0], state=state, alert=active[0][2])


def attach_scrape_window(report: Report, seconds: float) -> None:
    """Two scrapes say only that a verdict holds within the seconds between them."""
    for result in report.tips:
        result.since = Since(within_seconds=seconds)
