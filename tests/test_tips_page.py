"""The tips page: off by default, behind the token, live from the sampler; checked in headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from collector._settings import ConfigError, load
from tests.test_doctor import TOKEN, Shop, _stop, start_shop
from tests.test_doctor import load as drive

CHROMIUM = Path("/usr/bin/chromium")
PAGE = "/_collector/tips"


def chromium(tmp: Path, url: str, *action: str) -> str:
    profile = tempfile.mkdtemp(dir=tmp, prefix="chromium-")
    result = subprocess.run(
        [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--no-first-run",
            "--disable-sync",
            "--disable-dev-shm-usage",
            f"--user-data-dir={profile}",
            "--window-size=1400,1500",
            *action,
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    shutil.rmtree(profile, ignore_errors=True)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def statuses(dom: str) -> dict[int, str]:
    return {int(n): s for n, s in re.findall(r'data-tip="(\d+)" data-status="([a-z ]+)"', dom)}


def test_the_page_needs_the_profile_token() -> None:
    with pytest.raises(ConfigError, match="tips_page needs profile_token"):
        load(tips_page=True)
    assert load().tips_page is False


def test_the_page_is_404_when_off_and_401_without_the_token(serve) -> None:  # type: ignore[no-untyped-def]
    off = serve("tests.apps.core:app")
    assert off.get(PAGE, params={"token": "x"}).status_code == 404
    on = serve(
        "tests.apps.core:app",
        env={"COLLECTOR_TIPS_PAGE": "true", "COLLECTOR_PROFILE_TOKEN": "tips-page-secret-0123456789"},
    )
    assert on.get(PAGE).status_code == 401
    assert on.get(PAGE, params={"token": "wrong"}).status_code == 401
    assert on.get(PAGE, headers={"Authorization": "Bearer wrong"}).status_code == 401
    page = on.get(PAGE, headers={"Authorization": "Bearer tips-page-secret-0123456789"})
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    assert "/_collector/tips" not in on.get("/metrics").text  # the page is not one of the app's routes


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Shop]:
    tmp = tmp_path_factory.mktemp("tips-page")
    shop = start_shop(
        tmp, COLLECTOR_TIPS_PAGE="true", COLLECTOR_TIPS_INTERVAL="2", COLLECTOR_TIPS_WINDOW="10"
    )
    try:
        yield shop
    finally:
        _stop(shop.process)


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs /usr/bin/chromium")
@pytest.mark.e2e
@pytest.mark.timeout(600)
def test_the_page_marks_the_broken_tips_after_antipatterns_and_none_after_fixed(
    shop: Shop, tmp_path: Path
) -> None:
    url = f"{shop.url}{PAGE}?token={TOKEN}"
    drive(shop, "antipatterns", 12)
    dom = chromium(tmp_path, url, "--dump-dom")
    broken = statuses(dom)
    assert sorted(broken) == list(range(1, 11)), broken
    assert sum(s == "broken" for s in broken.values()) >= 3, broken
    assert broken[5] == "broken" and broken[6] == "broken", broken  # misses every look-up; N+1
    assert dom.count("<svg") == 10 and "<script" not in dom
    chromium(tmp_path, url, "--screenshot=" + str(tmp_path / "tips-page-antipatterns.png"))
    assert (tmp_path / "tips-page-antipatterns.png").stat().st_size > 20_000

    # The window is 10 s of fixed traffic; on a starved machine the loop itself stalls (tip 9) now and
    # then, so the page gets a few windows to show none broken.
    for _ in range(3):
        drive(shop, "fixed", 12)
        dom = chromium(tmp_path, url, "--dump-dom")
        fixed = statuses(dom)
        assert sorted(fixed) == list(range(1, 11))
        if "broken" not in fixed.values():
            break
    assert [n for n, s in fixed.items() if s == "broken"] == [], fixed
    assert "No tip broken." in dom
    chromium(tmp_path, url, "--screenshot=" + str(tmp_path / "tips-page-fixed.png"))
    assert (tmp_path / "tips-page-fixed.png").stat().st_size > 20_000


@pytest.mark.timeout(300)
def test_the_page_counts_every_gunicorn_worker_as_metrics_does(shop: Shop) -> None:
    deadline = time.monotonic() + 60
    while True:  # until every worker has booted and the page holds two samples of them
        metrics = httpx.get(shop.metrics_url, timeout=60).text
        report = httpx.get(f"{shop.url}{PAGE}", params={"token": TOKEN, "format": "json"}, timeout=60).json()
        live = re.search(r"^fastapi_workers (\S+)$", metrics, re.M)
        cores = re.search(r"^fastapi_cpu_cores (\S+)$", metrics, re.M)
        tip4 = [t for t in report["tips"] if t["tip"] == 4 and t["evidence"].get("Workers per core")]
        seen = tip4[0]["evidence"]["Workers per core"][0]["value"] if tip4 else None
        if live and cores and float(live.group(1)) == 2 and seen == pytest.approx(2 / float(cores.group(1))):
            break
        if time.monotonic() > deadline:
            break
        time.sleep(1)
    workers = next(t for t in report["tips"] if t["tip"] == 4)
    (ratio,) = workers["evidence"]["Workers per core"]
    live = float(re.search(r"^fastapi_workers (\S+)$", metrics, re.M).group(1))  # type: ignore[union-attr]
    cores = float(re.search(r"^fastapi_cpu_cores (\S+)$", metrics, re.M).group(1))  # type: ignore[union-attr]
    assert live == 2
    assert ratio["value"] == pytest.approx(live / cores)
    assert json.dumps(report)  # the JSON view is the doctor's report
