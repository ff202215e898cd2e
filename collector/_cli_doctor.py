"""``collector doctor``: which tip is broken, where, how badly, and the fix; from Prometheus or ``/metrics``.

    collector doctor --prometheus URL [--job J] [--since 30m] [--format json]
    collector doctor --metrics-url URL [--interval S] [--format json]

Both read the same catalogue checks as the alerts (``collector._doctor``). With ``--prometheus`` each
broken or warning tip says since when its alert is active (Prometheus' alerts API); from two scrapes,
only that it is within their interval. ``--profiles-url`` (or the app's profile endpoint beside
``--metrics-url`` when ``--token`` is given) adds the slowest kept profiles with their hottest
function, and under tip 6 the N+1 statements the app saw with their code location. Exit code: 0 no
tip broken, 1 a tip broken, 2 the source could not be read (one line on stderr).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import urllib.parse
from datetime import datetime
from typing import Any, TextIO

from collector import _doctor_sources as sources
from collector._doctor import (
    Report,
    SourceError,
    TipResult,
    attach_alerts,
    attach_listing,
    attach_scrape_window,
    diagnose,
    parse_timestamp,
)
from collector.cli import CommandError

DURATION = re.compile(r"[1-9][0-9]*(ms|s|m|h|d|w)")
PROFILE_PATH = "/_collector/profiles"

_COLOURS = {"broken": "31;1", "warning": "33;1", "no data": "2", "ok": "32"}
_LABELS = {"broken": "BROKEN", "warning": "WARNING", "no data": "no data", "ok": "ok"}


def _paint(text: str, status: str, colour: bool) -> str:
    return f"\033[{_COLOURS[status]}m{text}\033[0m" if colour else text


def _labels(labels: dict[str, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in labels.items()) or "service"


def _ago(then: datetime, now: datetime) -> str:
    seconds = max(0.0, (now - then).total_seconds())
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} d"


def _since_line(tip: TipResult, now: datetime) -> str | None:
    since = tip.since
    if since.within_seconds is not None:
        return f"since: within the last {since.within_seconds:.0f} s (two scrapes)"
    if since.active_at is not None:
        at = since.active_at
        shown = at.strftime("%H:%M") if at.date() == now.date() else at.strftime("%Y-%m-%d %H:%M")
        return f"since {shown} UTC ({_ago(at, now)} ago), alert {since.alert} {since.state}"
    if since.state == "inactive":
        return "since: no alert of this tip is active in this Prometheus"
    return None


_COLUMNS = re.compile(r"^(SELECT\s+)(.{40,}?)(\s+FROM\s)", re.IGNORECASE | re.DOTALL)


def _short_sql(fingerprint: str, limit: int = 160) -> str:
    """A fingerprint for one line: a long column list elided, so that FROM and WHERE show."""
    text = _COLUMNS.sub(r"\1…\3", fingerprint, count=1)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _n_plus_one_lines(tip: TipResult, pid: int | None, now: datetime) -> list[str]:
    if not tip.n_plus_one:
        return []
    worker = f"worker pid {pid}" if pid is not None else "the worker that answered"
    lines = [f"           N+1 statements seen by {worker} since it started (each worker keeps its own):"]
    for row in tip.n_plus_one[:5]:
        seen = row.get("last_seen")
        when = parse_timestamp(seen) if isinstance(seen, str) else None
        last = f", last {_ago(when, now)} ago" if when is not None else ""
        lines.append(
            f"             {row.get('route')}: in {row.get('requests')} requests, up to "
            f"{row.get('max_repeats')} runs in one, from {row.get('location')}{last}"
        )
        lines.append(f"               {_short_sql(str(row.get('fingerprint') or ''))}")
    return lines


def _tip_lines(tip: TipResult, colour: bool, report: Report) -> list[str]:
    head = f"{_paint(f'{_LABELS[tip.status]:<8}', tip.status, colour)} Tip {tip.number:>2}  {tip.title}"
    n_plus_one = _n_plus_one_lines(tip, report.worker_pid, report.at)
    if tip.status in ("ok", "no data"):
        return [f"{head}: {tip.why}", *n_plus_one]
    lines = [head]
    since = _since_line(tip, report.at)
    if since is not None:
        lines.append(f"           {since}")
    for finding in [f for f in tip.findings if f.status in ("broken", "warning")][:3]:
        where = _labels(finding.labels)
        lines.append(f"           {finding.alert}: {finding.shown} (alert {finding.threshold}) on {where}")
    for title, items in tip.evidence.items():
        shown = ", ".join(f"{_labels(item.labels)} {item.shown}" for item in items[:3])
        lines.append(f"           {title}: {shown}")
    lines += n_plus_one
    lines.append(f"           Fix: {tip.fix}")
    lines += [f"           Runbook: {url}" for url in tip.runbooks]
    return lines


def render_text(report: Report, colour: bool) -> str:
    broken = report.broken
    if broken:
        names = ", ".join(f"tip {t.number}" for t in broken)
        summary = f"{len(broken)} of {len(report.tips)} tips broken ({names})"
    else:
        summary = f"no tip broken ({len(report.tips)} checked)"
    lines = [f"collector doctor: {summary}", f"source: {report.source}, over {report.window}", ""]
    for tip in report.tips:
        lines += _tip_lines(tip, colour, report)
    if report.profiles:
        lines += ["", "Slowest profiles kept:"]
        for p in report.profiles:
            hot = p.get("hottest") or {}
            where = f"{hot.get('function')} ({hot.get('file')}:{hot.get('line')})" if hot else "no samples"
            lines.append(
                f"  {p.get('method')} {p.get('route')} {p.get('duration_seconds')} s, hottest {where}"
            )
    lines += [f"note: {note}" for note in report.notes]
    return "\n".join(lines)


def _profiles_url(args: argparse.Namespace) -> str | None:
    if args.profiles_url:
        return str(args.profiles_url)
    if args.metrics_url and args.token:
        parts = urllib.parse.urlsplit(args.metrics_url)
        return str(urllib.parse.urlunsplit((parts.scheme, parts.netloc, PROFILE_PATH, "", "")))
    return None


def build_report(args: argparse.Namespace) -> Report:
    if args.prometheus:
        if args.job is not None and not args.job.strip():
            raise CommandError("--job is empty: give the job name Prometheus scrapes the app as", 2)
        if not DURATION.fullmatch(args.since):
            raise CommandError(f"--since {args.since!r} is not a Prometheus duration such as 30m or 2h", 2)
        prometheus = sources.Prometheus(args.prometheus, args.job, args.since)
        jobs = prometheus.check_job(args.job)
        where = f"job {args.job}" if args.job else f"jobs {', '.join(jobs)}"
        report = diagnose(prometheus.vector, f"Prometheus {prometheus.url} ({where})", args.since)
        try:
            alerts = prometheus.alerts()
        except SourceError as exc:
            report.notes.append(f"since: unknown ({exc})")
        else:
            try:
                loaded: set[str] | None = prometheus.alert_rules()
            except SourceError:
                loaded = None  # then an active alert of the catalogue's is the sign its rules are loaded
            attach_alerts(report, alerts, loaded, args.job)
    else:
        if not 0.5 <= args.interval <= 3600:
            raise CommandError(f"--interval {args.interval:g} is outside 0.5 to 3600 seconds", 2)
        vector, seconds = sources.two_scrapes(args.metrics_url, args.interval)
        report = diagnose(vector, f"two scrapes of {args.metrics_url}", f"{seconds:.1f} s")
        attach_scrape_window(report, seconds)
    url = _profiles_url(args)
    if url:
        try:
            attach_listing(report, sources.profiles(url, args.token))
        except SourceError as exc:
            report.notes.append(str(exc))
    return report


def run(args: argparse.Namespace) -> int:
    out: TextIO = sys.stdout
    try:
        report = build_report(args)
    except SourceError as exc:
        raise CommandError(str(exc), 2) from None
    if args.format == "json":
        document: dict[str, Any] = report.as_dict()
        out.write(json.dumps(document, indent=2) + "\n")
    else:
        colour = out.isatty() and "NO_COLOR" not in os.environ
        out.write(render_text(report, colour) + "\n")
    return 1 if report.broken else 0


def register(subparsers: Any) -> None:
    doctor = subparsers.add_parser(
        "doctor",
        help="name the broken tips, where, how badly, and the fix",
        description="Evaluate every tip of the catalogue (the alerts' own checks) and rank them by impact. "
        "Exit 0 all ok, 1 a tip broken, 2 the source could not be read.",
    )
    source = doctor.add_mutually_exclusive_group(required=True)
    source.add_argument("--prometheus", metavar="URL", help="Prometheus base URL (its HTTP API)")
    source.add_argument("--metrics-url", metavar="URL", help="an app's /metrics, scraped twice")
    doctor.add_argument("--job", help="Prometheus job of the app (default: every job)")
    doctor.add_argument("--since", default="30m", help="Prometheus window, e.g. 30m (default 30m)")
    doctor.add_argument(
        "--interval", type=float, default=15.0, help="seconds between the two scrapes (default 15)"
    )
    doctor.add_argument("--profiles-url", metavar="URL", help="the app's profile endpoint (kept profiles)")
    doctor.add_argument(
        "--token",
        default=os.environ.get("COLLECTOR_PROFILE_TOKEN"),
        help="profile endpoint token (default: $COLLECTOR_PROFILE_TOKEN)",
    )
    doctor.add_argument("--format", choices=("text", "json"), default="text")
    doctor.set_defaults(run=run)
