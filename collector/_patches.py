"""The ledger of every change the collector makes outside its own objects, undone in reverse order.

Every attribute the collector replaces on a class, module or object of another library
goes through ``replace``; every other change (an import hook, an event listener, a
callback list entry) is recorded with ``record`` and the function that undoes it. Each
entry names the component that owns it, so ``undo(component)`` removes exactly what that
component did, newest first, and ``undo_all()`` restores the interpreter. A component named
``"parent/part"`` (one engine of ``"database"``) is undone alone by its own name, and with
its parent by the parent's.

A module whose own state follows its patches (a registry of what it instrumented) records,
before its first patch, the function that resets that state: undone last, it leaves the
module as if it had never been attached, whoever undoes it.

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
    undo_fn: Callable[[], object] | None = None  # set for entries made by ``record``

    @property
    def is_attribute(self) -> bool:
        return self.undo_fn is None

    def describe(self) -> str:
        if self.undo_fn is not None:
            return f"{self.component}: {self.name}"
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


def record(component: str, description: str, undo_fn: Callable[[], object]) -> None:
    """Record a change that is not an attribute (a hook list entry, an event listener)."""
    with _lock:
        _ledger.append(Patch(component, None, description, _MISSING, None, undo_fn))


def _undo_one(entry: Patch) -> None:
    try:
        _restore(entry)
    except Exception as exc:  # one failed undo must not leave the older changes in place
        from collector import _faults

        _faults.record("patches", exc)


def _restore(entry: Patch) -> None:
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


def _belongs(entry: Patch, component: str) -> bool:
    return entry.component == component or entry.component.startswith(component + "/")


def undo(component: str) -> None:
    """Undo every change ``component`` (and its ``component/...`` parts) made, newest first."""
    with _lock:
        mine = [entry for entry in _ledger if _belongs(entry, component)]
        _ledger[:] = [entry for entry in _ledger if not _belongs(entry, component)]
        for entry in reversed(mine):
            _undo_one(entry)


def undo_all(keep: tuple[str, ...] = ()) -> None:
    """Undo every change the collector made, newest first, but those of the ``keep`` components."""
    with _lock:
        kept = [entry for entry in _ledger if any(_belongs(entry, component) for component in keep)]
        undone = [entry for entry in _ledger if entry not in kept]
        _ledger[:] = kept
        for entry in reversed(undone):
            _undo_one(entry)


def active(component: str | None = None) -> list[Patch]:
    """The changes in force, oldest first (all, or one component's with its parts)."""
    with _lock:
        return [entry for entry in _ledger if component is None or _belongs(entry, component)]
