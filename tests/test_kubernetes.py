"""Kubernetes manifests carry exactly the rules and dashboards of the plain files."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import yaml

from collector import _dashboards, _kubernetes

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = ROOT / _kubernetes.DIRECTORY


def manifests(kind: str) -> list[dict[str, Any]]:
    found = [yaml.safe_load(p.read_text()) for p in sorted(MANIFESTS.glob("*.yaml"))]
    return [m for m in found if m.get("kind") == kind]


def test_prometheus_rules_hold_exactly_the_groups_of_the_rule_files() -> None:
    plain = [
        group
        for path in sorted((ROOT / "prometheus/rules").glob("*.yml"))
        for group in yaml.safe_load(path.read_text())["groups"]
    ]
    operator = [group for rule in manifests("PrometheusRule") for group in rule["spec"]["groups"]]
    key = lambda group: group["name"]  # noqa: E731
    assert sorted(operator, key=key) == sorted(plain, key=key)
    assert all(r["metadata"]["labels"]["release"] == _kubernetes.RELEASE for r in manifests("PrometheusRule"))


def test_config_maps_hold_exactly_the_dashboards_labelled_for_the_sidecar() -> None:
    committed = {d["uid"]: d for d in _dashboards.load(ROOT / _dashboards.DIRECTORY)}
    maps = manifests("ConfigMap")
    assert all(m["metadata"]["labels"]["grafana_dashboard"] == "1" for m in maps)
    assert all(m["metadata"]["annotations"]["grafana_folder"] == _dashboards.FOLDER for m in maps)
    carried = {}
    for config_map in maps:
        [(name, text)] = config_map["data"].items()
        dashboard = json.loads(text)
        assert name == f"{dashboard['uid']}.json"
        carried[dashboard["uid"]] = dashboard
    assert carried == committed


def test_the_kustomization_lists_every_manifest_and_the_service_monitor_scrapes_metrics() -> None:
    kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    files = sorted(p.name for p in MANIFESTS.glob("*.yaml") if p.name != "kustomization.yaml")
    assert kustomization["resources"] == files
    [monitor] = manifests("ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"


def test_promtool_accepts_the_rules_inside_the_prometheus_rules(tmp_path: Path) -> None:
    files = []
    for rule in manifests("PrometheusRule"):
        path = tmp_path / f"{rule['metadata']['name']}.yml"
        path.write_text(yaml.safe_dump(rule["spec"]))
        files.append(str(path))
    result = subprocess.run(
        ["promtool", "check", "rules", *files], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
