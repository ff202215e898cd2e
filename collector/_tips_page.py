"""The tips page: the doctor's report of this service, live, served by the app (``tips_page=True``).

A daemon thread collects the registry ``/metrics`` serves every ``tips_interval`` seconds (under
gunicorn the multi-process one, so every worker) without formatting it as text, and keeps a ring of the
snapshots of the last ``HISTORY_SECONDS``; per snapshot it also keeps each tip's key signal over the
step, for the charts. Nothing runs per request of the app. A page view judges the tips between the
newest snapshot and the one ``tips_window`` seconds before it, with the doctor (``collector._doctor``),
in a worker thread. Behind the profile token (``profile_token``): the page shows code locations.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict, deque
from collections.abc import Mapping
from typing import Any

import anyio.to_thread

from collector import _exposition as exposition
from collector import _faults, _profile_endpoint
from collector._doctor import Report, diagnose, key_value, scrape_vectors
from collector._settings import Settings
from collector._tips_page_html import page
from collector.catalogue import TIPS
from collector.catalogue.model import Scrape

HISTORY_SECONDS = 600.0

Snapshot = tuple[float, Scrape]


class Sampler:
    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.snapshots: deque[Snapshot] = deque(maxlen=max(2, int(HISTORY_SECONDS / interval) + 1))
        # tip number -> (time, key signal over the step ending then); None where nothing was measured
        self.history: dict[int, deque[tuple[float, float | None]]] = {
            tip.number: deque(maxlen=self.snapshots.maxlen) for tip in TIPS
        }
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="collector-tips-page", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while True:
            try:
                self.sample()
            except Exception as exc:
                _faults.record("tips_page", exc)
            if self._stop.wait(self.interval):
                return

    def sample(self) -> None:
        # The registry's samples as they are: formatting and re-parsing the text would double the work.
        samples: dict[str, list[tuple[Mapping[str, str], float]]] = defaultdict(list)
        for family in exposition.families():
            for sample in family.samples:
                samples[sample.name].append((sample.labels, float(sample.value)))
        now = time.monotonic()
        snapshot = (now, dict(samples))
        with self._lock:
            previous = self.snapshots[-1] if self.snapshots else None
            self.snapshots.append(snapshot)
        if previous is not None:
            vector = scrape_vectors(previous[1], snapshot[1], now - previous[0])
            for tip in TIPS:
                self.history[tip.number].append((now, key_value(tip, vector)))

    def report(self, window: float) -> Report | None:
        """The doctor's report over the last ``window`` seconds of snapshots; None before two exist."""
        with self._lock:
            snapshots = list(self.snapshots)
        if len(snapshots) < 2:
            return None
        after = snapshots[-1]
        before = next((s for s in snapshots if after[0] - s[0] <= window), snapshots[0])
        if before is after:
            before = snapshots[-2]
        seconds = after[0] - before[0]
        vector = scrape_vectors(before[1], after[1], seconds)
        return diagnose(vector, "this service's own metrics", f"the last {seconds:.0f} s")


_sampler: Sampler | None = None


def start(settings: Settings) -> None:
    global _sampler
    if _sampler is None:
        _sampler = Sampler(settings.tips_interval)
    _sampler.start()


def stop() -> None:
    global _sampler
    if _sampler is not None:
        _sampler.stop()
        _sampler = None


def _render(settings: Settings, as_json: bool) -> tuple[bytes, str]:
    report = _sampler.report(settings.tips_window) if _sampler is not None else None
    if as_json:
        import json

        document: dict[str, Any] = report.as_dict() if report is not None else {"tips": [], "pending": True}
        return json.dumps(document).encode(), "application/json"
    history = {n: list(h) for n, h in _sampler.history.items()} if _sampler is not None else {}
    text = page(report, history, time.monotonic(), settings.tips_interval)
    return text.encode(), "text/html; charset=utf-8"


# Inline styles and SVG only: the page loads nothing from anywhere.
_CSP = (b"content-security-policy", b"default-src 'none'; style-src 'unsafe-inline'; img-src data:")


async def serve(settings: Settings, scope: dict[str, Any], receive: Any, send: Any) -> None:
    """``GET {tips_path}``: the page; ``?format=json``: the same report as JSON."""
    if not _profile_endpoint.authorized(settings, scope):
        return await _profile_endpoint.error(
            scope, send, 401, "a valid profile token is required", (b"www-authenticate", b"Bearer")
        )
    if scope["method"] not in ("GET", "HEAD"):
        return await _profile_endpoint.error(scope, send, 405, "method not allowed", (b"allow", b"GET, HEAD"))
    as_json = b"format=json" in scope.get("query_string", b"")
    body, content_type = await anyio.to_thread.run_sync(_render, settings, as_json)
    await _profile_endpoint.respond(scope, send, 200, body, content_type, _CSP)
