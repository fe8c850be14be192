"""SDAR's mixture of experts (SDAR-30B-A3B, ``model_type: sdar_moe``) on transformers' own ``Qwen3MoeForCausalLM``
against SDAR's MoE modeling code, through the fixtures ``tests/reference/record_sdar_moe.py`` wrote (the official
modeling file and evaluation decoder, transformers 4.53.1, in an environment of their own).

``sdar-moe-tiny`` has SDAR-30B-A3B's ``config.json`` keys at a tiny scale (8 experts, 2 per token, renormalised;
one dense layer through ``mlp_only_layers``), random norms and router weights. The project must give the official
logits (one prompt; a left-padded batch), the experts the official router chose, and the tokens of SDAR's
evaluation decoder in one left-padded batch with no cache and with the exact prefix cache; and expert dispatch
must take as many Python calls for 64 tokens as for 2 (no loop over tokens, nor over experts).
"""

from __future__ import annotations

import json
from collections import defaultdict

import pytest
import torch
from safetensors.torch import load_file

from dlm_decode.config.schema import ModelSpec
from dlm_decode.masks import AttentionPattern
from dlm_decode.models.adapter import DiffusionLM

from helpers import (
    REFERENCE,
    SDAR_EVALUATION_DECODER,
    assert_dispatch_calls_do_not_grow,
    assert_logits_close,
    decode_like_sdar,
    first_layer_experts,
    until_stop,
    with_topk_renormalised,
)

CHECKPOINT = REFERENCE / "sdar-moe-tiny"
OFFICIAL = json.loads((REFERENCE / "official_sdar_moe.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def sdar_moe():
    return DiffusionLM.from_spec(ModelSpec(path=str(CHECKPOINT)))


@pytest.fixture(scope="module")
def recorded():
    return load_file(REFERENCE / "logits_sdar_moe.safetensors")


def test_sdar_moe_loads_natively_on_qwen3_moe_with_its_declared_pattern(sdar_moe):
    model = sdar_moe.model
    assert type(model).__name__ == "Qwen3MoeForCausalLM" and not sdar_moe.remote
    assert sdar_moe.family.name == "sdar"
    assert sdar_moe.attention == AttentionPattern(block_size=4, anchor="position")
    assert sdar_moe.mask_token_id == OFFICIAL["special_ids"]["<|MASK|>"]
    assert sorted(sdar_moe.eos_token_ids) == [272, 274]
    kinds = [type(layer.mlp).__name__ for layer in model.model.layers]
    assert kinds == ["Qwen3MoeSparseMoeBlock", "Qwen3MoeMLP", "Qwen3MoeSparseMoeBlock"]  # mlp_only_layers: [1]
    assert model.config.head_dim == 16 and model.model.layers[0].mlp.gate.norm_topk_prob


def logits(model, recorded, name: str) -> torch.Tensor:
    ids, positions, mask = (recorded[f"{name}.{part}"] for part in ("input_ids", "position_ids", "mask"))
    with torch.no_grad():
        return model(input_ids=ids, position_ids=positions, attention_mask=mask).logits


def real_rows(sdar_moe, recorded, name: str) -> torch.Tensor:
    ids = recorded[f"{name}.input_ids"]
    return ids != sdar_moe.pad_token_id if name == "padded" else torch.ones_like(ids, dtype=torch.bool)


@pytest.mark.parametrize("name", ["full", "padded"])
def test_native_logits_and_masks_equal_the_official_ones(sdar_moe, recorded, name):
    ids, mask = recorded[f"{name}.input_ids"], recorded[f"{name}.mask"]
    real = real_rows(sdar_moe, recorded, name)
    rows = real[:, None, :, None].expand_as(mask)
    pattern = sdar_moe.attention.mask(real, ids.shape[1] - (OFFICIAL["gen_length"] if name == "full" else 8))
    assert torch.equal(pattern[rows], mask[rows]), "the pattern's mask is not the official one"
    assert_logits_close(logits(sdar_moe.model, recorded, name)[real], recorded[f"{name}.logits"][real])


def test_the_router_picks_the_official_experts_and_the_comparison_sees_a_wrong_router(sdar_moe, recorded):
    """The first sparse layer routes the tokens of the ``full`` forward to the experts the official router chose
    (several pairs occur); the same model without the top-k renormalisation no longer gives the official logits."""
    inputs = {part: recorded[f"full.{part}"] for part in ("input_ids", "position_ids")}
    chosen = first_layer_experts(sdar_moe.model, **inputs, attention_mask=recorded["full.mask"])
    official = OFFICIAL["first_sparse_layer_experts"]
    assert chosen == [sorted(pair) for pair in official]
    assert len({tuple(sorted(pair)) for pair in official}) >= 5
    unnormalised = with_topk_renormalised(sdar_moe.model, False)
    with pytest.raises(AssertionError):
        assert_logits_close(logits(unnormalised, recorded, "full")[0], recorded["full.logits"][0])


def test_expert_dispatch_takes_as_many_python_calls_for_64_tokens_as_for_2(sdar_moe):
    """transformers 5's Qwen3-MoE experts run ``grouped_mm`` (sort the token-expert pairs by expert, one grouped
    matrix product per projection): the Python calls of a sparse block do not grow with the tokens or the experts
    they reach."""
    assert_dispatch_calls_do_not_grow(sdar_moe.model)


def _groups() -> dict[str, list[dict]]:
    groups = defaultdict(list)
    for case in OFFICIAL["cases"]:
        groups[json.dumps(case["arguments"], sort_keys=True)].append(case)
    return groups


GROUPS = _groups()


def test_every_official_case_is_compared():
    assert len(GROUPS) == 4 and all(len(cases) == len(OFFICIAL["prompts"]) for cases in GROUPS.values())


@pytest.mark.parametrize("cache", ["none", "prefix"])
@pytest.mark.parametrize("key", list(GROUPS))
def test_the_official_evaluation_decoder_is_matched_token_for_token(key, cache):
    """SDAR's ``block_diffusion_generate`` commits ``k = block_length / denoising_steps`` tokens per step, the most
    confident, and every one above ``threshold`` below 1.0: ``threshold`` with ``min_tokens=k``. One batch of the
    5 prompts, left-padded; the official decoder stops at a stop id, so each row is compared up to it."""
    cases = GROUPS[key]
    arguments = cases[0]["arguments"]
    assert {case["decoder"] for case in cases} == {SDAR_EVALUATION_DECODER}
    out = decode_like_sdar(CHECKPOINT, OFFICIAL["prompts"], cases, cache)
    assert len({len(ids) for ids in OFFICIAL["prompt_ids"]}) > 1
    for case, ids in zip(cases, out.token_ids, strict=True):
        official = until_stop(case["generated"], arguments["stopping_criteria_idx"])
        assert ids[: len(official)] == official, f"prompt {case['prompt']}"


def test_the_native_tokenizer_gives_the_official_prompt_ids(sdar_moe):
    assert sdar_moe.encode(OFFICIAL["prompts"]) == OFFICIAL["prompt_ids"]
