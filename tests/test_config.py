"""Config composition: files, overrides, strategy replacement, hashing, and every shipped YAML."""

from __future__ import annotations

from pathlib import Path

import pytest

from dlm_decode import load_config

CONFIGS = sorted(Path("configs").rglob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=str)
def test_every_shipped_config_validates(path):
    resolved = load_config(path)
    assert len(resolved.hash) == 12


def test_later_files_and_overrides_win(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text("generation: {max_new_tokens: 20, seed: 3}\ndecoder: {window: {name: blocks, size: 4}}\n")
    top = tmp_path / "top.yaml"
    top.write_text("generation: {max_new_tokens: 30}\n")
    resolved = load_config([base, top], ["generation.seed=9"])
    assert resolved.config.generation.max_new_tokens == 30
    assert resolved.config.generation.seed == 9
    assert resolved.strategies["window"][1].size == 4


def test_naming_another_strategy_replaces_the_section():
    resolved = load_config("configs/decoders/llada.yaml", ["decoder.verification=left_to_right"])
    name, params = resolved.strategies["verification"]
    assert name == "left_to_right" and params.k == 1


def test_same_strategy_name_merges_parameters():
    resolved = load_config("configs/decoders/llada.yaml", ["decoder.verification.score=margin"])
    name, params = resolved.strategies["verification"]
    assert name == "topk" and params.score.value == "margin" and params.tokens_per_step == 1


def test_composing_a_strategy_file_swaps_one_role_only():
    base = load_config("configs/decoders/llada.yaml")
    swapped = load_config(["configs/decoders/llada.yaml", "configs/strategies/proposal/sample-t0.5.yaml"])
    assert swapped.strategies["proposal"][0] == "sample"
    for role in ("window", "cache", "verification"):
        assert swapped.strategies[role] == base.strategies[role]
    assert swapped.hash != base.hash


def test_hash_is_stable_and_follows_the_resolved_values():
    a = load_config("configs/decoders/llada.yaml")
    b = load_config("configs/decoders/llada.yaml", ["generation.seed=0"])
    c = load_config("configs/decoders/llada.yaml", ["generation.seed=1"])
    assert a.hash == b.hash != c.hash
    assert a.to_dict()["decoder"]["verification"]["name"] == "topk"
