"""Dashboards: built from the catalogue, validated as data, and every query run against a real Prometheus."""

from __future__ import annotations

import copy
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from collector import _dashboards, catalogue
from collector._dashboards import validate
from collector.catalogue import names, slo, tips
from tests.conftest import ROOT, Server, free_port

COMMITTED = _dashboards.load(ROOT / _dashboards.DIRECTORY)
BY_UID = {d["uid"]: d for d in COMMITTED}


def panel_by_id(dashboard: dict[str, Any], panel_id: int) -> dict[str, Any]:
    return next(dict(p) for p in validate.panels(dashboard) if p.get("id") == panel_id)


def test_the_committed_dashboards_pass_the_validator() -> None:
    assert sorted(BY_UID) == sorted(
        [
            tips.TIPS_DASHBOARD_UID,
            slo.SLO_DASHBOARD_UID,
            "fastapi-route",
            "fastapi-database",
            "fastapi-runtime",
        ]
    )
    assert validate.problems(COMMITTED) == []


def test_every_catalogue_panel_is_on_the_ten_tips_dashboard_under_its_id() -> None:
    ten_tips = BY_UID[tips.TIPS_DASHBOARD_UID]
    for _, spec in catalogue.panels():
        built = panel_by_id(ten_tips, spec.id)
        assert built["title"] == spec.title
        assert [t["expr"] for t in built["targets"]] == [
            s.expr.promql("$__rate_interval", _matchers(s)) for s in spec.signals
        ]
    for _, alert in catalogue.alerts():
        assert panel_by_id(ten_tips, alert.panel.id)["fieldConfig"]["defaults"]["thresholds"]["steps"][-1]
    slo_board = BY_UID[slo.SLO_DASHBOARD_UID]
    assert all(panel_by_id(slo_board, spec.id)["title"] == spec.title for spec in slo.PANELS)


def _matchers(signal: Any) -> tuple[tuple[str, str, str], ...]:
    from collector._dashboards import build

    return build.matchers(signal.expr)


def test_each_tip_row_has_its_alert_state_and_the_overview_lists_alerts_from_prometheus() -> None:
    ten_tips = BY_UID[tips.TIPS_DASHBOARD_UID]
    rows = [p["title"] for p in ten_tips["panels"] if p["type"] == "row"]
    assert len(rows) == 10 and rows[0].startswith("Tip 1:")
    for tip in tips.TIPS:
        state = panel_by_id(ten_tips, tip.number * 100 + 99)
        assert f'tip="{tip.number}"' in state["targets"][0]["expr"]
    alert_list = next(p for p in ten_tips["panels"] if p["type"] == "alertlist")
    assert alert_list["options"]["datasource"] == _dashboards.PROMETHEUS_NAME


def test_latency_panels_ask_for_exemplars_and_only_they_do() -> None:
    for dashboard in COMMITTED:
        for panel in validate.panels(dashboard):
            for target in panel.get("targets") or ():
                expr = target["expr"]
                latency = expr.startswith("histogram_quantile") and f"{names.REQUESTS}_bucket" in expr
                assert bool(target.get("exemplar")) == (latency and not target.get("instant")), panel["title"]
    assert panel_by_id(BY_UID[tips.TIPS_DASHBOARD_UID], tips.SLOW_PANEL.id)["targets"][0]["exemplar"] is True


def test_provisioning_uses_the_uids_and_names_the_dashboards_expect() -> None:
    sources = yaml.safe_load((ROOT / "grafana/provisioning/datasources/datasources.yml").read_text())
    by_uid = {s["uid"]: s for s in sources["datasources"]}
    prometheus = by_uid[_dashboards.PROMETHEUS_UID]
    assert prometheus["type"] == "prometheus" and prometheus["name"] == _dashboards.PROMETHEUS_NAME
    [destination] = prometheus["jsonData"]["exemplarTraceIdDestinations"]
    assert destination["name"] == _dashboards.EXEMPLAR_LABEL
    assert by_uid[destination["datasourceUid"]]["type"] == "tempo"
    assert destination["datasourceUid"] == _dashboards.TRACES_UID
    text = (ROOT / "grafana/provisioning/datasources/datasources.yml").read_text()
    assert "{$__" not in text and "[$__" not in text  # Grafana would expand a single $ as a variable
    providers = yaml.safe_load((ROOT / "grafana/provisioning/dashboards/dashboards.yml").read_text())
    [provider] = providers["providers"]
    assert provider["options"]["foldersFromFilesStructure"] is True
    assert (ROOT / _dashboards.DIRECTORY).parent.name == "dashboards"


