"""Plugin discovery (plugins.py): every broken plugin package or entry point is reported as a PluginError naming
it, never raw; a registry refuses a strategy registered twice. Hook calls while a decoder runs are
test_dispatch.py's.

Entry points are simulated with fake distributions (a ``*.dist-info`` directory and a module) on ``sys.path``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from dlm_decode import PluginError
from dlm_decode.cli import main
from dlm_decode.hookspecs import hookimpl
from dlm_decode.plugins import build_registry, discovery_manager, env_switch, reset_registry

DOCS = Path(__file__).resolve().parents[1] / "docs" / "writing-plugins.md"


@pytest.fixture
def site(tmp_path, monkeypatch):
    """``site(dist, {entry point name: module source})`` installs a fake distribution ``dist`` 0.1 whose
    ``dlm_decode`` entry points are modules with the given sources; returns the module names."""
    monkeypatch.setenv("DLM_DECODE_DISABLE_PLUGIN_AUTOLOAD", "")
    monkeypatch.delenv("DLM_DECODE_PLUGINS", raising=False)
    imported = set(sys.modules)

    def install(dist: str, modules: dict[str, str]) -> list[str]:
        root = tmp_path / dist
        info = root / f"{dist}-0.1.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
        names = [f"fake_{dist}_{name}" for name in modules]
        lines = [f"{name} = {module}" for name, module in zip(modules, names)]
        (info / "entry_points.txt").write_text("[dlm_decode]\n" + "\n".join(lines) + "\n")
        for module, source in zip(names, modules.values()):
            (root / f"{module}.py").write_text(source)
        monkeypatch.syspath_prepend(str(root))
        return names

    yield install
    for name in set(sys.modules) - imported:
        if name.startswith("fake_"):
            del sys.modules[name]
    reset_registry()


REGISTER = "from dlm_decode import hookimpl\n@hookimpl\ndef dlm_register(registry):\n    pass\n"


def test_two_packages_with_the_same_entry_point_name_are_rejected(site):
    site("firstplug", {"shared": REGISTER})
    site("secondplug", {"shared": REGISTER})
    with pytest.raises(
        PluginError,
        match=r"(?s)plugin shared in entry point group 'dlm_decode'.*silently hide.*"
        r"fix: uninstall one of the two",
    ) as caught:
        discovery_manager()
    assert "firstplug 0.1" in str(caught.value) and "secondplug 0.1" in str(caught.value)


def test_an_entry_point_failing_to_import_is_named_with_its_package(site):
    site("brokenplug", {"broken": "raise ImportError('no module named foo')\n"})
    with pytest.raises(
        PluginError,
        match=r"(?s)plugin broken \(brokenplug 0\.1\) in import: loading "
        r"`fake_brokenplug_broken` failed: ImportError: no module named foo.*fix",
    ) as caught:
        discovery_manager()
    assert isinstance(caught.value.__cause__, ImportError)


def test_a_misspelt_hook_names_the_plugin_and_the_right_hook(site):
    site("typoplug", {"typo": "from dlm_decode import hookimpl\n@hookimpl\ndef dlm_regster(registry):\n    pass\n"})
    with pytest.raises(
        PluginError,
        match=r"(?s)plugin typo \(typoplug 0\.1\) in dlm_regster: implements "
        r"`dlm_regster`, which is not a dlm_decode hook.*fix: rename it to "
        r"`dlm_register`",
    ):
        discovery_manager()


def test_dlm_decode_plugins_cli_reports_a_bad_plugin_without_a_traceback(site, capsys):
    site("typoplug", {"typo": "from dlm_decode import hookimpl\n@hookimpl\ndef dlm_regster(registry):\n    pass\n"})
    reset_registry()
    assert main(["plugins"]) == 2
    assert "dlm-decode: error: plugin typo (typoplug 0.1) in dlm_regster" in capsys.readouterr().err


def test_a_hook_argument_the_spec_lacks_names_the_hook_and_its_arguments(site):
    site(
        "argplug",
        {"args": "from dlm_decode import hookimpl\n@hookimpl\ndef dlm_register(registry, extra):\n    pass\n"},
    )
    with pytest.raises(
        PluginError,
        match=r"(?s)plugin args \(argplug 0\.1\) in dlm_register: the implementation "
        r"asks for extra, which `dlm_register` does not pass.*fix:.*registry",
    ):
        discovery_manager()


def test_a_misspelt_allow_list_name_lists_the_installed_entry_points(site, monkeypatch):
    site("goodplug", {"good": REGISTER})
    monkeypatch.setenv("DLM_DECODE_PLUGINS", "god")
    with pytest.raises(
        PluginError,
        match=r"(?s)plugin god in DLM_DECODE_PLUGINS: no installed package.*"
        r"installed entry points: .*\bgood\b.*fix",
    ):
        discovery_manager()


def test_the_allow_list_still_loads_the_names_it_gives(site, monkeypatch):
    site("goodplug", {"good": REGISTER, "other": REGISTER})
    monkeypatch.setenv("DLM_DECODE_PLUGINS", "good")
    manager = discovery_manager()
    assert manager.has_plugin("good") and not manager.has_plugin("other")
    assert [
        dist.project_name for plugin, dist in manager.list_plugin_distinfo() if plugin is manager.get_plugin("good")
    ] == ["goodplug"]


@pytest.mark.parametrize("value", ["", "0", "false", "No", " OFF "])
def test_switch_values_that_mean_off(value, monkeypatch):
    monkeypatch.setenv("DLM_DECODE_TRACE_PLUGINS", value)
    assert not env_switch("DLM_DECODE_TRACE_PLUGINS")


def test_the_docs_say_which_switch_values_mean_off(monkeypatch):
    monkeypatch.setenv("DLM_DECODE_TRACE_PLUGINS", "yes")
    assert env_switch("DLM_DECODE_TRACE_PLUGINS")
    text = " ".join(DOCS.read_text().split())
    assert "Any non-empty value" not in text
    assert "unset, empty, `0`, `false`, `no` or `off`" in text


@dataclass
class _NoParams:
    pass


def test_duplicate_strategy_names_are_rejected():
    class Twice:
        @staticmethod
        @hookimpl
        def dlm_register(registry):
            registry.add("verification", "topk", _NoParams, lambda config, context: None)

    with pytest.raises(PluginError, match="(?s)'topk' is already registered by dlm_decode.strategies.verification"):
        build_registry({"tests.twice": Twice})


@pytest.mark.parametrize(
    "requires",
    [{"model.ar": ""}, {"": "set it"}, {"model.ar": None}, {1: "set it"}],
    ids=["empty-fix", "empty-key", "no-fix", "key-not-a-string"],
)
def test_a_requirement_declaration_must_map_keys_to_fixes(requires):
    class Needy:
        @staticmethod
        @hookimpl
        def dlm_register(registry):
            registry.add("verification", "needy", _NoParams, lambda config, context: None, requires=requires)

    with pytest.raises(
        PluginError,
        match=r"(?s)plugin tests.needy in dlm_register: verification strategy 'needy': "
        r"requires must map dotted config keys to fixes.*fix: e.g. requires=",
    ):
        build_registry({"tests.needy": Needy})


def test_a_strategy_declares_its_requirements_optionally():
    registry = build_registry()
    assert registry.get("verification", "apd").requires == {
        "model.ar": "set model.ar.path (e.g. embedded:ar), or compose configs/models/embedded-ar.yaml"
    }
    assert registry.get("verification", "topk").requires == {}


RAISES = "from dlm_decode import hookimpl\n@hookimpl\ndef dlm_register(registry):\n    return 1 / 0\n"


@pytest.mark.parametrize("where", ["before", "after"])
def test_debug_shows_where_a_plugin_raised(site, capsys, where):
    """Without --debug: the one-line error, which mentions --debug; with it (before or after the subcommand): the
    chained traceback, down to the plugin's file and line."""
    module = site("zeroplug", {"zero": RAISES})[0]
    reset_registry()
    assert main(["plugins"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "dlm-decode: error: plugin zero in dlm_register: raised ZeroDivisionError: division by zero\n"
        "  fix: fix or uninstall the plugin package, or set DLM_DECODE_DISABLE_PLUGIN_AUTOLOAD=1\n"
        "  (rerun with --debug for the traceback, with the file and line where it was raised)\n"
    )
    assert main(["--debug", "plugins"] if where == "before" else ["plugins", "--debug"]) == 2
    err = capsys.readouterr().err
    assert f'{module}.py", line 4, in dlm_register\n    return 1 / 0' in err
    assert "The above exception was the direct cause of the following exception" in err
    assert err.endswith(
        "dlm-decode: error: plugin zero in dlm_register: raised ZeroDivisionError: division by zero\n"
        "  fix: fix or uninstall the plugin package, or set DLM_DECODE_DISABLE_PLUGIN_AUTOLOAD=1\n"
    )
