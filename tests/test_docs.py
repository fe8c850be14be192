"""The documentation covers every hook and every built-in strategy."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from dlm_decode import hookspecs
from dlm_decode.plugins import ROLES

DOCS = Path(__file__).resolve().parent.parent / "docs"
HOOKS = [name for name, obj in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("dlm_")]


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hookspec_is_documented_with_its_arguments(hook):
    text = (DOCS / "hooks.md").read_text(encoding="utf-8")
    assert f"`{hook}" in text or f"## {hook}" in text or hook in text, f"{hook} missing from docs/hooks.md"
    for argument in inspect.signature(getattr(hookspecs, hook)).parameters:
        assert argument in text, f"argument {argument!r} of {hook} missing from docs/hooks.md"


def test_hooks_page_renders_the_hookspecs_module():
    assert "::: dlm_decode.hookspecs" in (DOCS / "hooks.md").read_text(encoding="utf-8")


def test_every_builtin_strategy_has_a_section(strategy_registry):
    text = (DOCS / "strategies.md").read_text(encoding="utf-8")
    for spec in strategy_registry:
        if spec.package == "dlm-decode":
            assert f"`{spec.name}" in text, f"{spec.role} strategy {spec.name!r} missing from docs/strategies.md"
    assert len(HOOKS) == 9 and set(ROLES) == {"window", "cache", "proposal", "verification"}
