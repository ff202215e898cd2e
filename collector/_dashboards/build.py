"""The dashboards, built with grafana-foundation-sdk from the catalogue's panels and signals.

Every query gets the dashboard's variables as matchers (``job=~"$job"``, ``instance=~"$instance"``,
and ``route=~"$route"`` where every metric it reads carries a route) and ``$__rate_interval`` as its
window. Latency panels ask for exemplars; the Prometheus datasource links them to traces.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import prometheus, stat, table, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models.prometheus import PromQueryFormat
from prometheus_client.metrics import MetricWrapperBase

from collector import metrics
from collector._dashboards import FOLDER, PROMETHEUS_NAME, PROMETHEUS_UID, Dashboard
from collector.catalogue import names as n
from collector.catalogue import slo, tips
from collector.catalogue.model import (
    Binary,
    Counter,
    Expr,
    Gauge,
    Matcher,
    Panel,
    Quantile,
    Signal,
    Tip,
    Total,
)

WINDOW = "$__rate_interval"
DATASOURCE = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")
VARIABLE_METRIC = f"{n.REQUESTS}_count"
LABELS: dict[str, tuple[str, ...]] = {
    str(m._name): tuple(m._labelnames) for m in vars(metrics).values() if isinstance(m, MetricWrapperBase)
}
REQUESTS_IN_PROGRESS = n.name(metrics.REQUESTS_IN_PROGRESS)
REF_IDS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


def _leaves(expr: Expr) -> list[Counter | Gauge | Quantile]:
    if isinstance(expr, Binary):
        return _leaves(expr.left) + _leaves(expr.right)
    if isinstance(expr, Total):
        return list(expr.parts)
    return [expr]


def _has_route(expr: Expr) -> bool:
    return all("route" in leaf.by or "route" in LABELS.get(leaf.metric, ()) for leaf in _leaves(expr))


def matchers(expr: Expr) -> tuple[Matcher, ...]:
    common: tuple[Matcher, ...] = (("job", "=~", "$job"), ("instance", "=~", "$instance"))
    return (*common, ("route", "=~", "$route")) if _has_route(expr) else common


def _legend(expr: Expr) -> str:
    shown = [label for label in expr.labels if label not in ("job", "le")]
    return " ".join(f"{{{{{label}}}}}" for label in shown) or "{{job}}"


def _is_latency(expr: Expr) -> bool:
    return any(isinstance(leaf, Quantile) and leaf.metric == n.REQUESTS for leaf in _leaves(expr))


def _query(signal: Signal, ref: str, kind: str) -> prometheus.Dataquery:
    query = (
        prometheus.Dataquery()
        .expr(signal.expr.promql(WINDOW, matchers(signal.expr)))
        .ref_id(ref)
        .legend_format(_legend(signal.expr))
    )
    if kind == "timeseries":
        query = query.range().exemplar(_is_latency(signal.expr))
    else:
        query = query.instant().format(
            PromQueryFormat.TABLE if kind == "table" else PromQueryFormat.TIME_SERIES
        )
    return query


def _steps(panel: Panel) -> db.ThresholdsConfig:
    """Green below an alert's threshold and red past it (or the reverse for a lower bound)."""
    comparators = {a.panel.id: a.check.comparator for t in tips.TIPS for a in t.alerts}
    lower = comparators.get(panel.id, ">") == "<"
    steps = [dm.Threshold(value=None, color="red" if lower else "green")]
    for threshold in panel.thresholds:
        if threshold.warn is not None and lower:
            steps += [dm.Threshold(value=threshold.value, color="orange")]
            steps += [dm.Threshold(value=threshold.warn, color="green")]
        elif threshold.warn is not None:
            steps += [dm.Threshold(value=threshold.warn, color="orange")]
            steps += [dm.Threshold(value=threshold.value, color="red")]
        else:
            steps += [dm.Threshold(value=threshold.value, color="green" if lower else "red")]
    return db.ThresholdsConfig().mode(dm.ThresholdsMode.ABSOLUTE).steps(steps)


def _describe(panel: Panel) -> str:
    alerts = [(a, t) for t in tips.TIPS for a in t.alerts if a.panel.id == panel.id]
    text = " ".join(s.description for s in panel.signals)
    text = f"{panel.description} {text}" if panel.description != text else text
    needs = {p.id: t.needs for t in tips.TIPS for p in t.panels if t.needs}
    if panel.id in needs:
        text += f" Needs {needs[panel.id]}."
    for alert, tip in alerts:
        threshold = alert.check.threshold
        word = "below" if alert.check.comparator == "<" else "above"
        text += (
            f" Tip {tip.number} alert {alert.name} fires {word} {threshold.format()}"
            f" for {alert.for_} ({threshold.description})"
        )
    return text


