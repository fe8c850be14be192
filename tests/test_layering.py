"""The import structure of ``dlm_decode``: one-way layers, no cycle, and strategies that use the public plugin API
alone (docs/concepts.md, "Layers"). Every import counts: at module level, inside functions and under
``TYPE_CHECKING``."""

from __future__ import annotations

import ast
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
    {"integrations"},
    {"cli", "__init__"},
]


def module_name(path: Path, root: Path, package: str) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join((package, *parts[:-1])) if parts[-1] == "__init__" else ".".join((package, *parts))


def modules(root: Path, package: str) -> dict[str, Path]:
    return {module_name(path, root, package): path for path in sorted(root.rglob("*.py"))}


def imports(path: Path, known: set[str]) -> set[str]:
    """The modules of ``known`` that ``path`` imports anywhere in it (``from a.b import c`` is ``a.b.c`` when that
    is a module, else ``a.b``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.update(f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in known else node.module
                         for alias in node.names)
    return {name for name in found if name in known or name.split(".")[0] == "dlm_decode"}


def layer(name: str) -> int:
    parts = name.split(".")
    key = parts[1] if len(parts) > 1 else "__init__"
    return next(index for index, members in enumerate(LAYERS) if key in members)


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    known = modules(PACKAGE, "dlm_decode")
    return {name: imports(path, set(known)) - {name} for name, path in known.items()}


def test_every_module_has_a_layer(graph):
    for name in graph:
        layer(name)  # raises StopIteration for a module of no layer


def test_no_import_runs_from_a_lower_layer_to_a_higher_one(graph):
    upward = sorted(f"{name} ({layer(name)}) -> {target} ({layer(target)})"
                    for name, targets in graph.items() for target in targets if layer(target) > layer(name))
    assert upward == []


def test_the_import_graph_has_no_cycle(graph):
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for target in sorted(graph.get(name, ())):
            if state.get(target) == 1:
                cycles.append(" -> ".join(path[path.index(target):] + [target]))
            elif target in graph and target not in state:
                visit(target, [*path, target])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []


@pytest.mark.parametrize("root, package", [(PACKAGE / "strategies", "dlm_decode.strategies"),
                                           (EXAMPLE_PLUGIN, "dlm_decode_eb_sampler")])
def test_strategies_import_only_the_public_plugin_api(root, package):
    """The built-in strategies and the example plugin package stand on ``dlm_decode.api`` alone (their own package
    aside), as any third-party strategy can."""
    own = modules(root, package)
    used = {name for path in own.values() for name in imports(path, set()) if name.startswith("dlm_decode")}
    assert used == {"dlm_decode.api"}


def test_the_checks_see_an_upward_import(tmp_path):
    """The walker finds imports inside functions and under TYPE_CHECKING (a layering rule they broke would pass
    unseen otherwise)."""
    source = tmp_path / "probe.py"
    source.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from dlm_decode.decoder import X\n"
                      "def f():\n    import dlm_decode.cli\n    from dlm_decode.models import hf\n")
    found = imports(source, {"dlm_decode.decoder", "dlm_decode.cli", "dlm_decode.models.hf", "dlm_decode.models"})
    assert found == {"dlm_decode.decoder", "dlm_decode.cli", "dlm_decode.models.hf"}
