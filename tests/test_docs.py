"""The documentation against the code: the hooks page's signatures, the strategies page's headings, the commands
the pages show, the concepts page's built-ins, the writing-plugins example, and the suite's float comparisons."""

from __future__ import annotations

import dataclasses
import inspect
import re
import shlex
from pathlib import Path

from dlm_decode import hookspecs
from dlm_decode.registry import ROLE_HOOKS, ROLES

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
HOOKS = [name for name, obj in inspect.getmembers(hookspecs, inspect.isfunction) if name.startswith("dlm_")]


def documented_hooks() -> dict[str, dict]:
    """What docs/hooks.md says of each hook: its arguments, and for the role hooks of its table, the role and what
    it returns (the others are written ``[`dlm_hook(arguments)`]`` in the text)."""
    text = (DOCS / "hooks.md").read_text(encoding="utf-8")
    found = {}
    for line in text.splitlines():
        if line.startswith("| [`dlm_"):
            hook, role, called_with, returns = (cell.strip() for cell in line.strip("|").split("|"))
            found[re.match(r"\[`(\w+)`\]", hook).group(1)] = {
                "arguments": re.findall(r"`(\w+)`", called_with),
                "role": role,
                "returns": returns.strip("`"),
            }
    for hook, arguments in re.findall(r"\[`(dlm_\w+)\(([\w, ]*)\)`\]", text):
        found[hook] = {"arguments": [a.strip() for a in arguments.split(",") if a.strip()]}
    return found


def test_the_hooks_page_gives_every_hooks_exact_signature():
    """Each hook's documented arguments are its hookspec's, in order; a role hook's table row names the role whose
    strategies implement it (the core's ``dlm_model_inputs`` none) and its return type; exactly the role hooks
    (one answer per call) are in the table."""
    documented = documented_hooks()
    assert set(documented) == set(HOOKS), "docs/hooks.md documents other hooks than hookspecs defines"
    role_of = {hook: role for role, hook in ROLE_HOOKS.items()}
    for hook, doc in documented.items():
        spec = inspect.signature(getattr(hookspecs, hook))
        assert doc["arguments"] == list(spec.parameters), hook
        in_table = "role" in doc
        assert in_table == getattr(hookspecs, hook).dlm_decode_spec["firstresult"], hook
        if in_table:
            assert doc["returns"] == spec.return_annotation, hook
            assert doc["role"] == role_of[hook] if hook in role_of else doc["role"] not in ROLES, hook
    assert len(HOOKS) == 9 and set(ROLES) == {"window", "cache", "proposal", "verification"}


def test_hooks_page_renders_the_hookspecs_module():
    assert "::: dlm_decode.hookspecs" in (DOCS / "hooks.md").read_text(encoding="utf-8")


def documented_strategies() -> dict[str, tuple[list[str], bool]]:
    """Strategy name -> (the parameters its ``###`` heading in docs/strategies.md lists, ``...`` where some are left
    out; whether the heading marks it a plugin's)."""
    text = (DOCS / "strategies.md").read_text(encoding="utf-8")
    found = {}
    for heading in re.findall(r"^### (.+)$", text, re.M):
        for name, parameters in re.findall(r"`(\w+)(?:\(([^)]*)\))?`", heading):
            found[name] = ([p.strip() for p in parameters.split(",")] if parameters else [], "(plugin)" in heading)
    return found


def test_every_strategy_has_a_heading_listing_its_parameters(strategy_registry):
    """A heading per registered strategy, naming its config's fields in order (an elided heading, with ``...``,
    names some of them in order), marked ``(plugin)`` exactly when another package ships it; and no heading for a
    strategy that is not registered (a plugin's is skipped when the plugin is not installed)."""
    documented = documented_strategies()
    registered = {spec.name: spec for spec in strategy_registry}
    for name, spec in registered.items():
        assert name in documented, f"{spec.role} strategy {name!r} has no heading in docs/strategies.md"
        listed, plugin = documented[name]
        fields = [field.name for field in dataclasses.fields(spec.config_cls)]
        named = [p for p in listed if p != "..."]
        if "..." in listed:
            remaining = iter(fields)
            assert all(p in remaining for p in named) and len(named) < len(fields), (name, listed, fields)
        else:
            assert listed == fields, (name, listed, fields)
        assert plugin == (spec.package != "dlm-decode"), name
    assert {name for name, (_, plugin) in documented.items() if not plugin} <= set(registered)


def documented_commands() -> list[tuple[str, str]]:
    """``(page, command)`` for every ``dlm-decode`` command the README and the docs show, in code blocks (with
    their ``\\`` continuations) and inline; usage synopses (``[optional]``, ``<placeholder>``, ``...``) and
    printed error messages are left out."""
    pages = [ROOT / "README.md", *sorted(DOCS.glob("*.md")), *sorted(ROOT.glob("plugins/*/README.md"))]
    commands = []
    for page in pages:
        text = page.read_text(encoding="utf-8")
        blocks = re.findall(r"```[a-z]*\n(.*?)```", text, re.S)
        lines = [
            line.strip().removeprefix("$ ") for block in blocks for line in re.sub(r"\\\n\s*", " ", block).splitlines()
        ]
        lines += re.findall(r"`(dlm-decode [^`]*)`", re.sub(r"```.*?```", "", text, flags=re.S))
        commands += [
            (page.name, line)
            for line in lines
            if line.startswith("dlm-decode ") and not re.search(r"\[|<|\.\.\.|^dlm-decode error", line)
        ]
    return commands


def test_every_documented_command_parses_and_names_existing_configs(monkeypatch):
    """Each command, cut at its first shell operator, goes through ``dlm-decode``'s own argument handling
    (``cli.main`` with the commands replaced by a recorder): no unknown option, subcommand or misplaced argument,
    and every ``-c`` file exists."""
    from dlm_decode import cli

    parsed = []
    for name in [name for name in vars(cli) if name.startswith("cmd_")]:
        monkeypatch.setattr(cli, name, lambda args: parsed.append(args) or 0)
    commands = documented_commands()
    assert len(commands) > 40, "the pages show fewer commands than expected: is the extraction broken?"
    for page, command in commands:
        parsed.clear()
        words = shlex.split(command, comments=True)
        cut = next((i for i, word in enumerate(words) if word in ("|", ">", "2>&1", "&&", ";", "&")), len(words))
        try:
            code = cli.main(words[1:cut])
        except SystemExit as stop:  # --help, --version, or an argparse error (code 2)
            code = stop.code
        assert code == 0, f"{page}: {command}"
        for config in [path for args in parsed for path in getattr(args, "config", [])]:
            assert (ROOT / config).is_file(), f"{page}: {command}: no config file {config}"


def test_the_concepts_page_lists_exactly_the_registered_built_ins(strategy_registry):
    """The built-ins column of docs/concepts.md's roles table names every strategy the package registers for the
    role, and no other."""
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
