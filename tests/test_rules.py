"""prometheus/: the config files pass promtool and amtool, the rule tests pass, alerts route by severity."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from collector import catalogue
from collector.catalogue import ruletests, slo, tips

ROOT = Path(__file__).resolve().parent.parent
PROMETHEUS = ROOT / "prometheus"


def run(*cmd: str, cwd: Path = PROMETHEUS) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120)


def test_promtool_accepts_prometheus_yml_and_finds_the_generated_rule_files() -> None:
    result = run("promtool", "check", "config", "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 3 rule files found" in result.stdout


def test_prometheus_yml_scrapes_the_job_the_catalogue_names() -> None:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    assert tips.SCRAPE_JOB in [job["job_name"] for job in config["scrape_configs"]]
    assert config["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]


def test_the_rule_unit_tests_pass() -> None:
    files = sorted(p.name for p in (PROMETHEUS / "tests").glob("*.yml"))
    assert files == ["recording.yml", "slo.yml", "tips.yml"]
    result = run("promtool", "test", "rules", *files, cwd=PROMETHEUS / "tests")
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr


def test_every_alert_has_a_firing_case_and_a_silent_case_near_its_threshold() -> None:
    cases = yaml.safe_load((PROMETHEUS / "tests/tips.yml").read_text())["tests"]
    for _, alert in catalogue.alerts():
        mine = [c for c in cases if c["alert_rule_test"][-1]["alertname"] == alert.name]
        assert any(c["alert_rule_test"][-1]["exp_alerts"] for c in mine), alert.name
        assert any("silent at the threshold" in c["name"] for c in mine), alert.name


def test_every_burn_rate_rule_is_tested_at_both_windows() -> None:
    cases = yaml.safe_load((PROMETHEUS / "tests/slo.yml").read_text())["tests"]
    names = {c["name"] for c in cases}
    for alert in (slo.ERROR_ALERT, slo.LATENCY_ALERT):
        for burn in slo.BURN_WINDOWS:
            scope = f"{alert} {burn.long}/{burn.short} (every route)"
            assert {f"{scope} fires when both windows burn"} <= names
            assert {f"{scope} stays silent when only the long window burns"} <= names
            assert {f"{scope} stays silent when only the short window burns"} <= names


def test_amtool_accepts_alertmanager_yml() -> None:
    result = run("amtool", "check-config", "alertmanager.yml")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (("severity=critical", f"alertname={slo.LATENCY_ALERT}", "route=/orders"), "pager"),
        (("severity=ticket", f"alertname={slo.ERROR_ALERT}", "route=/orders"), "ticket"),
        (("severity=warning", "alertname=FastAPITip9EventLoopBlocked", "tip=9"), "ticket"),
        (("severity=ticket", "alertname=FastAPITip3ValidationDominatesLatency", "tip=3"), "ticket"),
    ],
)
def test_symptoms_page_and_causes_make_tickets(labels: tuple[str, ...], receiver: str) -> None:
    result = run(
        "amtool",
        "config",
        "routes",
        "test",
        "--config.file=alertmanager.yml",
        f"--verify.receivers={receiver}",
        *labels,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("render", "value", "expected"),
    [
        (ruletests.humanize, 0.5, "500m"),
        (ruletests.humanize, 1234.0, "1.234k"),
        (ruletests.humanize_percentage, 0.075, "7.5%"),
        (ruletests.humanize_duration, 0.1, "100ms"),
        (ruletests.humanize_duration, 3725.0, "1h 2m 5s"),
    ],
)
def test_annotations_render_as_prometheus_template_functions_do(
    render: object, value: float, expected: str
) -> None:
    assert render(value) == expected  # type: ignore[operator]


def test_a_template_form_the_generator_cannot_render_is_refused() -> None:
    with pytest.raises(catalogue.CatalogueError):
        ruletests.render('{{ $value | printf "%.2f" }}', {}, 1.0)
