"""The patch ledger: every change recorded once, undone newest first, exactly."""

from __future__ import annotations

import types

from collector import _patches


class Base:
    def method(self) -> str:
        return "base"


class Child(Base):
    pass


def test_an_inherited_method_patched_on_a_subclass_is_removed_not_copied() -> None:
    _patches.replace("test", Child, "method", lambda self: "patched")
    assert Child().method() == "patched"
    _patches.undo("test")
    assert "method" not in vars(Child)
    assert Child().method() == "base"


def test_patches_on_one_attribute_are_undone_newest_first() -> None:
    module = types.ModuleType("target")
    original = object()
    module.value = original  # type: ignore[attr-defined]
    _patches.replace("a", module, "value", "first")
    _patches.replace("a", module, "value", "second")
    _patches.undo("a")
    assert module.value is original  # type: ignore[attr-defined]
    assert _patches.active("a") == []


def test_undo_leaves_an_attribute_someone_else_replaced_since() -> None:
    module = types.ModuleType("target")
    module.value = "original"  # type: ignore[attr-defined]
    _patches.replace("b", module, "value", "ours")
    module.value = "theirs"  # type: ignore[attr-defined]
    _patches.undo("b")
    assert module.value == "theirs"  # type: ignore[attr-defined]
    assert _patches.active("b") == []


def test_recorded_changes_are_undone_by_their_own_function() -> None:
    hooks: list[str] = []
    hooks.append("ours")
    _patches.record("c", "hook list entry", lambda: hooks.remove("ours"))
    _patches.undo("c")
    assert hooks == []


def test_undo_of_one_component_keeps_the_others() -> None:
    module = types.ModuleType("target")
    module.x = 1  # type: ignore[attr-defined]
    module.y = 2  # type: ignore[attr-defined]
    _patches.replace("d", module, "x", 10)
    _patches.replace("e", module, "y", 20)
    _patches.undo("d")
    assert (module.x, module.y) == (1, 20)  # type: ignore[attr-defined]
    _patches.undo("e")
    assert module.y == 2  # type: ignore[attr-defined]