def panel(spec: Panel, width: int = 8, height: int = 8) -> Any:
    """One catalogue panel: a time series, a stat or a table, with its unit, description, threshold."""
    kinds: dict[str, Any] = {"timeseries": timeseries.Panel, "stat": stat.Panel, "table": table.Panel}
    built = (
        kinds[spec.kind]()
        .id(spec.id)
        .title(spec.title)
        .description(_describe(spec))
        .datasource(DATASOURCE)
        .unit(spec.panel_unit)
        .span(width)
        .height(height)
        .thresholds(_steps(spec))
    )
    for ref, signal in zip(REF_IDS, spec.signals, strict=False):
        built = built.with_target(_query(signal, ref, spec.kind))
    if isinstance(built, timeseries.Panel):
        built = (
            built.legend(cb.VizLegendOptions().show_legend(True).display_mode(cm.LegendDisplayMode.LIST))
            .tooltip(cb.VizTooltipOptions().mode(cm.TooltipDisplayMode.MULTI).sort(cm.SortOrder.DESCENDING))
            .thresholds_style(
                cb.GraphThresholdsStyleConfig().mode(
                    cm.GraphTresholdsStyleMode.LINE if spec.thresholds else cm.GraphTresholdsStyleMode.OFF
                )
            )
        )
    elif isinstance(built, stat.Panel):
        built = built.reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]))
    return built


def alert_state(tip: Tip) -> stat.Panel:
    """The tip's alert state: 2 firing, 1 pending, 0 quiet (``ALERTS`` is Prometheus' own series)."""
    selector = f'ALERTS{{tip="{tip.number}",job=~"$job",alertstate="%s"}}'
    expr = f"max({selector % 'firing'}) * 2 or max({selector % 'pending'}) or vector(0)"
    states = {"0": ("OK", "green"), "1": ("Pending", "orange"), "2": ("Firing", "red")}
    names = ", ".join(a.name for a in tip.alerts)
    return (
        stat.Panel()
        .id(tip.number * 100 + 99)
        .title(f"Tip {tip.number} alerts")
        .description(f"State of {names} in Prometheus: OK, Pending (its for: has not passed) or Firing.")
        .datasource(DATASOURCE)
        .unit("none")
        .span(4)
        .height(8)
        .with_target(prometheus.Dataquery().expr(expr).ref_id("A").instant().legend_format("state"))
        .mappings([dm.ValueMap({v: dm.ValueMappingResult(text=t, color=c) for v, (t, c) in states.items()})])
        .thresholds(
            db.ThresholdsConfig()
            .mode(dm.ThresholdsMode.ABSOLUTE)
            .steps([dm.Threshold(value=None, color="green")])
        )
        .color_mode(cm.BigValueColorMode.BACKGROUND)
        .graph_mode(cm.BigValueGraphMode.NONE)
        .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]))
    )


def alert_list(panel_id: int, title: str, label_filter: str, description: str) -> db.Panel:
    """Grafana's alert list, reading the alerts Prometheus evaluates (datasource-managed rules)."""
    options = {
        "viewMode": "list",
        "groupMode": "default",
        "groupBy": [],
        "maxItems": 50,
        "sortOrder": 3,  # importance
        "dashboardAlerts": False,
        "alertName": "",
        "alertInstanceLabelFilter": label_filter,
        "datasource": PROMETHEUS_NAME,
        "showInstances": True,
        "stateFilter": {"firing": True, "pending": True, "noData": False, "normal": False, "error": True},
    }
    return (
        db.Panel()
        .type("alertlist")
        .id(panel_id)
        .title(title)
        .description(description)
        .span(24)
        .height(8)
        .options(options)
    )


def variables(route_multi: bool = True) -> list[Any]:
    def query(name: str, selector: str, label: str, multi: bool = True) -> db.QueryVariable:
        variable = (
            db.QueryVariable(name)
            .label(label)
            .datasource(DATASOURCE)
            .query({"query": f"label_values({selector}, {name})", "refId": f"{name}-values"})
            .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(dm.VariableSort.ALPHABETICAL_ASC)
        )
        if multi:
            variable = variable.multi(True).include_all(True).all_value(".*")
        return variable

    return [
        db.DatasourceVariable("datasource")
        .label("Prometheus")
        .type("prometheus")
        .current(dm.VariableOption(selected=True, text=PROMETHEUS_NAME, value=PROMETHEUS_UID)),
        query("job", VARIABLE_METRIC, "Job"),
        query("instance", f'{VARIABLE_METRIC}{{job=~"$job"}}', "Instance"),
        query("route", f'{VARIABLE_METRIC}{{job=~"$job",instance=~"$instance"}}', "Route", route_multi),
    ]


