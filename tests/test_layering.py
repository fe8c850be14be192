"""The import structure of ``dlm_decode``: one-way layers, no cycle, and strategies that use the public plugin API
alone (docs/concepts.md, "Layers"). Every import counts: absolute or relative, at module level, inside functions
and under ``TYPE_CHECKING``."""

from __future__ import annotations

import ast
import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "src" / "dlm_decode"
EXAMPLE_PLUGIN = ROOT / "plugins" / "dlm-decode-eb-sampler" / "src" / "dlm_decode_eb_sampler"

#: Low to high: a module may import from its own layer and the layers below it, never from a layer above. A module
#: is placed by its first name under ``dlm_decode`` (``models.hf`` -> ``models``); ``__init__`` is the package's.
LAYERS = [
    {"errors", "distributed"},
    {"masks", "selection", "ops"},
    {"state"},
    {"registry"},
    {"hookspecs"},
    {"plugins"},
    {"dispatch"},
    {"loop", "timing"},
    {"config"},
    {"models"},
    {"context"},
    {"api"},
    {"strategies"},
    {"decoder"},
    {"testing", "eval", "recipes"},
    {"integrations", "serve"},
    {"cli", "__init__"},
]


def modules(root: Path, package: str) -> dict[str, Path]:
    """Module name -> file of every module under ``root``, the package ``package``."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        found[".".join((package, *(parts[:-1] if parts[-1] == "__init__" else parts)))] = path
    return found


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """What module ``name`` (file ``path``) imports of the ``dlm_decode`` packages, anywhere in it: ``from a.b
    import c`` is ``a.b.c`` when that is a module of ``known``, else ``a.b``; relative imports are resolved."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = (
                importlib.util.resolve_name("." * node.level + (node.module or ""), package)
                if node.level
                else node.module
            )
            found.update(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names)
    return {target for target in found if target.split(".")[0].startswith("dlm_decode")} - {name}


def layer(name: str) -> int:
    parts = name.split(".")
    key = parts[1] if len(parts) > 1 else "__init__"
    return next(index for index, members in enumerate(LAYERS) if key in members)


def upward(graph: dict[str, set[str]]) -> list[str]:
    return sorted(
        f"{name} ({layer(name)}) -> {target} ({layer(target)})"
        for name, targets in graph.items()
        for target in targets
        if layer(target) > layer(name)
    )


def cycles(graph: dict[str, set[str]]) -> list[str]:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    found = []

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for target in sorted(graph.get(name, ())):
            if state.get(target) == 1:
                found.append(" -> ".join(path[path.index(target) :] + [target]))
            elif target in graph and target not in state:
                visit(target, [*path, target])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    known = modules(PACKAGE, "dlm_decode")
    return {name: imports(name, path, set(known)) for name, path in known.items()}


def test_every_module_has_a_layer_and_every_import_names_a_module(graph):
    placed = {key for members in LAYERS for key in members}
    assert [name for name in graph if (name.split(".")[1] if "." in name else "__init__") not in placed] == []
    assert (
        sorted(f"{name} -> {target}" for name, targets in graph.items() for target in targets if target not in graph)
        == []
    ), "an import of a module that does not exist"


def test_no_import_runs_from_a_lower_layer_to_a_higher_one(graph):
    assert upward(graph) == []


def test_the_import_graph_has_no_cycle(graph):
    assert cycles(graph) == []


@pytest.mark.parametrize(
    "root, package", [(PACKAGE / "strategies", "dlm_decode.strategies"), (EXAMPLE_PLUGIN, "dlm_decode_eb_sampler")]
)
def test_strategies_import_only_the_public_plugin_api(root, package):
    """The built-in strategies and the example plugin package stand on ``dlm_decode.api`` alone, as any third-party
    strategy can: no strategy imports another (the example package's modules may import each other)."""
    known = set(modules(PACKAGE, "dlm_decode")) | set(modules(EXAMPLE_PLUGIN, "dlm_decode_eb_sampler"))
    own = modules(root, package)
    used = {target for name, path in own.items() for target in imports(name, path, known)}
    outside = used - ({"dlm_decode.api"} | (set(own) if package == "dlm_decode_eb_sampler" else set()))
    assert outside == set() and "dlm_decode.api" in used


def test_the_checks_fail_on_an_upward_import_a_cycle_and_a_relative_import(tmp_path):
    """The walker sees imports inside functions, under TYPE_CHECKING and relative ones; the two rules fire."""
    source = tmp_path / "state.py"
    source.write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from dlm_decode.decoder import X\n"
        "def f():\n    import dlm_decode.cli\n    from .models import hf\n    from . import errors\n"
    )
    known = {"dlm_decode.decoder", "dlm_decode.cli", "dlm_decode.models", "dlm_decode.models.hf", "dlm_decode.errors"}
    found = imports("dlm_decode.state", source, known)
    assert found == {"dlm_decode.decoder", "dlm_decode.cli", "dlm_decode.models.hf", "dlm_decode.errors"}
    assert upward({"dlm_decode.state": found})[0] == "dlm_decode.state (2) -> dlm_decode.cli (16)"
    graph = {"dlm_decode.a": {"dlm_decode.b"}, "dlm_decode.b": {"dlm_decode.c"}, "dlm_decode.c": {"dlm_decode.a"}}
    assert cycles(graph) == ["dlm_decode.a -> dlm_decode.b -> dlm_decode.c -> dlm_decode.a"]


def test_the_layers_of_the_concepts_page_are_the_tested_ones():
    text = (ROOT / "docs" / "concepts.md").read_text(encoding="utf-8").split("## Layers", 1)[1].split("\n## ", 1)[0]
    items = re.findall(r"^\d+\. (.*?)(?=^\d+\. |\Z)", text, re.M | re.S)
    assert [set(re.findall(r"`(\w+)`", item.split(":")[0])) for item in items] == LAYERS
