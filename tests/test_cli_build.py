"""`collector build`: the committed files are what the catalogue generates, and Prometheus accepts them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from collector import _cli_build, cli
from collector.catalogue import slo

ROOT = Path(__file__).resolve().parent.parent


def collector(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "collector", *args], cwd=cwd, capture_output=True, text=True, timeout=60
    )


def test_regenerating_the_committed_files_changes_nothing() -> None:
    assert _cli_build.stale(ROOT, _cli_build.generate()) == []


def test_promtool_accepts_the_generated_rule_files() -> None:
    files = sorted(str(p) for p in (ROOT / "prometheus/rules").glob("*.yml"))
    assert len(files) == 3
    result = subprocess.run(
        ["promtool", "check", "rules", *files], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_check_names_the_file_that_would_change_and_fails(tmp_path: Path) -> None:
    assert cli.main(["build", "--output", str(tmp_path)]) == 0
    assert cli.main(["build", "--output", str(tmp_path), "--check"]) == 0
    (tmp_path / "prometheus/rules/tips.yml").write_text("groups: []\n")
    result = collector("build", "--output", str(tmp_path), "--check")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "collector build: out of date, run `collector build`: prometheus/rules/tips.yml"
    ]


def test_a_fresh_build_writes_exactly_the_committed_files(tmp_path: Path) -> None:
    assert cli.main(["build", "--output", str(tmp_path)]) == 0
    written = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    committed = sorted(
        p.relative_to(ROOT)
        for d in (
            "prometheus/rules",
            "prometheus/tests",
            "docs/runbooks",
            "dashboards/fastapi-collector",
            "deploy/kubernetes",
        )
        for p in (ROOT / d).iterdir()
    )
    assert written == committed


def test_an_unwritable_output_folder_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = collector("build", "--output", str(blocker))
    assert result.returncode == 1
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stderr.startswith("collector build: cannot write ") and "Traceback" not in result.stderr


def test_build_refuses_a_latency_objective_off_the_buckets(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(slo.ROUTE_OBJECTIVES, "/reports", slo.Objective(latency_threshold=0.3))  # type: ignore[index]
    assert cli.main(["build", "--output", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "latency objective for /reports: 0.3 s is not a bucket boundary" in err[0]
    assert not any(tmp_path.iterdir())


def test_a_route_objective_gets_its_own_rules_and_tests_and_the_default_leaves_its_route_out(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(slo, "ROUTE_OBJECTIVES", {"/reports/{id}": slo.Objective(latency_threshold=2.5)})
    assert cli.main(["build", "--output", str(tmp_path)]) == 0
    recording = (tmp_path / "prometheus/rules/recording.yml").read_text()
    assert 'route!~"/reports/\\\\{id\\\\}"' in recording  # a regex escape, escaped again for PromQL
    assert 'le="2.5"' in recording and 'le="0.5"' in recording
    files = [str(p) for p in (tmp_path / "prometheus/rules").glob("*.yml")]
    result = subprocess.run(
        ["promtool", "check", "rules", *files], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "/reports/{id}" in (tmp_path / "prometheus/tests/slo.yml").read_text()
    result = subprocess.run(
        ["promtool", "test", "rules", "slo.yml", "recording.yml"],
        cwd=tmp_path / "prometheus/tests",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr


def test_a_file_no_longer_generated_is_reported_then_removed(tmp_path: Path) -> None:
    assert cli.main(["build", "--output", str(tmp_path)]) == 0
    old = tmp_path / "docs/runbooks/tip0-renamed.md"
    old.write_text(f"<!-- {_cli_build.HEADER} -->\n# gone\n")
    mine = tmp_path / "docs/runbooks/handwritten.md"
    mine.write_text("# kept: not written by collector build\n")
    result = collector("build", "--output", str(tmp_path), "--check")
    assert result.returncode == 1 and "docs/runbooks/tip0-renamed.md (no longer generated)" in result.stderr
    assert cli.main(["build", "--output", str(tmp_path)]) == 0
    assert not old.exists() and mine.exists()
