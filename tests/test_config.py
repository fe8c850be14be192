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


@pytest.mark.parametrize("seed", [-2**63, -1, 0, 2**64 - 1])
def test_every_seed_the_generator_accepts_validates(seed):
    assert load_config({}, [f"generation.seed={seed}"]).config.generation.seed == seed


@pytest.mark.parametrize("device", ["cpu", "cpu:0", "cuda", "cuda:0", "cuda:12", "mps", "auto"])
def test_device_strings_torch_accepts_validate(device):
    assert load_config({}, [f"model.dllm.device={device}"]).config.model.dllm.device == device


def test_model_ar_null_removes_the_ar_model():
    """``model.ar`` is optional, so null is a value for it (unlike ``model.dllm``, which null would reset)."""
    with_ar = load_config("configs/models/embedded-ar.yaml")
    assert with_ar.config.model.ar is not None
    assert load_config("configs/models/embedded-ar.yaml", ["model.ar=null"]).config.model.ar is None


def _reference_tables(role: str) -> dict[str, dict[str, str]]:
    """strategy -> {key: default cell} from the ``decoder.<role>`` table of docs/configuration.md's reference."""
    text = Path("docs/configuration.md").read_text(encoding="utf-8")
    section = text.split(f"### `decoder.{role}`", 1)[1].split("\n#", 1)[0]
    tables: dict[str, dict[str, str]] = {}
    strategy = None
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.replace("\\|", "/").strip().strip("|").split("|")]
        if not line.startswith("| ") or len(cells) < 5 or cells[0] == "strategy":
            continue
        strategy = cells[0].split()[0].strip("`") if cells[0] else strategy
        keys = tables.setdefault(strategy, {})
        if cells[1]:
            keys[cells[1].strip("`")] = cells[3]
    return tables


def _yaml_cell(value) -> str:
    value = getattr(value, "value", value)  # enums are written as their value
    return "`null`" if value is None else f"`{str(value).lower() if isinstance(value, bool) else value}`"


def test_the_configuration_reference_lists_every_strategy_and_field(strategy_registry):
    import dataclasses

    for spec in strategy_registry:
        documented = _reference_tables(spec.role)
        assert spec.name in documented, f"{spec.role} strategy {spec.name!r} missing from docs/configuration.md"
        fields = {f.name: _yaml_cell(f.default if f.default is not dataclasses.MISSING else f.default_factory())
                  for f in dataclasses.fields(spec.config_cls)}
        assert documented[spec.name] == fields, f"{spec.role} strategy {spec.name!r}: keys or defaults differ"
