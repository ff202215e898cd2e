"""The tips page as HTML: one card per tip, its status, why, evidence, fix and a chart of its key signal.

Self-contained (inline CSS and SVG, no script): it reloads itself every sampling interval. Every value
that comes from the metrics (routes, locations) is escaped.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from collector._doctor import RANK, Report, TipResult, format_value
from collector.catalogue import TIPS
from collector.catalogue.model import Tip

CHART_SECONDS = 300.0
WIDTH, HEIGHT = 320, 64
COLOURS = {"broken": "#c62828", "warning": "#e08a00", "ok": "#2e7d32", "no data": "#8a8a8a"}

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:0;background:#f4f5f7;color:#1d1f23}
header.top{padding:14px 22px;background:#1d1f23;color:#fff}
header.top h1{margin:0;font-size:20px}
header.top p{margin:4px 0 0;color:#c9ccd1}
.summary{padding:10px 22px;font-size:16px;font-weight:600}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(360px,1fr));gap:12px;padding:0 22px 22px}
.tip{background:#fff;border-radius:6px;border-left:6px solid var(--c);padding:10px 14px;
box-shadow:0 1px 2px rgba(0,0,0,.08)}
.tip h2{font-size:15px;margin:0 0 4px;display:flex;gap:8px;align-items:center}
.badge{background:var(--c);color:#fff;border-radius:3px;padding:1px 6px;font-size:11px;letter-spacing:.04em}
.why{margin:2px 0 6px;color:#33363b}
.chart{display:block;margin:4px 0}
.evidence{margin:4px 0;font-size:12px;color:#45484d}
.evidence b{color:#1d1f23}
code{font-size:12px;background:#eef0f2;padding:0 3px;border-radius:2px}
.fix{font-size:12px;margin:6px 0 0}
a{color:#1f5fbf}
"""


def _labels(labels: dict[str, str]) -> str:
    return " ".join(f"<code>{escape(v)}</code>" for v in labels.values()) or "service"


def _chart(tip: Tip, points: Sequence[tuple[float, float | None]], now: float) -> str:
    signal = tip.key_signals[0]
    check = next((c for c in tip.checks if c.signal == signal), None)
    values = [v for _, v in points if v is not None]
    top = max([*values, check.threshold.value if check else 0.0, 1e-9]) * 1.15

    def xy(t: float, v: float) -> str:
        x = WIDTH * max(0.0, 1 - (now - t) / CHART_SECONDS)
        return f"{x:.1f},{HEIGHT - 2 - (HEIGHT - 4) * v / top:.1f}"

    lines: list[list[str]] = []
    run: list[str] = []
    for t, v in points:
        if v is None or now - t > CHART_SECONDS:
            if len(run) > 1:
                lines.append(run)
            run = []
        else:
            run.append(xy(t, v))
    if len(run) > 1:
        lines.append(run)
    drawn = "".join(
        f'<polyline fill="none" stroke="#1f5fbf" stroke-width="1.5" points="{" ".join(r)}"/>' for r in lines
    )
    if check is not None:
        y = xy(now, check.threshold.value).split(",")[1]
        drawn += (
            f'<line x1="0" x2="{WIDTH}" y1="{y}" y2="{y}" stroke="#c62828" stroke-dasharray="4 3"/>'
            f'<text x="{WIDTH - 2}" y="{float(y) - 3:.1f}" text-anchor="end" font-size="10" fill="#c62828">'
            f"{escape(check.threshold.format())}</text>"
        )
    latest = format_value(values[-1], signal.unit) if values else "no data"
    title = f"{signal.description} Now: {latest}; last {CHART_SECONDS / 60:.0f} min."
    return (
        f'<svg class="chart" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{escape(title)}"><title>{escape(title)}</title>'
        f'<rect width="{WIDTH}" height="{HEIGHT}" fill="#f8f9fa"/>{drawn}</svg>'
        f'<div class="evidence">{escape(signal.description)} Now: <b>{escape(latest)}</b></div>'
    )


def _card(
    tip: Tip, result: TipResult | None, points: Sequence[tuple[float, float | None]], now: float
) -> str:
    status = result.status if result is not None else "no data"
    why = result.why if result is not None else "waiting for a second sample"
    parts = [
        f'<section class="tip" data-tip="{tip.number}" data-status="{status}" style="--c:{COLOURS[status]}">',
        f'<h2><span class="badge">{escape(status.upper())}</span>Tip {tip.number}: {escape(tip.title)}</h2>',
        f'<p class="why">{escape(why)}</p>',
        _chart(tip, points, now),
    ]
    if result is not None and status in ("broken", "warning"):
        for title, items in result.evidence.items():
            shown = ", ".join(f"{_labels(i.labels)} {escape(i.shown)}" for i in items[:3])
            parts.append(f'<div class="evidence"><b>{escape(title)}:</b> {shown}</div>')
        links = " ".join(f'<a href="{escape(url)}">runbook</a>' for url in result.runbooks)
        parts.append(f'<p class="fix"><b>Fix:</b> {escape(tip.fix)} {links}</p>')
    parts.append("</section>")
    return "".join(parts)


def page(
    report: Report | None, history: dict[int, list[tuple[float, float | None]]], now: float, refresh: float
) -> str:
    """The page; it reloads itself every ``refresh`` seconds (5 at least, so a slow load still lands)."""
    results = {r.number: r for r in report.tips} if report is not None else {}
    ranked = sorted(results.values(), key=lambda r: (RANK[r.status], -r.impact, r.number))
    broken = [r for r in ranked if r.status == "broken"]
    if report is None:
        summary = "Collecting: the first report comes after two samples."
    elif broken:
        summary = f"{len(broken)} tip{'s' if len(broken) > 1 else ''} broken: " + ", ".join(
            f"tip {r.number} ({r.title})" for r in broken
        )
    else:
        summary = "No tip broken."
    colour = COLOURS["broken" if broken else "ok"] if report is not None else COLOURS["no data"]
    window = f"over {escape(report.window)}" if report is not None else ""
    every = max(5, round(refresh))
    cards = "".join(_card(tip, results.get(tip.number), history.get(tip.number, []), now) for tip in TIPS)
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        f'<meta http-equiv="refresh" content="{every}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{len(broken)} broken · FastAPI tips</title><style>{_STYLE}</style></head><body>"
        '<header class="top"><h1>FastAPI: ten tips, live</h1>'
        f"<p>From this service's own metrics {window}; refreshes every {every} s.</p></header>"
        f'<div class="summary" id="summary" style="color:{colour}">{escape(summary)}</div>'
        f'<main class="grid">{cards}</main></body></html>'
    )
