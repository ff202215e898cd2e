"""``collector build``: regenerate the committed files from the tip catalogue.

``GENERATORS`` lists functions returning {path relative to the repository: text}; a new kind of
output (dashboards, Kubernetes manifests) is one more function in the list. ``--check`` writes
nothing and exits 1 when a file would change, naming it. A file an earlier build wrote (it carries
``HEADER``) and this one no longer generates is removed by ``build`` and reported by ``--check``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from collector import _dashboards, _kubernetes
from collector.catalogue import GENERATED_HEADER, names, rules, ruletests, runbooks, slo, yaml
from collector.catalogue.model import CatalogueError
from collector.cli import CommandError

Generator = Callable[[], dict[str, str]]

HEADER = GENERATED_HEADER


def prometheus_rules() -> dict[str, str]:
    return {path: yaml.dump(document, HEADER) for path, document in rules.documents().items()}


def rule_tests() -> dict[str, str]:
    return {path: yaml.dump(document, HEADER) for path, document in ruletests.documents().items()}


def runbook_pages() -> dict[str, str]:
    return {path: f"<!-- {HEADER} -->\n{text}" for path, text in runbooks.pages().items()}


GENERATORS: list[Generator] = [prometheus_rules, rule_tests, runbook_pages]
GENERATORS += [_dashboards.files, _kubernetes.files]


def generate() -> dict[str, str]:
    slo.check_objectives(names.latency_buckets())
    out: dict[str, str] = {}
    for generator in GENERATORS:
        out.update(generator())
    return out


def stale(root: Path, files: dict[str, str]) -> list[str]:
    """Files that regenerating would create or change."""
    changed = []
    for path, text in sorted(files.items()):
        target = root / path
        if not target.is_file() or target.read_text(encoding="utf-8") != text:
            changed.append(path)
    return changed


def orphans(root: Path, files: dict[str, str]) -> list[str]:
    """Files an earlier build wrote (they carry the header) that this build no longer generates."""
    found = set()
    for folder in {(root / path).parent for path in files}:
        for candidate in folder.glob("*") if folder.is_dir() else ():
            path = candidate.relative_to(root).as_posix()
            if path not in files and candidate.is_file() and HEADER in candidate.read_text(encoding="utf-8"):
                found.add(path)
    return sorted(found)


def write(root: Path, files: dict[str, str]) -> list[str]:
    changed = stale(root, files)
    for path in orphans(root, files):
        (root / path).unlink()
    for path in changed:
        target = root / path
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(files[path], encoding="utf-8")
        except OSError as exc:
            raise CommandError(f"cannot write {target}: {exc.strerror or exc}") from None
    return changed


def run(args: argparse.Namespace) -> int:
    root = Path(args.output)
    try:
        files = generate()
    except CatalogueError as exc:
        raise CommandError(str(exc)) from None
    if args.check:
        changed = stale(root, files) + [f"{path} (no longer generated)" for path in orphans(root, files)]
        if changed:
            raise CommandError(f"out of date, run `collector build`: {', '.join(changed)}")
        print(f"{len(files)} generated files up to date")
        return 0
    changed = write(root, files)
    print(f"{len(changed)} of {len(files)} generated files written under {root}")
    return 0


def register(subparsers: Any) -> None:
    build = subparsers.add_parser(
        "build", help="regenerate rules, rule tests and runbooks from the tip catalogue"
    )
    build.add_argument("--output", default=".", help="repository root to write into (default: .)")
    build.add_argument("--check", action="store_true", help="write nothing; exit 1 if a file would change")
    build.set_defaults(run=run)
