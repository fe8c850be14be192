"""The installed package registers ``entropy_bound`` through the ``dlm_decode`` entry-point group."""

from __future__ import annotations

import json
from importlib import metadata

import pytest

import dlm_decode_eb_sampler
from dlm_decode import PluginError
from dlm_decode.cli import main
from dlm_decode.plugins import get_registry, reset_registry
from dlm_decode_eb_sampler import EntropyBoundConfig

# conftest.py clears the environment switches and resets the registry around every test.


def test_the_entry_point_is_declared():
    (entry_point,) = [ep for ep in metadata.entry_points(group="dlm_decode") if ep.name == "eb_sampler"]
    assert entry_point.value == "dlm_decode_eb_sampler"
    assert entry_point.dist.metadata["Name"] == "dlm-decode-eb-sampler"
    assert entry_point.load() is dlm_decode_eb_sampler


def test_registered_with_its_package():
    spec = get_registry().get("verification", "entropy_bound")
    assert spec.role == "verification"
    assert spec.config_cls is EntropyBoundConfig
    assert spec.package == "dlm-decode-eb-sampler"
    assert spec.version == metadata.version("dlm-decode-eb-sampler")
    assert spec.plugin == "eb_sampler"
    assert "entropy_bound" not in get_registry().names("window")


def test_the_fixture_registry_has_it(strategy_registry):
    assert "entropy_bound" in strategy_registry.names("verification")
    assert "topk" in strategy_registry.names("verification")


def test_disabling_autoload_leaves_only_the_builtins(monkeypatch):
    monkeypatch.setenv("DLM_DECODE_DISABLE_PLUGIN_AUTOLOAD", "1")
    reset_registry()
    names = get_registry().names("verification")
    assert "entropy_bound" not in names
    assert "topk" in names


def test_the_allowlist_names_entry_points(monkeypatch):
    monkeypatch.setenv("DLM_DECODE_PLUGINS", "eb_sampler")
    reset_registry()
    assert "entropy_bound" in get_registry().names("verification")
    monkeypatch.setenv("DLM_DECODE_PLUGINS", "eb_samplr")  # a misspelt name is an error, not an empty selection
    reset_registry()
    with pytest.raises(PluginError, match=r"(?s)eb_samplr.*installed entry points: .*eb_sampler.*fix"):
        get_registry()
    reset_registry()


def test_listed_by_the_cli(capsys):
    assert main(["plugins", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {
        "role": "verification",
        "name": "entropy_bound",
        "package": "dlm-decode-eb-sampler",
        "version": metadata.version("dlm-decode-eb-sampler"),
        "plugin": "eb_sampler",
    } in rows
