"""The ledger of every change the collector makes outside its own objects, undone in reverse order.

Every attribute the collector replaces on a class, module or object of another library
goes through ``replace``; every other change (an import hook, an event listener, a
callback list entry) is recorded with ``record`` and the function that undoes it. Each
entry names the component that owns it, so ``undo(component)`` removes exactly what that
component did, newest first, and ``undo_all()`` restores the interpreter.

An attribute is restored only while it still holds the collector's replacement: if some
other library wrapped it since, restoring would throw that wrapper away, so the entry is
dropped and the fault counted instead.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

_MISSING: Any = object()


@dataclass(frozen=True)
class Patch:
    component: str
    owner: Any
    name: str
    original: Any  # the owner's own value before the change, or _MISSING when it inherited one
    replacement: Any
    undo_fn: Callable[[], None] | None = None  # set for entries made by ``record``

    @property
    def is_attribute(self) -> bool:
        return self.undo_fn is None

    def describe(self) -> str:
        owner = getattr(self.owner, "__qualname__", None) or getattr(self.owner, "__name__", None)
        return f"{self.component}: {owner or type(self.owner).__name__}.{self.name}"


_ledger: list[Patch] = []
_lock = threading.RLock()


def _own_value(owner: Any, name: str) -> Any:
    """The value ``owner`` holds itself (not through its class or bases), or ``_MISSING``."""
    attributes = getattr(owner, "__dict__", None)
    if attributes is None:  # a slotted object: whatever getattr finds is its own
        return getattr(owner, name, _MISSING)
    return attributes.get(name, _MISSING)


def replace(component: str, owner: Any, name: str, replacement: Any) -> Any:
    """Set ``owner.name`` to ``replacement``, recorded; returns the value it had (inherited or own)."""
    with _lock:
        current = getattr(owner, name)
        _ledger.append(Patch(component, owner, name, _own_value(owner, name), replacement))
        setattr(owner, name, replacement)
        return current


def record(component: str, description: str, undo_fn: Callable[[], None]) -> None:
    """Record a change that is not an attribute (a hook list entry, an event listener)."""
    with _lock:
        _ledger.append(Patch(component, None, description, _MISSING, None, undo_fn))


def _undo_one(entry: Patch) -> None:
    if entry.undo_fn is not None:
        entry.undo_fn()
        return
    if _own_value(entry.owner, entry.name) is not entry.replacement:
        from collector import _faults

        _faults.record("patches", RuntimeError(f"{entry.describe()} was replaced since; left"))
        return
    if entry.original is _MISSING:
        delattr(entry.owner, entry.name)
    else:
        setattr(entry.owner, entry.name, entry.original)


def undo(component: str) -> None:
    """Undo every change ``component`` made, newest first."""
    with _lock:
        mine = [entry for entry in _ledger if entry.component == component]
        for entry in reversed(mine):
            _ledger.remove(entry)
            _undo_one(entry)


def undo_all() -> None:
    """Undo every change the collector made, newest first."""
    with _lock:
        while _ledger:
            _undo_one(_ledger.pop())


def active(component: str | None = None) -> list[Patch]:
    """The changes in force, oldest first (all, or one component's)."""
    with _lock:
        return [entry for entry in _ledger if component is None or entry.component == component]
