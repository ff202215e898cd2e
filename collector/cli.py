"""The ``collector`` command: one module per subcommand, each listed in ``SUBCOMMANDS``.

A subcommand module exposes ``register(subparsers)``, which adds its parser and sets ``run`` (a
function of the parsed arguments returning the exit code) as the parser default. Failures raise
``CommandError`` with a one-line message and an exit code; ``main`` prints it, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

SUBCOMMANDS: tuple[str, ...] = ("collector._cli_build", "collector._cli_doctor", "collector._cli_grafana")


class CommandError(Exception):
    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="collector", description="FastAPI collector: rules, dashboards, diagnosis."
    )
    subparsers = root.add_subparsers(dest="command", required=True)
    for module in SUBCOMMANDS:
        importlib.import_module(module).register(subparsers)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.run(args))
    except CommandError as exc:
        print(f"collector {args.command}: {exc}", file=sys.stderr)
        return exc.code
