"""A kept profile as its hottest application function, as speedscope's format and as pyinstrument's page."""

from __future__ import annotations

import sys
from types import CodeType
from typing import Any

from collector._frames import LocationNamer
from collector._profile_store import Profile

SPEEDSCOPE_SCHEMA = "https://www.speedscope.app/file-format-schema.json"


def _frame_name(code: Any) -> tuple[str, str | None, int | None]:
    if isinstance(code, str):
        return code, None, None
    return code.co_qualname, code.co_filename, code.co_firstlineno


def _line(code: CodeType, lasti: int, cache: dict[int, list[tuple[int, int, int | None]]]) -> int:
    """The line of the instruction at byte offset ``lasti``, as ``frame.f_lineno`` would have said."""
    ranges = cache.get(id(code))
    if ranges is None:
        ranges = cache[id(code)] = list(code.co_lines())
    for start, end, line in ranges:
        if start <= lasti < end and line is not None:
            return line
    return code.co_firstlineno


def hottest(profile: Profile, namer: LocationNamer) -> dict[str, Any] | None:
    """The function of the application (not a library) whose own lines took the most sampled time."""
    totals: dict[int, float] = {}
    codes: dict[int, CodeType] = {}
    for stack, weight in zip(profile.stacks, profile.weights, strict=False):
        chosen = namer.innermost_app_code(stack[-2::-2])  # the stack's code objects, innermost first
        if chosen is not None:
            totals[id(chosen)] = totals.get(id(chosen), 0.0) + weight
            codes[id(chosen)] = chosen
    if not totals:
        return None
    best = max(totals, key=totals.__getitem__)
    name, filename, line = _frame_name(codes[best])
    return {"function": name, "file": filename, "line": line, "seconds": round(totals[best], 6)}


def speedscope(profile: Profile) -> dict[str, Any]:
    """The profile in speedscope's file format, as one sampled profile."""
    frames: list[dict[str, Any]] = []
    index: dict[Any, int] = {}
    samples: list[list[int]] = []
    for stack in profile.stacks:
        sample = []
        for i in range(0, len(stack), 2):
            code = stack[i]
            key = code if isinstance(code, str) else id(code)
            at = index.get(key)
            if at is None:
                name, filename, line = _frame_name(code)
                frame: dict[str, Any] = {"name": name}
                if filename is not None:
                    frame["file"] = filename
                    frame["line"] = line
                at = index[key] = len(frames)
                frames.append(frame)
            sample.append(at)
        samples.append(sample)
    weights = list(profile.weights)
    return {
        "$schema": SPEEDSCOPE_SCHEMA,
        "name": profile.title(),
        "exporter": "fastapi-collector",
        "activeProfileIndex": 0,
        "shared": {"frames": frames},
        "profiles": [
            {
                "type": "sampled",
                "name": profile.title(),
                "unit": "seconds",
                "startValue": 0,
                "endValue": sum(weights),
                "samples": samples,
                "weights": weights,
            }
        ],
    }


def html(profile: Profile, interval: float) -> str:
    """pyinstrument's interactive page for the profile."""
    from pyinstrument.renderers.html import HTMLRenderer
    from pyinstrument.session import Session

    infos: dict[int, str] = {}
    lines: dict[int, list[tuple[int, int, int | None]]] = {}
    records = []
    for stack, weight in zip(profile.stacks, profile.weights, strict=False):
        record = []
        for i in range(0, len(stack), 2):
            code = stack[i]
            if isinstance(code, str):
                record.append(code)
                continue
            info = infos.get(id(code))
            if info is None:
                info = infos[id(code)] = f"{code.co_qualname}\x00{code.co_filename}\x00{code.co_firstlineno}"
            record.append(f"{info}\x01l{_line(code, stack[i + 1], lines)}")
        records.append((record, weight))
    session = Session.from_json(
        {
            "frame_records": records,
            "start_time": profile.started,
            "duration": profile.duration,
            "min_interval": interval,
            "max_interval": interval,
            "sample_count": len(records),
            "start_call_stack": ["[collector]"],  # nothing to trim: the stacks start at the request
            "target_description": profile.title(),
            "cpu_time": 0,
            "sys_path": sys.path,
            "sys_prefixes": Session.current_sys_prefixes(),
        }
    )
    return str(HTMLRenderer().render(session))
