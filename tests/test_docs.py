"""The documentation covers every hook and every built-in strategy."""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest

from dlm_decode import hookspecs
from dlm_decode.registry import ROLES

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


def test_the_concepts_page_lists_exactly_the_registered_built_ins(strategy_registry):
    """The built-ins column of docs/concepts.md's roles table names every strategy the package registers for the
    role, and no other."""
    import re

    text = (DOCS / "concepts.md").read_text(encoding="utf-8")
    for role in ROLES:
        row = next(line for line in text.splitlines() if line.startswith(f"| {role} |"))
        documented = set(re.findall(r"`(\w+)`", row.split("|")[4].split(";")[0]))
        registered = {spec.name for spec in strategy_registry if spec.role == role and spec.package == "dlm-decode"}
        assert documented == registered, role


def _absolute_only_comparisons(path: Path) -> list[str]:
    """``allclose`` / ``assert_close`` / ``isclose`` calls in ``path`` given an ``atol`` but no relative tolerance
    (``rtol`` missing for assert_close's own defaults is fine only without ``atol``)."""
    import ast

    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.Call):
            continue
        name = getattr(node.func, "attr", getattr(node.func, "id", ""))
        keywords = {k.arg: k.value for k in node.keywords if k.arg}
        if name in ("allclose", "assert_close", "isclose") and "atol" in keywords:
            rtol = keywords.get("rtol")
            if rtol is None or (isinstance(rtol, ast.Constant) and not rtol.value):
                found.append(f"{path.name}:{node.lineno}")
    return found


def test_float_comparisons_in_the_suite_scale_with_the_values():
    """An absolute tolerance alone fails on another CPU as soon as the values are large (logits of 10 differ by
    2e-5 between x86 machines): comparisons pass an rtol, or use helpers.assert_logits_close."""
    root = Path(__file__).resolve().parent
    files = [*root.glob("*.py"), *root.parent.glob("plugins/*/tests/*.py")]
    assert [hit for path in files for hit in _absolute_only_comparisons(path)] == []


def test_the_plugin_example_of_writing_plugins_runs_from_the_public_api_alone(monkeypatch):
    """The "per-batch memory" example of docs/writing-plugins.md: registered as a plugin, selected by name, it
    commits 1, 2, 4... tokens per row and step and publishes its row statistic."""
    import re
    import sys
    import types

    from dlm_decode.config import load_config
    from dlm_decode.decoder import Decoder
    from dlm_decode.plugins import build_registry
    from dlm_decode.testing.toy import ToyDiffusionLM

    text = (DOCS / "writing-plugins.md").read_text(encoding="utf-8")
    section = text.split("## A strategy with per-batch memory", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert re.findall(r"^from dlm_decode[\w.]* import", code, re.M) == ["from dlm_decode.api import"]
    module = types.ModuleType("docs_doubling")
    monkeypatch.setitem(sys.modules, module.__name__, module)  # dataclasses look their module up
    exec(compile(code, "writing-plugins.md", "exec"), module.__dict__)
    registry = build_registry({"docs.doubling": module})
    config = load_config({}, ["decoder.verification=doubling", "generation.max_new_tokens=7"], registry)
    out = Decoder(config, dllm=ToyDiffusionLM(eos_bias=float("-inf")), registry=registry).generate(["ab", "abcd"])
    assert [s.commits_per_step for s in out.stats] == [[1, 2, 4], [1, 2, 4]]
    assert [s.extra["doubling.commits"] for s in out.stats] == [7.0, 7.0]
