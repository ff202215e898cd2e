"""Dashboard JSON checked as data, and every expression parsed by ``promtool``.

``problems(dashboards)`` lists what is wrong, each naming the dashboard, the panel and the reason:
duplicate dashboard uids or panel ids, empty or duplicate refIds, a panel or query on another
datasource than the provisioned Prometheus (through the ``datasource`` variable), a panel without a
unit or a description, a range not written ``$__rate_interval``, a variable no dashboard defines, an
alert list reading another datasource, and an expression Prometheus cannot parse. For ``promtool``,
Grafana's variables are substituted first (``substitute``), then every expression becomes a
recording rule in one temporary file; promtool's errors map back to the panel by rule name.
``check`` raises ``CatalogueError`` with the problems on one line (``collector build`` runs it).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from collector._dashboards import PROMETHEUS_NAME, PROMETHEUS_UID, Dashboard
from collector.catalogue.model import CatalogueError

DATASOURCE_VARIABLE = "${datasource}"
# Grafana's built-in variables, and what stands in for them when an expression is parsed.
BUILTINS = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h", "__range_s": "3600"}
VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")
RANGE = re.compile(r"\[([^\]]*)\]")
PROMTOOL_ERROR = re.compile(r'"(expr_\d+)": (.*)$')


@dataclass(frozen=True)
class Problem:
    dashboard: str
    panel: str
    reason: str

    def __str__(self) -> str:
        where = f"dashboard {self.dashboard}"
        return f"{where}, {self.panel}: {self.reason}" if self.panel else f"{where}: {self.reason}"


@dataclass(frozen=True)
class Query:
    """One expression of a dashboard: a panel's target or a variable's query."""

    dashboard: str
    panel: str  # 'panel 101 "Title"' or 'variable route'
    ref_id: str
    expr: str
    instant: bool


def _label(panel: Mapping[str, Any]) -> str:
    return f'panel {panel.get("id")} "{panel.get("title", "")}"'


def panels(dashboard: Dashboard) -> Iterator[Mapping[str, Any]]:
    """Every panel, rows and the panels folded inside collapsed rows included."""
    for panel in dashboard.get("panels") or ():
        yield panel
        yield from panel.get("panels") or ()


def _variable_selector(query: object) -> str:
    """The series selector of ``label_values(selector, label)``; the whole query otherwise."""
    text = query.get("query", "") if isinstance(query, Mapping) else str(query or "")
    match = re.fullmatch(r"\s*label_values\((.*),\s*\w+\)\s*", text, re.S)
    return match.group(1) if match else text


def queries(dashboard: Dashboard) -> list[Query]:
    uid = str(dashboard.get("uid", ""))
    found = []
    for variable in (dashboard.get("templating") or {}).get("list") or ():
        if variable.get("type") == "query":
            selector = _variable_selector(variable.get("query"))
            found.append(Query(uid, f"variable {variable.get('name')}", "", selector, True))
    for panel in panels(dashboard):
        for target in panel.get("targets") or ():
            instant = bool(target.get("instant")) and not target.get("range")
            found.append(
                Query(uid, _label(panel), str(target.get("refId", "")), target.get("expr", ""), instant)
            )
    return found


def variables(dashboard: Dashboard) -> set[str]:
    return {str(v.get("name")) for v in (dashboard.get("templating") or {}).get("list") or ()}


def substitute(expr: str, values: Mapping[str, str]) -> str:
    """Replace Grafana variables by ``values`` (built-ins by ``BUILTINS`` unless given)."""
    table = {**BUILTINS, **values}

    def one(match: re.Match[str]) -> str:
        name = next(g for g in match.groups() if g)
        return table.get(name, match.group(0))

    return VARIABLE.sub(one, expr)


def _datasource_ok(ref: object) -> bool:
    if ref is None:
        return True  # a target without one uses its panel's
    return (
        isinstance(ref, Mapping)
        and ref.get("type") == "prometheus"
        and ref.get("uid") in (DATASOURCE_VARIABLE, PROMETHEUS_UID)
    )


def _panel_problems(uid: str, panel: Mapping[str, Any], known: set[str]) -> Iterator[Problem]:
    label = _label(panel)
    kind = panel.get("type")
    if not str(panel.get("description", "")).strip():
        yield Problem(uid, label, "no description")
    if kind == "alertlist":
        if (panel.get("options") or {}).get("datasource") != PROMETHEUS_NAME:
            yield Problem(uid, label, f"alert list does not read the {PROMETHEUS_NAME} datasource")
        return
    targets = panel.get("targets") or ()
    if not targets:
        yield Problem(uid, label, "no queries")
    if panel.get("datasource") is None or not _datasource_ok(panel.get("datasource")):
        yield Problem(uid, label, f"datasource is not {DATASOURCE_VARIABLE} (Prometheus {PROMETHEUS_UID})")
    if not ((panel.get("fieldConfig") or {}).get("defaults") or {}).get("unit"):
        yield Problem(uid, label, "no unit")
    refs = [str(t.get("refId") or "") for t in targets]
    if "" in refs:
        yield Problem(uid, label, "a query has an empty refId")
    for ref, count in Counter(refs).items():
        if ref and count > 1:
            yield Problem(uid, label, f"refId {ref} is used {count} times")
    for target in targets:
        ref = target.get("refId") or "?"
        if not _datasource_ok(target.get("datasource")):
            yield Problem(uid, label, f"query {ref} uses another datasource")
        expr = str(target.get("expr") or "")
        if not expr.strip():
            yield Problem(uid, label, f"query {ref} has no expression")
        for window in RANGE.findall(expr):
            if window != "$__rate_interval":
                yield Problem(uid, label, f"query {ref} uses range [{window}], not [$__rate_interval]")
        for match in VARIABLE.finditer(expr):
            name = next(g for g in match.groups() if g)
            if name not in known and name not in BUILTINS:
                yield Problem(uid, label, f"query {ref} uses ${name}, which the dashboard does not define")


def _structure(dashboards: Sequence[Dashboard]) -> Iterator[Problem]:
    uids = Counter(str(d.get("uid") or "") for d in dashboards)
    for dashboard in dashboards:
        uid = str(dashboard.get("uid") or "")
        title = str(dashboard.get("title", ""))
        if not uid:
            yield Problem(f'"{title}"', "", "no uid")
        elif uids[uid] > 1:
            yield Problem(uid, "", f"uid {uid} is used by {uids[uid]} dashboards")
        if len(uid) > 40:
            yield Problem(uid, "", "uid longer than Grafana's 40 characters")
        known = variables(dashboard)
        source = next(
            (
                v
                for v in (dashboard.get("templating") or {}).get("list") or ()
                if v.get("name") == "datasource"
            ),
            None,
        )
        if source is None or source.get("type") != "datasource" or source.get("query") != "prometheus":
            yield Problem(uid, "", "no datasource variable of type prometheus")
        elif (source.get("current") or {}).get("value") != PROMETHEUS_UID:
            yield Problem(uid, "", f"datasource variable does not default to {PROMETHEUS_UID}")
        ids = Counter(p.get("id") for p in panels(dashboard))
        for panel in panels(dashboard):
            if ids[panel.get("id")] > 1:
                yield Problem(
                    uid, _label(panel), f"panel id {panel.get('id')} is used {ids[panel.get('id')]} times"
                )
            if panel.get("type") != "row":
                yield from _panel_problems(uid, panel, known)


def _promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        raise CatalogueError(
            "promtool not found on PATH: install Prometheus (Debian: apt install prometheus)"
        )
    return found


def _yaml_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def parse_problems(found: Sequence[Query]) -> list[Problem]:
    """Run every expression, variables substituted, through ``promtool check rules``."""
    if not found:
        return []
    lines = ["groups:", "- name: dashboards", "  rules:"]
    for index, query in enumerate(found):
        lines += [f"  - record: expr_{index}", f"    expr: {_yaml_string(substitute(query.expr, {}))}"]
    with tempfile.TemporaryDirectory(prefix="collector-dashboards-") as folder:
        rule_file = Path(folder) / "expressions.yml"
        rule_file.write_text("\n".join(lines) + "\n", encoding="utf-8")
        result = subprocess.run(
            [_promtool(), "check", "rules", str(rule_file)], capture_output=True, text=True, timeout=120
        )
    if result.returncode == 0:
        return []
    out = []
    for line in (result.stdout + result.stderr).splitlines():
        match = PROMTOOL_ERROR.search(line)
        if match:
            query = found[int(match.group(1).split("_")[1])]
            what = f"query {query.ref_id}" if query.ref_id else "query"
            out.append(Problem(query.dashboard, query.panel, f"{what} does not parse: {match.group(2)}"))
    if not out:
        out.append(Problem("*", "", f"promtool failed: {(result.stderr or result.stdout).strip()[:200]}"))
    return out


def problems(dashboards: Sequence[Dashboard]) -> list[Problem]:
    found = list(_structure(dashboards))
    found += parse_problems([q for d in dashboards for q in queries(d) if q.expr.strip()])
    return found


def check(dashboards: Sequence[Dashboard]) -> None:
    found = problems(dashboards)
    if found:
        more = f" (and {len(found) - 3} more)" if len(found) > 3 else ""
        raise CatalogueError("dashboards invalid: " + "; ".join(str(p) for p in found[:3]) + more)
