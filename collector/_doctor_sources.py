"""Where the doctor reads from: Prometheus' HTTP API, two scrapes of an app's ``/metrics``, the profiles.

Standard library HTTP only (the CLI must not need the dev dependencies). Every failure is a
``SourceError`` with one line that says what answered and what was expected.
"""

from __future__ import annotations

import json
import math
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from collector._doctor import SourceError, VectorOf, scrape_vectors
from collector.catalogue.model import Expr, Matcher, Scrape, Vector, parse_scrape

TIMEOUT = 10.0


def _get(url: str, what: str, headers: dict[str, str] | None = None, shown: str = "") -> tuple[str, str]:
    """(content type, body) of a GET, or a one-line ``SourceError`` naming ``shown`` (default: the URL)."""
    shown = shown or url
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise SourceError(f"{what} URL {url!r} is not an http(s) URL")
    request = urllib.request.Request(url, headers={"User-Agent": "collector-doctor", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            return response.headers.get("Content-Type", ""), response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        body = exc.read().decode("utf-8", "replace")
        raise _HTTPStatus(exc.code, exc.headers.get("Content-Type", ""), body) from None
    except urllib.error.URLError as exc:
        raise SourceError(f"cannot reach {what} at {shown}: {exc.reason}") from None
    except (OSError, ValueError) as exc:
        raise SourceError(f"cannot read {what} at {shown}: {exc}") from None


class _HTTPStatus(Exception):
    def __init__(self, status: int, content_type: str, body: str) -> None:
        super().__init__(status)
        self.status, self.content_type, self.body = status, content_type, body


def _first_line(text: str, limit: int = 160) -> str:
    line = " ".join(text.strip().split())
    return line[:limit] + ("…" if len(line) > limit else "")


class Prometheus:
    """Instant queries against Prometheus' HTTP API, each one the catalogue's own PromQL."""

    def __init__(self, url: str, job: str | None, window: str) -> None:
        self.url = url.rstrip("/")
        self.window = window
        self.extra: tuple[Matcher, ...] = (("job", "=", job),) if job is not None else ()
        self._cache: dict[Expr, Vector] = {}

    def _api(self, path: str, params: dict[str, str]) -> dict[str, Any]:
        """The ``data`` of a successful answer of the HTTP API at ``path``."""
        url = f"{self.url}{path}?" + urllib.parse.urlencode(params)
        try:
            content_type, body = _get(url, "Prometheus", shown=self.url)
        except _HTTPStatus as exc:
            content_type, body = exc.content_type, exc.body
            if "json" not in content_type:
                raise SourceError(
                    f"Prometheus at {self.url} answered HTTP {exc.status} ({content_type or 'no type'}), "
                    "not its API: is this the Prometheus base URL?"
                ) from None
        try:
            answer = json.loads(body)
        except ValueError:
            raise SourceError(
                f"Prometheus at {self.url} answered {content_type or 'something'} that is not JSON "
                f"({_first_line(body, 60)!r}): is this the Prometheus base URL?"
            ) from None
        if not isinstance(answer, dict) or "status" not in answer:
            raise SourceError(f"{self.url} answered JSON that is not the Prometheus API")
        if answer["status"] != "success":
            error = _first_line(str(answer.get("error", "unknown error")))
            raise SourceError(
                f"Prometheus at {self.url} answered an error: {answer.get('errorType')}: {error}"
            )
        data = answer.get("data")
        return data if isinstance(data, dict) else {}

    def query(self, promql: str) -> list[dict[str, Any]]:
        data = self._api("/api/v1/query", {"query": promql})
        if data.get("resultType") != "vector":
            raise SourceError(f"Prometheus at {self.url} answered a {data.get('resultType')}, not a vector")
        return list(data.get("result") or [])

    def alerts(self) -> list[dict[str, Any]]:
        """The pending and firing alerts (``/api/v1/alerts``): labels, state and ``activeAt`` each."""
        alerts = self._api("/api/v1/alerts", {}).get("alerts")
        if not isinstance(alerts, list):
            raise SourceError(f"Prometheus at {self.url} answered alerts that are not a list")
        return [alert for alert in alerts if isinstance(alert, dict)]

    def alert_rules(self) -> set[str]:
        """The names of the alerting rules loaded (``/api/v1/rules``), active or not."""
        groups = self._api("/api/v1/rules", {"type": "alert"}).get("groups") or []
        return {
            str(rule.get("name"))
            for group in groups
            if isinstance(group, dict)
            for rule in group.get("rules") or []
            if isinstance(rule, dict)
        }

    def vector(self, expr: Expr) -> Vector:
        if expr not in self._cache:
            out: Vector = {}
            for item in self.query(expr.promql(self.window, self.extra)):
                value = float(item["value"][1])
                if not math.isnan(value):
                    metric = item.get("metric", {})
                    out[tuple((label, metric.get(label, "")) for label in expr.labels)] = value
            self._cache[expr] = out
        return self._cache[expr]

    def check_job(self, job: str | None) -> list[str]:
        """The jobs with collector metrics in the window; a ``SourceError`` when the wanted one has none."""
        rows = self.query(f'count by (job) (last_over_time({{__name__=~"fastapi_.+"}}[{self.window}]))')
        jobs = sorted(str(row.get("metric", {}).get("job", "")) for row in rows)
        if not jobs:
            raise SourceError(f"Prometheus at {self.url} has no fastapi_* series in the last {self.window}")
        if job is not None and job not in jobs:
            seen = ", ".join(jobs)
            raise SourceError(
                f"job {job!r} has no fastapi_* series in the last {self.window} (jobs seen: {seen})"
            )
        return jobs


def scrape(url: str) -> Scrape:
    """One parsed scrape of an app's ``/metrics``."""
    try:
        content_type, body = _get(url, "metrics", {"Accept": "text/plain; version=0.0.4"})
    except _HTTPStatus as exc:
        raise SourceError(f"{url} answered HTTP {exc.status}: {_first_line(exc.body, 80)!r}") from None
    try:
        samples = parse_scrape(body)
    except ValueError:
        raise SourceError(
            f"{url} did not answer Prometheus text ({content_type or 'no content type'}: "
            f"{_first_line(body, 60)!r})"
        ) from None
    if not any(name.startswith("fastapi_") for name in samples):
        raise SourceError(f"{url} has no fastapi_* metrics: is collector.instrument(app) on?")
    return samples


def two_scrapes(url: str, interval: float) -> tuple[VectorOf, float]:
    """Scrape, wait ``interval`` seconds, scrape again: a source and the seconds between the scrapes."""
    before = scrape(url)
    started = time.monotonic()
    time.sleep(interval)
    after = scrape(url)
    seconds = time.monotonic() - started
    return scrape_vectors(before, after, seconds), seconds


def profiles(url: str, token: str | None) -> dict[str, Any]:
    """The profile endpoint's listing: ``profiles`` kept, ``n_plus_one`` statements seen, ``pid``."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        _, body = _get(url, "profiles", headers)
    except _HTTPStatus as exc:
        hint = " (give --token)" if exc.status == 401 else ""
        raise SourceError(f"profiles at {url} answered HTTP {exc.status}{hint}") from None
    try:
        listing = json.loads(body)
        kept = [dict(p) for p in listing["profiles"]]
        # An app from before the N+1 table lists no ``n_plus_one``.
        seen = [dict(row) for row in listing.get("n_plus_one") or []]
        pid = listing.get("pid")
    except (ValueError, KeyError, TypeError, AttributeError):
        raise SourceError(f"{url} did not answer a profile listing") from None
    return {"pid": pid if isinstance(pid, int) else None, "profiles": kept, "n_plus_one": seen}
