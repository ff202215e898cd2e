"""docker-compose.yml: valid against the Compose specification, every mounted path present, the
services the README names all there, images pinned, health checks, named volumes, few ports."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from collector import _dashboards

ROOT = Path(__file__).resolve().parent.parent
COMPOSE: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES: dict[str, dict[str, Any]] = COMPOSE["services"]
PUBLISHED = {"app": 8000, "grafana": 3000, "prometheus": 9090, "alertmanager": 9093}


def binds(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(host path, container path) of every bind mount (a volume entry starting with . or /)."""
    out = []
    for volume in service.get("volumes", ()):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            out.append((source, target))
    return out


def test_the_file_is_valid_against_the_compose_specification_offline() -> None:
    checker = Path(sys.executable).with_name("check-jsonschema")
    unreachable = "http://127.0.0.1:9"  # a proxy nobody listens on: any download would fail
    env = {**os.environ, "HTTP_PROXY": unreachable, "HTTPS_PROXY": unreachable, "NO_PROXY": ""}
    result = subprocess.run(
        [str(checker), "--builtin-schema", "vendor.compose-spec", "docker-compose.yml"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_schema_check_catches_a_broken_file(tmp_path: Path) -> None:
    broken = {**COMPOSE, "services": {"app": {**SERVICES["app"], "ports": {"not": "a list"}}}}
    (tmp_path / "docker-compose.yml").write_text(yaml.safe_dump(broken))
    checker = Path(sys.executable).with_name("check-jsonschema")
    result = subprocess.run(
        [str(checker), "--builtin-schema", "vendor.compose-spec", "docker-compose.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 1


def test_every_mounted_path_and_build_input_exists() -> None:
    missing = [src for s in SERVICES.values() for src, _ in binds(s) if not (ROOT / src).exists()]
    assert missing == []
    build = SERVICES["app"]["build"]
    dockerfile = ROOT / build["context"] / build["dockerfile"]
    copied = re.findall(r"^COPY (?!--from)(.+) \S+$", dockerfile.read_text(), re.M)
    assert copied and all((ROOT / path).exists() for line in copied for path in line.split())


def test_the_services_the_readme_names_are_exactly_the_compose_services() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## The compose stack", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"^\| `(\w+)` \|", section, re.M))
    assert named == set(SERVICES)


def test_images_are_pinned_and_every_service_has_a_health_check() -> None:
    for name, service in SERVICES.items():
        assert "healthcheck" in service, name
        if "image" in service:
            tag = service["image"].rsplit(":", 1)[-1]
            assert ":" in service["image"] and tag != "latest" and re.search(r"\d+\.\d+", tag), name
    dockerfile = (
        ROOT / SERVICES["app"]["build"]["context"] / SERVICES["app"]["build"]["dockerfile"]
    ).read_text()
    assert all(":" in ref and "latest" not in ref for ref in re.findall(r"(?:FROM|--from=)(\S+)", dockerfile))


def test_only_the_ports_a_user_opens_are_published_and_only_on_localhost() -> None:
    published = {name: s.get("ports", []) for name, s in SERVICES.items() if s.get("ports")}
    assert {name: [int(p.split(":")[-1]) for p in ports] for name, ports in published.items()} == {
        name: [port] for name, port in PUBLISHED.items()
    }
    assert all(p.startswith("127.0.0.1:") for ports in published.values() for p in ports)


def test_data_lives_in_named_volumes_that_are_declared() -> None:
    used = {
        v.split(":")[0]
        for s in SERVICES.values()
        for v in s.get("volumes", ())
        if not v.startswith((".", "/"))
    }
    assert used == set(COMPOSE["volumes"])
    assert {"postgres", "prometheus", "grafana", "tempo", "alertmanager"} <= {
        name for name, s in SERVICES.items() if any(v.split(":")[0] in used for v in s.get("volumes", ()))
    }


def test_prometheus_keeps_exemplars_and_reads_the_projects_folder() -> None:
    prometheus = SERVICES["prometheus"]
    assert "--enable-feature=exemplar-storage" in prometheus["command"]
    assert ("./prometheus", "/etc/prometheus") in binds(prometheus)
    assert "--config.file=/etc/prometheus/prometheus.yml" in prometheus["command"]


def test_prometheus_yml_scrapes_the_app_and_alerts_alertmanager_by_service_name() -> None:
    config_file = ROOT / "prometheus/prometheus.yml"
    if not config_file.exists():
        pytest.skip("prometheus/prometheus.yml is not on this branch yet")
    text = config_file.read_text()
    assert "app:8000" in text and "alertmanager:9093" in text


def test_grafana_loads_the_provisioning_and_the_dashboards_where_the_provider_looks() -> None:
    grafana = binds(SERVICES["grafana"])
    assert ("./grafana/provisioning", "/etc/grafana/provisioning") in grafana
    provider = yaml.safe_load((ROOT / "grafana/provisioning/dashboards/dashboards.yml").read_text())
    path = provider["providers"][0]["options"]["path"]
    assert ("./dashboards", path) in grafana
    home = SERVICES["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    relative = Path(home).relative_to(path)
    assert (ROOT / "dashboards" / relative).is_file() and relative.parent.name == _dashboards.FOLDER


def test_the_app_sends_traces_to_tempo_and_runs_multiprocess() -> None:
    app = SERVICES["app"]["environment"]
    assert app["OTEL_EXPORTER_OTLP_ENDPOINT"].startswith("http://tempo:4318")
    tempo = yaml.safe_load((ROOT / "deploy/compose/tempo.yaml").read_text())
    assert tempo["distributor"]["receivers"]["otlp"]["protocols"]["http"]["endpoint"].endswith(":4318")
    assert app["PROMETHEUS_MULTIPROC_DIR"] in {t.split(":")[0] for t in SERVICES["app"]["tmpfs"]}


def test_alertmanager_accepts_its_configuration() -> None:
    [(source, _)] = [b for b in binds(SERVICES["alertmanager"]) if b[1].endswith(".yml")]
    result = subprocess.run(
        ["amtool", "check-config", str(ROOT / source)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
