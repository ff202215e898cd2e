"""The one frame walker: which code is the application's, and its innermost frame on a stack.

A frame is the application's when its file lies outside the standard library, the installed
packages and the collector itself. The event-loop watchdog names a stall by it, the database
listeners name an N+1 statement by it, and the profiler picks a profile's hottest function by it.
"""

from __future__ import annotations

import os
import site
import sys
import sysconfig
from collections.abc import Iterable
from types import CodeType, FrameType
from typing import Any

UNKNOWN_LOCATION = "unknown"
# The location label that gathers the stall locations past their bound: no place in the code.
OTHER_LOCATION = "other"


def _library_dirs() -> tuple[str, ...]:
    dirs = set()
    paths = sysconfig.get_paths()
    for key in ("stdlib", "platstdlib", "purelib", "platlib", "scripts"):
        if key in paths:
            dirs.add(os.path.realpath(paths[key]))
    for d in [*site.getsitepackages(), site.getusersitepackages()]:
        dirs.add(os.path.realpath(d))
    dirs.add(os.path.dirname(os.path.realpath(__file__)))
    return tuple(sorted(d + os.sep for d in dirs))


class LocationNamer:
    """Tells application files from library files (cached per file); names frames ``file:function:line``."""

    def __init__(self) -> None:
        self._library = _library_dirs()
        self._is_app: dict[str, bool] = {}
        self._cwd = os.getcwd() + os.sep

    def is_app_file(self, filename: str) -> bool:
        known = self._is_app.get(filename)
        if known is None:
            real = os.path.realpath(filename)
            known = not filename.startswith("<") and not real.startswith(self._library)
            self._is_app[filename] = known
        return known

    def innermost_app_frame(self, frame: FrameType | None) -> FrameType | None:
        """The first application frame from ``frame`` outwards, or None when there is none."""
        while frame is not None:
            if self.is_app_file(frame.f_code.co_filename):
                return frame
            frame = frame.f_back
        return None

    def innermost_app_code(self, codes: Iterable[Any]) -> CodeType | None:
        """Of code objects listed innermost first (other items skipped): the first application one,
        else the first of all."""
        first = None
        for code in codes:
            if not isinstance(code, CodeType):
                continue
            if self.is_app_file(code.co_filename):
                return code
            if first is None:
                first = code
        return first

    def location(self, frame: FrameType) -> str:
        """``file:function:line``, the file relative to the working directory when under it."""
        code = frame.f_code
        filename = code.co_filename
        if filename.startswith(self._cwd):
            filename = filename[len(self._cwd) :]
        return f"{filename}:{code.co_name}:{frame.f_lineno}"

    def name(self, frame: FrameType | None) -> str:
        """The innermost application frame's location; else the innermost frame's, by file base name."""
        app = self.innermost_app_frame(frame)
        if app is not None:
            return self.location(app)
        if frame is not None:
            code = frame.f_code
            return f"{os.path.basename(code.co_filename)}:{code.co_name}:{frame.f_lineno}"
        return UNKNOWN_LOCATION

    def caller_location(self, skip: int = 1) -> str:
        """Where the application called the running code from, across the AsyncEngine greenlet.

        ``skip`` frames of the caller's own are passed over first. Under SQLAlchemy's
        ``AsyncEngine`` the statement runs in a child greenlet; the awaiting code is in its parents.
        """
        start = sys._getframe(skip + 1)
        app = self.innermost_app_frame(start)
        if app is not None:
            return self.location(app)
        try:
            import greenlet

            parent = greenlet.getcurrent().parent
            while parent is not None:
                app = self.innermost_app_frame(parent.gr_frame)
                if app is not None:
                    return self.location(app)
                parent = parent.parent
        except ImportError:
            pass
        return self.name(start)


_shared: LocationNamer | None = None


def namer() -> LocationNamer:
    """The process's namer (its file cache is shared by every caller)."""
    global _shared
    if _shared is None:
        _shared = LocationNamer()
    return _shared


def caller_location(skip: int = 1) -> str:
    """``namer().caller_location``: the application code that called the caller's caller."""
    return namer().caller_location(skip + 1)
