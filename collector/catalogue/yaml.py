"""A small YAML writer for the generated files: dicts, lists, strings and numbers, stable output.

The package has no YAML dependency at run time; multi-line strings (PromQL, templates) are written
as literal blocks so the committed files read like hand-written rules.
"""

from __future__ import annotations

import json

Node = object


def _scalar(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value) if isinstance(value, float) else str(value)
    return json.dumps(str(value), ensure_ascii=False)


def _lines(node: Node, indent: int) -> list[str]:
    pad = " " * indent
    out: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(value, str) and "\n" in value:
                out.append(f"{pad}{key}: |-")
                out.extend(f"{pad}  {line}" if line else "" for line in value.split("\n"))
            elif isinstance(value, dict | list) and value:
                out.append(f"{pad}{key}:")
                out.extend(_lines(value, indent + 2))
            else:
                out.append(f"{pad}{key}: {_scalar(value) if not isinstance(value, dict | list) else '[]'}")
        return out
    if isinstance(node, list):
        for item in node:
            inner = _lines(item, indent + 2)
            out.append(f"{pad}- {inner[0].lstrip()}")
            out.extend(inner[1:])
        return out
    return [f"{pad}{_scalar(node)}"]


def dump(node: Node, header: str = "") -> str:
    lines = [f"# {line}" for line in header.splitlines()]
    return "\n".join([*lines, *_lines(node, 0)]) + "\n"
