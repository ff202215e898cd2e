"""The tip catalogue: complete, consistent, its metric names real, and its two evaluators agreeing."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.metrics import MetricWrapperBase

from collector import catalogue, metrics
from collector.catalogue import names, slo, tips
from collector.catalogue.model import (
    Binary,
    CatalogueError,
    Expr,
    Gauge,
    Quantile,
    Signal,
    Total,
    parse_scrape,
    project,
)
from collector.catalogue.model import Counter as CounterExpr

ROOT = Path(__file__).resolve().parent.parent
DECLARED = {m._name: m for m in vars(metrics).values() if isinstance(m, MetricWrapperBase)}


def leaves(expr: Expr) -> list[CounterExpr | Gauge | Quantile]:
    if isinstance(expr, Binary):
        return leaves(expr.left) + leaves(expr.right)
    if isinstance(expr, Total):
        return list(expr.parts)
    return [expr]


def every_signal() -> list[Signal]:
    found = [s for t in tips.TIPS for s in (*t.key_signals, t.weight)]
    found += [s for t in tips.TIPS for p in t.panels for s in p.signals]
    found += [e.signal for t in tips.TIPS for e in t.evidence]
    found += [s for _, c in catalogue.checks() for s in c.signals()]
    return found


def test_every_tip_has_an_alert_and_tips_6_and_9_have_one_per_failure_mode() -> None:
    assert [t.number for t in tips.TIPS] == list(range(1, 11))
    counts = {t.number: len(t.alerts) for t in tips.TIPS}
    assert all(count >= 1 for count in counts.values())
    assert counts[6] == 2 and counts[9] == 2


def test_alerts_share_a_prefix_and_have_unique_names_runbooks_and_panels() -> None:
    pairs = catalogue.alerts()
    assert all(a.name.startswith(f"{tips.ALERT_PREFIX}Tip{t.number}") for t, a in pairs)
    assert len({a.name for _, a in pairs}) == len(pairs)
    assert len({a.runbook.slug for _, a in pairs}) == len(pairs)
    assert all(a.severity in ("warning", "ticket") for _, a in pairs)
    assert all(a.panel in t.panels and a.check.threshold in t.thresholds for t, a in pairs)
    panel_ids = [p.id for _, p in catalogue.panels()]
    assert len(set(panel_ids)) == len(panel_ids)


def test_every_metric_the_catalogue_reads_is_declared_or_listed_as_pending() -> None:
    used = set()
    for signal in every_signal():
        for leaf in leaves(signal.expr):
            used.add(leaf.metric)
            if isinstance(leaf, CounterExpr) and leaf.where:
                used.add(leaf.where[0])
    unknown = used - set(DECLARED)
    assert not unknown


def test_a_latency_objective_between_buckets_is_refused_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    slo.check_objectives(names.latency_buckets())
    monkeypatch.setattr(slo, "DEFAULT_OBJECTIVE", slo.Objective(latency_threshold=0.3))
    with pytest.raises(CatalogueError) as error:
        slo.check_objectives(names.latency_buckets())
    assert "0.3 s is not a bucket boundary" in str(error.value) and "\n" not in str(error.value)


def test_paging_slo_alerts_are_critical_and_name_the_tip_alerts_beside_them() -> None:
    burn = slo.alert_rules()
    paging = [r for r in burn if r["labels"]["severity"] == "critical"]  # type: ignore[index]
    assert {(r["labels"]["long_window"], r["labels"]["short_window"]) for r in paging} == {  # type: ignore[index]
        ("1h", "5m"),
        ("6h", "30m"),
    }
    assert all('tip!=\\"\\"' in r["annotations"]["description"] for r in paging)  # type: ignore[index]
    tickets = [r for r in burn if r not in paging]
    assert {r["labels"]["severity"] for r in tickets} == {"ticket"}  # type: ignore[index]


def test_a_check_evaluates_two_scrapes_and_skips_routes_below_the_traffic_guard() -> None:
    registry = CollectorRegistry()
    requests = Histogram(names.REQUESTS, "", ["method", "route", "status"], registry=registry)
    n_plus_one = Counter(names.DB_N_PLUS_ONE, "", ["route"], registry=registry)
    before = parse_scrape(generate_latest(registry).decode())
    for _ in range(100):
        requests.labels("GET", "/orders", "200").observe(0.01)
        requests.labels("GET", "/users", "200").observe(0.01)
    n_plus_one.labels("/orders").inc(20)
    n_plus_one.labels("/users")
    requests.labels("GET", "/rare", "200").observe(0.01)
    n_plus_one.labels("/rare").inc()
    after = parse_scrape(generate_latest(registry).decode())

    check = tips.TIP6.alerts[0].check
    values = check.evaluate(before, after, seconds=60.0)
    by_route = {dict(k)["route"]: v for k, v in values.items()}
    assert by_route["/orders"] == pytest.approx(0.2)
    assert check.breaches(by_route["/orders"]) and not check.breaches(by_route["/users"])
    assert "/rare" not in by_route  # one request a minute is under the guard
    assert check.severity_ratio(by_route["/orders"]) == pytest.approx(0.2 / check.threshold.value)


def test_instant_queries_carry_the_doctors_extra_matchers() -> None:
    check = tips.TIP9.alerts[0].check
    query = check.promql("30m", (("job", "=", "shop"),))
    assert 'fastapi_event_loop_stalled_seconds_total{job="shop"}[30m]' in query
    gauge = Gauge(names.WORKERS, by=("instance",))
    assert (
        gauge.promql("1m", (("job", "=~", "a|b"),)) == 'sum by (job, instance) (fastapi_workers{job=~"a|b"})'
    )
    assert Quantile(0.5, names.REQUESTS).promql("1m").startswith("histogram_quantile(0.5, sum by (job, le)")


def test_a_weight_projects_onto_the_labels_it_shares_with_a_breach() -> None:
    weights = {(("job", "app"), ("route", "/a")): 2.0, (("job", "app"), ("route", "/b")): 3.0}
    assert project(weights, ("job",)) == {(("job", "app"),): 5.0}
    assert project(weights, ("job", "pool")) == {(("job", "app"), ("pool", "")): 5.0}