# Broken dashboards: the validator names the panel and the reason ------------------------------------
def broken(change: Callable[[dict[str, Any]], None]) -> list[str]:
    dashboards = copy.deepcopy(COMMITTED)
    change(ten_tips_of(dashboards))
    return [str(p) for p in validate.problems(dashboards)]


def ten_tips_of(dashboards: list[dict[str, Any]]) -> dict[str, Any]:
    return next(d for d in dashboards if d["uid"] == tips.TIPS_DASHBOARD_UID)


def target(dashboard: dict[str, Any], panel_id: int) -> dict[str, Any]:
    panel = next(p for p in validate.panels(dashboard) if p.get("id") == panel_id)
    return dict(panel["targets"][0])


def test_a_broken_expression_names_the_panel_and_promtools_reason() -> None:
    def change(d: dict[str, Any]) -> None:
        next(p for p in d["panels"] if p.get("id") == 601)["targets"][0]["expr"] = (
            "sum(rate(x[$__rate_interval])"
        )

    problems = broken(change)
    assert len(problems) == 1
    assert problems[0].startswith(
        f'dashboard {tips.TIPS_DASHBOARD_UID}, panel 601 "Requests with N+1 queries": query A does not parse:'
    )
    assert "unclosed left parenthesis" in problems[0]


def test_a_missing_unit_names_the_panel() -> None:
    def change(d: dict[str, Any]) -> None:
        del next(p for p in d["panels"] if p.get("id") == 901)["fieldConfig"]["defaults"]["unit"]

    assert broken(change) == [f'dashboard {tips.TIPS_DASHBOARD_UID}, panel 901 "Event loop stalled": no unit']


def test_a_duplicate_dashboard_uid_is_named() -> None:
    dashboards = copy.deepcopy(COMMITTED)
    dashboards[-1]["uid"] = dashboards[0]["uid"]
    problems = [str(p) for p in validate.problems(dashboards)]
    assert f"dashboard {dashboards[0]['uid']}: uid {dashboards[0]['uid']} is used by 2 dashboards" in problems


def test_duplicate_refids_panel_ids_fixed_ranges_and_foreign_datasources_are_named() -> None:
    def change(d: dict[str, Any]) -> None:
        panel = next(p for p in d["panels"] if p.get("id") == 902)
        panel["targets"].append({**panel["targets"][0], "expr": "up[5m]"})
        next(p for p in d["panels"] if p.get("id") == 903)["id"] = 904
        next(p for p in d["panels"] if p.get("id") == 101)["datasource"] = {"type": "loki", "uid": "logs"}
        next(p for p in d["panels"] if p.get("id") == 102)["description"] = ""
        next(p for p in d["panels"] if p.get("id") == 103)["targets"][0]["refId"] = ""
        next(p for p in d["panels"] if p.get("id") == 201)["targets"][0]["expr"] += " + on() vector($nope)"

    problems = "\n".join(broken(change))
    assert 'panel 902 "Thread-pool queue wait p99": refId A is used 2 times' in problems
    assert "panel 902" in problems and "uses range [5m], not [$__rate_interval]" in problems
    assert "panel id 904 is used 2 times" in problems
    assert 'panel 101 "Requests served by sync handlers": datasource is not ${datasource}' in problems
    assert 'panel 102 "Sync routes": no description' in problems
    assert 'panel 103 "Event-loop lag p99": a query has an empty refId' in problems
    assert "panel 201" in problems and "uses $nope, which the dashboard does not define" in problems


def test_build_refuses_invalid_dashboards_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from collector import _cli_build
    from collector.catalogue.model import CatalogueError

    original = _dashboards.dashboards

    def without_unit() -> list[dict[str, Any]]:
        built = original()
        del built[0]["panels"][2]["fieldConfig"]["defaults"]["unit"]
        return built

    monkeypatch.setattr(_dashboards, "dashboards", without_unit)
    with pytest.raises(CatalogueError) as error:
        _cli_build.generate()
    assert str(error.value).startswith("dashboards invalid: dashboard fastapi-ten-tips, panel 199")
    assert "\n" not in str(error.value)