def dashboard(uid: str, title: str, description: str, tags: Sequence[str], route_multi: bool = True) -> Any:
    from collector.catalogue import GENERATED_HEADER as HEADER

    builder = (
        db.Dashboard(title)
        .uid(uid)
        .description(f"{description} {HEADER}")
        .tags(["fastapi", FOLDER, *tags])
        .refresh("30s")
        .time("now-1h", "now")
        .timezone("browser")
        .tooltip(dm.DashboardCursorSync.CROSSHAIR)
        .readonly()
    )
    for variable in variables(route_multi):
        builder = builder.with_variable(variable)
    for other, name in LINKS:
        if other != uid:
            link = db.DashboardLink(name).type(dm.DashboardLinkType.LINK).url(f"/d/{other}")
            builder = builder.link(link.include_vars(True).keep_time(True))
    return builder


def to_json(builder: Any) -> Dashboard:
    data: Dashboard = json.loads(json.dumps(builder.build(), cls=JSONEncoder))
    for variable in data["templating"]["list"]:
        del variable["id"]  # the SDK writes the same zero uuid for all; Grafana keys variables by name
    return data


def ten_tips() -> Dashboard:
    board = dashboard(
        tips.TIPS_DASHBOARD_UID,
        "Ten tips",
        "Which of the article's ten tips the service breaks: per tip its alert state, key signal against "
        "the alert's threshold, and the signals that explain it.",
        ["tips"],
    ).with_panel(
        alert_list(
            1,
            "Tip alerts",
            '{tip=~".+"}',
            "Tip alerts pending or firing in Prometheus (the causes); SLO alerts are on the SLO dashboard.",
        )
    )
    for tip in tips.TIPS:
        board = board.with_row(db.Row(f"Tip {tip.number}: {tip.title}").id(tip.number * 100))
        board = board.with_panel(alert_state(tip))
        for index, spec in enumerate(tip.panels):
            board = board.with_panel(panel(spec, width=10 if index < 2 else 8))
    return to_json(board)


def slo_view() -> Dashboard:
    board = dashboard(
        slo.SLO_DASHBOARD_UID,
        "SLOs",
        "What users feel per route: error and slow ratios against the objectives, latency, incomplete "
        "responses and the probes left out of the metrics.",
        ["slo"],
    ).with_panel(
        alert_list(
            90,
            "SLO alerts",
            '{slo=~".+"}',
            "Burn-rate alerts pending or firing: critical ones page, their description names the tip "
            "alerts beside them.",
        )
    )
    for spec in slo.PANELS:
        board = board.with_panel(panel(spec, width=12))
    return to_json(board)


def _quantiles(metric: str, by: tuple[str, ...], unit: str, what: str) -> tuple[Signal, ...]:
    return tuple(
        Signal(metric, Quantile(q, metric, by=by), unit, f"{round(q * 100)}th percentile of {what}.")
        for q in (0.5, 0.9, 0.99)
    )


def route_view() -> Dashboard:
    by_status = Signal(
        "fastapi_requests",
        Counter(n.REQUESTS, "_count", by=("route", "status")),
        "reqps",
        "Requests per second by route and status.",
    )
    in_progress = Signal(
        "fastapi_requests_in_progress",
        Gauge(REQUESTS_IN_PROGRESS, by=("route",)),
        "short",
        "Requests being served right now.",
    )
    specs = (
        Panel(1, "Requests by status", (by_status,), "Traffic of the selected routes."),
        Panel(
            2,
            "Latency",
            _quantiles(n.REQUESTS, ("route",), "s", "request latency"),
            "Exemplars link to traces.",
        ),
        Panel(3, "Error ratio", (slo.ERROR_RATIO,), "5xx over all requests."),
        Panel(4, "Requests in progress", (in_progress,), "Concurrency per route."),
        Panel(5, "Validation and serialization share", (tips.PYDANTIC_SHARE,), "Tip 3."),
        Panel(6, "Middleware share", (tips.MIDDLEWARE_RATIO,), "Tip 8."),
        Panel(7, "Dependency time", (tips.DEPENDENCY_MEAN,), "Tip 2."),
        Panel(8, "Statements per request p99", (tips.QUERIES_P99,), "Tip 6."),
        Panel(9, "Requests with N+1 queries", (tips.N_PLUS_ONE,), "Tip 6."),
        Panel(10, "Response size p99", (tips.RESPONSE_SIZE_P99,), "Tip 3."),
        Panel(11, "Requests caught in loop stalls", (tips.STALLED_ROUTES,), "Tip 9."),
        Panel(12, "Profiles kept", (tips.PROFILES,), "Tip 10."),
        Panel(13, "Background tasks p99", (tips.BACKGROUND_P99,), "Work after the response."),
    )
    board = dashboard(
        "fastapi-route",
        "Route",
        "One route in depth: traffic, latency with trace exemplars, errors, and where its time goes.",
        ["drill-down"],
        route_multi=False,
    )
    for spec in specs:
        board = board.with_panel(panel(spec, width=12))
    return to_json(board)


