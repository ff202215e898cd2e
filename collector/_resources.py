"""Objects meant to be made once per process, counted as they are made (tip 2).

An HTTP client or Redis client built per request (in a dependency, or ``httpx.get`` which
builds a ``Client`` per call) makes ``rate(fastapi_resources_created_total[5m])`` follow
the request rate; a client shared by the process adds nothing after start-up.

The classes' ``__init__`` are wrapped once their library is imported: at once for a
library already imported, else by an import hook when the app imports it, so an app
pays nothing, not even an import, for a library it does not use. Subclasses that call
``super().__init__`` count as their base. Database engines and connections are counted
by ``collector._database`` and the raw driver modules. The wrappers and the import hook are
in the patch ledger (component ``resources``).
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.util
import sys
from collections.abc import Callable, Sequence
from importlib.machinery import ModuleSpec
from types import ModuleType
from typing import Any

from collector import _faults, _patches
from collector.metrics import RESOURCES_CREATED

# Module → (class name, kind) wrapped when that module has been executed.
TARGETS: dict[str, tuple[tuple[str, str], ...]] = {
    "httpx": (("Client", "http_client"), ("AsyncClient", "http_client")),
    "aiohttp": (("ClientSession", "aiohttp_session"),),
    "redis": (("Redis", "redis_client"),),
    "redis.asyncio": (("Redis", "redis_client"),),
}

COMPONENT = "resources"
_users = 0


def counting(original: Callable[..., None], kind: str, component: str = "resources") -> Callable[..., None]:
    """``original`` (an ``__init__``) that counts each object it makes as a resource of ``kind``."""
    created = RESOURCES_CREATED.labels(kind)

    @functools.wraps(original)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        try:
            created.inc()
        except Exception as exc:
            _faults.record(component, exc)

    return __init__


def _patch_module(name: str, module: ModuleType) -> None:
    for class_name, kind in TARGETS[name]:
        cls = getattr(module, class_name, None)
        if isinstance(cls, type) and "__init__" in vars(cls) and not _patched(cls):
            _patches.replace(COMPONENT, cls, "__init__", counting(vars(cls)["__init__"], kind))


def _patched(cls: type) -> bool:
    return any(entry.owner is cls for entry in _patches.active(COMPONENT))


class _ImportHook(importlib.abc.MetaPathFinder):
    """Wraps the target classes right after their module runs, the first time it is imported."""

    def __init__(self) -> None:
        self._finding: set[str] = set()

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if fullname not in TARGETS or fullname in self._finding:
            return None
        self._finding.add(fullname)
        try:
            spec = importlib.util.find_spec(fullname)  # the other finders' answer
        except Exception:
            return None
        finally:
            self._finding.discard(fullname)
        loader: Any = spec.loader if spec is not None else None
        if loader is None or not hasattr(loader, "exec_module"):
            return None
        exec_module = loader.exec_module

        def exec_and_patch(module: ModuleType) -> None:
            del loader.exec_module  # the loader instance is this module's alone
            exec_module(module)
            if not _users:  # uninstalled while this import was under way
                return
            try:
                _patch_module(fullname, module)
            except Exception as exc:
                _faults.record("resources", exc)

        try:
            loader.exec_module = exec_and_patch
        except AttributeError:
            return None
        return spec


_hook = _ImportHook()


def _forget() -> None:
    global _users
    _users = 0


def _remove_hook() -> None:
    if _hook in sys.meta_path:
        sys.meta_path.remove(_hook)


def install() -> None:
    """Count the target classes' instances for one more instrumented app."""
    global _users
    _users += 1
    if _users > 1:
        return
    _patches.record(COMPONENT, "instrumented apps", _forget)  # undone last: the count follows
    for name in TARGETS:
        module = sys.modules.get(name)
        if module is not None:
            _patch_module(name, module)
    if any(name not in sys.modules for name in TARGETS) and _hook not in sys.meta_path:
        sys.meta_path.insert(0, _hook)
        _patches.record(COMPONENT, "sys.meta_path import hook", _remove_hook)


def uninstall() -> None:
    """Undo ``install`` once its last app is uninstrumented."""
    global _users
    _users = max(0, _users - 1)
    if not _users:
        _patches.undo(COMPONENT)