# Every query against a real Prometheus scraping real apps ---------------------------------------------
SCRAPE_SECONDS = 1
RATE_WINDOW = "10s"
VALUES = {"job": ".*", "instance": ".*", "route": ".*", "__rate_interval": RATE_WINDOW}
# Panels that must return data after the load below: (dashboard uid, panel id).
KEY_PANELS = {
    (tips.TIPS_DASHBOARD_UID, tips.SYNC_PANEL.id),
    (tips.TIPS_DASHBOARD_UID, tips.STALL_PANEL.id),
    (tips.TIPS_DASHBOARD_UID, tips.SLOW_PANEL.id),
    (tips.TIPS_DASHBOARD_UID, tips.WORKERS_PANEL.id),
    (tips.TIPS_DASHBOARD_UID, tips.MIDDLEWARE_PANEL.id),
    (tips.TIPS_DASHBOARD_UID, 103),  # event-loop lag
    (tips.TIPS_DASHBOARD_UID, 199),  # tip 1 alert state
    (slo.SLO_DASHBOARD_UID, 1),  # error ratio: /raise answers 500
    (slo.SLO_DASHBOARD_UID, 3),  # latency p99
    ("fastapi-route", 1),
    ("fastapi-route", 2),
    ("fastapi-runtime", 1),
    ("fastapi-runtime", 6),
}
LOAD_PATHS = (
    "/items/1",
    "/api/users/2",
    "/sync-sleep?seconds=0.01",
    "/async-sleep?seconds=0.02",
    "/raise",
    "/background",
    "/stream?chunks=2",
)


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[Callable[[list[str]], str]]:
    started: list[subprocess.Popen[bytes]] = []

    def start(targets: list[str]) -> str:
        port = free_port()
        config = {
            "global": {"scrape_interval": f"{SCRAPE_SECONDS}s"},
            "scrape_configs": [
                {"job_name": f"app{i}", "static_configs": [{"targets": [target]}]}
                for i, target in enumerate(targets)
            ],
        }
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        log = (tmp_path / "prometheus.log").open("wb")
        process = subprocess.Popen(
            [
                "/usr/bin/prometheus",
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--enable-feature=exemplar-storage",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        started.append(process)
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/-/ready", timeout=2).status_code == 200:
                    return url
            except httpx.HTTPError:
                time.sleep(0.2)
        raise RuntimeError((tmp_path / "prometheus.log").read_text())

    yield start
    for process in started:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(15)


def drive(servers: list[Server], paths: tuple[str, ...], seconds: float) -> int:
    """Requests from two threads for ``seconds``; returns how many were answered."""
    stop = time.monotonic() + seconds
    done = [0]

    def loop(offset: int) -> None:
        with httpx.Client(timeout=10) as client:
            i = offset
            while time.monotonic() < stop:
                server = servers[i % len(servers)]
                try:
                    client.get(server.url + paths[i % len(paths)])
                    done[0] += 1
                except httpx.HTTPError:
                    pass
                i += 1

    threads = [threading.Thread(target=loop, args=(n,)) for n in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return done[0]


def run_query(client: httpx.Client, query: validate.Query) -> dict[str, Any]:
    """The query as Grafana sends it: series for a variable, instant or range for a panel."""
    expr = validate.substitute(query.expr, VALUES)
    if query.panel.startswith("variable"):
        response = client.get("/api/v1/series", params={"match[]": expr})
    elif query.instant:
        response = client.get("/api/v1/query", params={"query": expr})
    else:
        end = time.time()
        params = {"query": expr, "start": end - 30, "end": end, "step": SCRAPE_SECONDS}
        response = client.get("/api/v1/query_range", params=params)
    body: dict[str, Any] = response.json()
    return body


def test_every_dashboard_query_runs_on_prometheus_and_the_key_ones_return_data(
    serve: Callable[..., Server], prometheus: Callable[[list[str]], str]
) -> None:
    # Every request traced, so the latency histogram carries trace-id exemplars.
    env = {"COLLECTOR_INTERNALS_SAMPLE_RATIO": "1", "COLLECTOR_TRACING": "on"}
    env["COLLECTOR_TRACE_SAMPLE_RATIO"] = "1"
    core = serve("tests.apps.core:app", env=env)
    url = prometheus([core.url.removeprefix("http://")])
    blocker = threading.Thread(target=drive, args=([core], ("/blocking",), 10.0))
    blocker.start()
    answered = drive([core], LOAD_PATHS, 12.0)
    blocker.join()
    assert answered > 50

    empty, failed = [], []
    every = [q for d in COMMITTED for q in validate.queries(d)]
    with httpx.Client(base_url=url, timeout=30) as client, ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda q: run_query(client, q), every))
    for query, body in zip(every, answers, strict=True):
        if body.get("status") != "success":
            failed.append(f"{query.dashboard} {query.panel} {query.ref_id}: {body.get('error')}")
            continue
        data = body["data"]
        if not (data if isinstance(data, list) else data["result"]):
            empty.append((query.dashboard, query.panel))
    assert failed == []
    print(f"{len(empty)} queries without data after the load:", *sorted(empty), sep="\n  ")
    with_data = {
        (uid, p["id"])
        for uid, d in BY_UID.items()
        for p in validate.panels(d)
        if p.get("targets") and (uid, validate._label(p)) not in empty
    }
    assert with_data >= KEY_PANELS, sorted(KEY_PANELS - with_data)
    assert ("fastapi-ten-tips", "variable route") not in empty

    # One route chosen, as Grafana writes a single value into =~: the template's braces stay literal.
    route_board = BY_UID["fastapi-route"]
    for panel_id in (1, 2):
        expr = target(route_board, panel_id)["expr"]
        query = validate.substitute(expr, {**VALUES, "route": "/items/{item_id}"})
        result = httpx.get(f"{url}/api/v1/query", params={"query": query}, timeout=30).json()
        assert {s["metric"].get("route") for s in result["data"]["result"]} == {"/items/{item_id}"}

    latency = target(BY_UID[tips.TIPS_DASHBOARD_UID], tips.SLOW_PANEL.id)
    end = time.time()
    exemplars = httpx.get(
        f"{url}/api/v1/query_exemplars",
        params={"query": validate.substitute(latency["expr"], VALUES), "start": end - 60, "end": end},
        timeout=30,
    ).json()
    labels = [e["labels"] for series in exemplars["data"] for e in series["exemplars"]]
    assert labels and all(_dashboards.EXEMPLAR_LABEL in label for label in labels)


def test_the_alert_state_panel_reads_firing_as_2_pending_as_1_and_quiet_as_0(tmp_path: Path) -> None:
    state = {
        tip.number: target(BY_UID[tips.TIPS_DASHBOARD_UID], tip.number * 100 + 99)["expr"]
        for tip in tips.TIPS
    }
    values = {"job": "shop"}
    series = [
        ('ALERTS{alertname="FastAPITip9EventLoopBlocked",alertstate="firing",tip="9",job="shop"}', "1x5"),
        ('ALERTS{alertname="FastAPITip6NPlusOne",alertstate="pending",tip="6",job="shop",route="/a"}', "1x5"),
        ('ALERTS{alertname="FastAPITip1SyncHandlersHot",alertstate="firing",tip="1",job="other"}', "1x5"),
    ]
    expected = {9: 2, 6: 1, 1: 0, 5: 0}
    tests = [
        {
            "expr": validate.substitute(state[number], values),
            "eval_time": "2m",
            "exp_samples": [{"labels": "{}", "value": value}],
        }
        for number, value in expected.items()
    ]
    (tmp_path / "empty.yml").write_text("groups: []\n")
    case = {
        "rule_files": ["empty.yml"],
        "tests": [
            {
                "interval": "1m",
                "input_series": [{"series": s, "values": v} for s, v in series],
                "promql_expr_test": tests,
            }
        ],
    }
    (tmp_path / "test.yml").write_text(yaml.safe_dump(case))
    result = subprocess.run(
        ["promtool", "test", "rules", "test.yml"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