def database_view() -> Dashboard:
    connections = Signal(
        "fastapi_db_pool_connections",
        Gauge(n.DB_POOL_CONNECTIONS, by=("pool", "state")),
        "short",
        "Connections per pool by state.",
    )
    specs = (
        Panel(
            1,
            "Requests with N+1 queries",
            (tips.N_PLUS_ONE,),
            "Share of each route's requests.",
            thresholds=(tips.N_PLUS_ONE_SHARE,),
        ),
        Panel(2, "Statements per request p99", (tips.QUERIES_P99,), "Per route."),
        Panel(
            3, "Connection pool wait p99", (tips.POOL_WAIT,), "Per pool.", thresholds=(tips.POOL_WAIT_P99,)
        ),
        Panel(4, "Pool connections", (connections,), "Size, checked out and overflow per pool."),
        Panel(
            5,
            "Statement duration",
            _quantiles(n.DB_QUERY_DURATION, ("operation",), "s", "statement time"),
            "By operation.",
        ),
        Panel(6, "Slow queries", (tips.SLOW_QUERIES,), "Per route."),
    )
    board = dashboard(
        "fastapi-database",
        "Database",
        "Tip 6 in depth: N+1 patterns, statements per request, pool exhaustion and slow statements.",
        ["drill-down"],
    )
    for spec in specs:
        board = board.with_panel(panel(spec, width=12))
    return to_json(board)


def runtime_view() -> Dashboard:
    tokens = Signal(
        "fastapi_threadpool_tokens",
        Gauge(n.THREADPOOL_TOKENS, by=("instance", "state")),
        "short",
        "Thread-pool tokens borrowed and in total.",
    )
    specs = (
        Panel(
            1,
            "Event loop stalled",
            (tips.STALLED,),
            "Share of time the loop did not run.",
            thresholds=(tips.STALLED_SHARE,),
        ),
        Panel(
            2,
            "Event-loop lag",
            _quantiles(n.EVENT_LOOP_LAG, ("instance",), "s", "event-loop lag"),
            "Heartbeat lateness.",
        ),
        Panel(3, "Stall locations", (tips.STALL_LOCATIONS,), "Blocking code by location.", kind="table"),
        Panel(4, "Requests caught in stalls", (tips.STALLED_ROUTES,), "Per route."),
        Panel(
            5,
            "Thread-pool queue wait p99",
            (tips.THREADPOOL_WAIT,),
            "Wait for a token.",
            thresholds=(tips.THREADPOOL_WAIT_P99,),
        ),
        Panel(6, "Thread-pool tokens", (tokens,), "Borrowed against the total."),
        Panel(
            7,
            "Requests served by sync handlers",
            (tips.SYNC_SHARE,),
            "Tip 1.",
            thresholds=(tips.SYNC_REQUEST_SHARE,),
        ),
        Panel(8, "CPU per worker", (tips.WORKER_CPU,), "Cores used by each worker (tip 4)."),
    )
    board = dashboard(
        "fastapi-runtime",
        "Event loop and thread pool",
        "Tips 1, 4 and 9 in depth: loop stalls with their code location, lag, and the thread pool.",
        ["drill-down"],
    )
    for spec in specs:
        board = board.with_panel(panel(spec, width=12))
    return to_json(board)


LINKS: tuple[tuple[str, str], ...] = (
    (tips.TIPS_DASHBOARD_UID, "Ten tips"),
    (slo.SLO_DASHBOARD_UID, "SLOs"),
    ("fastapi-route", "Route"),
    ("fastapi-database", "Database"),
    ("fastapi-runtime", "Event loop and thread pool"),
)


def dashboards() -> list[Dashboard]:
    return [ten_tips(), slo_view(), route_view(), database_view(), runtime_view()]
