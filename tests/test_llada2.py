"""LLaDA 2.x (``model_type: llada2_moe``) on transformers' own ``Glm4MoeForCausalLM`` against LLaDA 2.0's and 2.1's
modeling code and ``generate``, through the fixtures ``tests/reference/record_llada2.py`` wrote (the official files,
transformers 4.57.1, in an environment of their own).

``llada2-tiny`` has LLaDA 2.x's ``config.json`` keys at a tiny scale (8 experts in 4 groups, 2 groups and 2 experts
per token, a shared expert, one dense first layer, half-rotary heads with query/key norms), random norms, router
weights and expert biases. The project must give the official logits (one prompt; a left-padded batch), the experts
the official router chose, and the tokens of LLaDA 2.0's and 2.1's ``generate`` in one left-padded batch with no
cache and with the exact prefix cache (the fixture's prompts, and an edge batch: prompts of whole blocks, LLaDA 2.1
committing at least 4 to 6 masks a step from partial first blocks); expert dispatch must take as many Python calls
for 64 tokens as for 2; every registered verification strategy must decode the model, a batch row as alone.
"""

from __future__ import annotations

import copy
import json
from collections import defaultdict

import pytest
import torch
from safetensors.torch import load_file

from dlm_decode.config.schema import ModelSpec
from dlm_decode.decoder import Decoder
from dlm_decode.masks import AttentionPattern
from dlm_decode.models.adapter import DiffusionLM
from dlm_decode.plugins import get_registry

from helpers import REFERENCE, assert_logits_close, decode_cases, llada2_equivalent, python_calls, until_stop

CHECKPOINT = REFERENCE / "llada2-tiny"
OFFICIAL = json.loads((REFERENCE / "official_llada2.json").read_text(encoding="utf-8"))
EOS = OFFICIAL["special_ids"]["<|endoftext|>"]
#: The official forwards: inputs, positions, masks and logits (a tenth of a megabyte).
RECORDED = load_file(REFERENCE / "logits_llada2.safetensors")


@pytest.fixture(scope="module")
def llada2():
    return DiffusionLM.from_spec(ModelSpec(path=str(CHECKPOINT)))


def test_llada2_loads_natively_on_glm4_moe_with_blocks_of_32_and_its_special_ids(llada2):
    model = llada2.model
    assert type(model).__name__ == "Glm4MoeForCausalLM" and not llada2.remote
    assert llada2.family.name == "llada2"
    assert llada2.attention == AttentionPattern(block_size=32, anchor="position")  # config.json declares none
    assert llada2.mask_token_id == OFFICIAL["special_ids"]["<|mask|>"]
    assert list(llada2.eos_token_ids) == [EOS] and llada2.pad_token_id == EOS
    kinds = [type(layer.mlp).__name__ for layer in model.model.layers]
    assert kinds == ["Glm4MoeMLP", "Glm4MoeMoE", "Glm4MoeMoE"]  # first_k_dense_replace: 1
    gate = model.model.layers[1].mlp.gate
    assert gate.num_group == 4 and gate.topk_group == 2 and gate.routed_scaling_factor == 2.5
    assert gate.e_score_correction_bias.abs().min() > 0  # the checkpoint's expert bias was loaded


def logits(model, name: str) -> torch.Tensor:
    ids, positions, mask = (RECORDED[f"{name}.{part}"] for part in ("input_ids", "position_ids", "mask"))
    with torch.no_grad():
        return model(input_ids=ids, position_ids=positions, attention_mask=mask).logits


@pytest.mark.parametrize("name", ["full", "padded"])
def test_native_logits_and_masks_equal_the_official_ones(llada2, name):
    ids, mask = RECORDED[f"{name}.input_ids"], RECORDED[f"{name}.mask"]
    real = ids != EOS if name == "padded" else torch.ones_like(ids, dtype=torch.bool)
    rows = real[:, None, :, None].expand_as(mask)
    pattern = AttentionPattern(block_size=8, anchor="position")
    built = pattern.mask(real, ids.shape[1] - (OFFICIAL["gen_length"] if name == "full" else 8))
    assert torch.equal(built[rows], mask[rows]), "the pattern's mask is not the official one"
    assert_logits_close(logits(llada2.model, name)[real], RECORDED[f"{name}.logits"][real])


def test_the_router_picks_the_official_experts_and_the_comparison_sees_a_wrong_router(llada2):
    """The first sparse layer routes the tokens of the ``full`` forward to the experts the official router chose
    (group-limited top-k of the sigmoid scores plus the expert bias); without the expert bias, or without the
    renormalisation, the logits are no longer the official ones."""
    chosen = []
    gate = llada2.model.model.layers[1].mlp.gate
    hook = gate.register_forward_hook(lambda m, i, out: chosen.append(out[2]))
    try:
        logits(llada2.model, "full")
    finally:
        hook.remove()
    official = OFFICIAL["first_sparse_layer_experts"]
    assert chosen[0].sort(dim=-1).values.tolist() == [sorted(pair) for pair in official]
    assert len({tuple(sorted(pair)) for pair in official}) >= 5
    for change in ("bias", "normalisation"):
        wrong = copy.deepcopy(llada2.model)
        for layer in wrong.model.layers[1:]:
            if change == "bias":
                layer.mlp.gate.e_score_correction_bias.zero_()
            else:
                layer.mlp.gate.norm_topk_prob = False
        with pytest.raises(AssertionError):
            assert_logits_close(logits(wrong, "full")[0], RECORDED["full.logits"][0])


def test_expert_dispatch_takes_as_many_python_calls_for_64_tokens_as_for_2(llada2):
    """transformers' ``grouped_mm`` experts: the token-expert pairs sorted by expert, one grouped matrix product per
    projection; the Python calls of a sparse block do not grow with the tokens or the experts they reach."""
    block = llada2.model.model.layers[1].mlp
    assert llada2.model.config._experts_implementation == "grouped_mm"
    generator = torch.Generator().manual_seed(0)
    width = llada2.model.config.hidden_size
    calls = [python_calls(block, torch.randn(1, tokens, width, generator=generator)) for tokens in (64, 2)]
    assert calls[0] == calls[1]


def _groups(decoder: str, batch: str = "") -> dict[str, list[dict]]:
    """The fixture's cases of ``decoder`` grouped by their arguments: those of ``prompts`` (``batch`` ``""``) or of
    the edge batch (``"edge_"``: ``edge_cases`` of ``edge_prompts``, their keys starting with ``edge_``)."""
    groups = defaultdict(list)
    for case in OFFICIAL[f"{batch}cases"]:
        if case["decoder"] == decoder:
            groups[batch + json.dumps(case["arguments"], sort_keys=True)].append(case)
    return groups


def _batch(key: str) -> str:
    return "edge_" if key.startswith("edge_") else ""


GROUPS_20, EDGE_20 = _groups("llada2.0.generate"), _groups("llada2.0.generate", "edge_")


def test_every_official_case_is_compared_and_parallel_commits_fire():
    assert len(GROUPS_20) == 4 and all(len(cases) == len(OFFICIAL["prompts"]) for cases in GROUPS_20.values())
    assert len(EDGE_20) == 2 and all(len(cases) == len(OFFICIAL["edge_prompts"]) for cases in EDGE_20.values())
    parallel = [c for cases in GROUPS_20.values() for c in cases if c["forwards"] < len(c["generated"])]
    assert len(parallel) >= 8  # fewer forwards than tokens: steps that committed several tokens


@pytest.mark.parametrize("cache", ["none", "prefix"])
@pytest.mark.parametrize("key", [*GROUPS_20, *EDGE_20])
def test_llada2_0_generate_is_matched_token_for_token(key, cache):
    """LLaDA 2.0's ``generate`` commits, per step of a block, every mask above ``threshold`` when there are at least
    the step's quota (``block_length / steps``) of them, else the quota's most confident: ``threshold(threshold,
    min_tokens=block_length/steps)`` over blocks of ``block_length`` from position 0. One batch of the 5 prompts (or
    of the 6 edge prompts), left-padded; the official ``generate`` returns up to its first EOS. Its canvas runs to
    the end of the block holding the last of the ``gen_length`` columns, so the project's canvas is made that long or
    longer (a block after it changes nothing before it) and the first ``gen_length`` tokens are compared."""
    batch, cases = _batch(key), {**GROUPS_20, **EDGE_20}[key]
    length, block = OFFICIAL["gen_length"], cases[0]["arguments"]["block_length"]
    overrides = llada2_equivalent(cases[0]["arguments"])
    out = decode_cases(CHECKPOINT, overrides, OFFICIAL[f"{batch}prompts"], cases, cache, width=length + block - 1)
    assert len({len(ids) for ids in OFFICIAL[f"{batch}prompt_ids"]}) > 1
    for case, ids in zip(cases, out.token_ids, strict=True):
        assert until_stop(ids[:length], [EOS]) == case["generated"], f"prompt {case['prompt']}"


GROUPS_21, EDGE_21 = _groups("llada2.1.generate"), _groups("llada2.1.generate", "edge_")


def test_every_llada2_1_case_is_compared_and_edits_fire():
    """The fixture's LLaDA 2.1 cases (recorded with the block-causal mask, see the module docstring of
    ``record_llada2.py``): 4 settings of 5 prompts and 3 of the 6 edge prompts, and the official decoder edited
    decided tokens in every case."""
    assert len(GROUPS_21) == 4 and all(len(cases) == len(OFFICIAL["prompts"]) for cases in GROUPS_21.values())
    assert len(EDGE_21) == 3 and all(len(cases) == len(OFFICIAL["edge_prompts"]) for cases in EDGE_21.values())
    assert all(case["edits"] > 0 for groups in (GROUPS_21, EDGE_21) for cases in groups.values() for case in cases)


def test_the_edge_batch_holds_whole_block_prompts_and_first_blocks_with_fewer_masks_than_num_to_transfer():
    """Every edge setting decodes prompts that fill whole blocks (the official ``generate`` starts at the block
    after them) next to prompts that end inside one; every LLaDA 2.1 edge setting asks for ``num_to_transfer`` >= 4,
    and some prompt leaves fewer masks than that in its first block, some at least that many."""
    lengths = [len(ids) for ids in OFFICIAL["edge_prompt_ids"]]
    for cases in [*EDGE_20.values(), *EDGE_21.values()]:
        block = cases[0]["arguments"]["block_length"]
        assert {n % block == 0 for n in lengths} == {True, False}
    for cases in EDGE_21.values():
        block, k = cases[0]["arguments"]["block_length"], cases[0]["arguments"]["num_to_transfer"]
        masks = {-n % block for n in lengths if n % block}
        assert k >= 4 and min(masks) < k <= max(masks)


@pytest.mark.parametrize("cache", ["none", "prefix"])
@pytest.mark.parametrize("key", [*GROUPS_21, *EDGE_21])
def test_llada2_1_generate_with_editing_is_matched_token_for_token(key, cache):
    """LLaDA 2.1's ``generate`` is the ``editing`` verification at its arguments (threshold commits of at least
    ``num_to_transfer`` masks, edits above ``editing_threshold``, up to ``max_post_steps`` edit-only steps per block)
    over blocks of ``block_length`` from position 0, every position decoded (no ``eos_early_stop``). One left-padded
    batch of the 5 prompts (or of the 6 edge prompts); the canvas as in the LLaDA 2.0 test."""
    batch, cases = _batch(key), {**GROUPS_21, **EDGE_21}[key]
    arguments = cases[0]["arguments"]
    length, block = OFFICIAL["gen_length"], arguments["block_length"]
    decoder = Decoder.from_config(
        [],
        [
            f"model.dllm.path={CHECKPOINT}",
            f"model.dllm.block_size={block}",
            "decoder.window=blocks",
            f"decoder.window.size={block}",
            "decoder.verification=editing",
            f"decoder.verification.threshold={arguments['threshold']}",
            f"decoder.verification.min_tokens={arguments['num_to_transfer']}",
            f"decoder.verification.editing_threshold={arguments['editing_threshold']}",
            f"decoder.verification.max_post_steps={arguments['max_post_steps']}",
            f"decoder.cache={cache}",
            "generation.stop_at_eos=false",
            f"generation.max_new_tokens={length + block - 1}",
            f"generation.batch_size={len(cases)}",
        ],
    )
    out = decoder.generate([OFFICIAL[f"{batch}prompts"][case["prompt"]] for case in cases])
    for case, ids in zip(cases, out.token_ids, strict=True):
        assert until_stop(ids[:length], [EOS]) == case["generated"], f"prompt {case['prompt']}"


@pytest.mark.parametrize("batch", ["", "edge_"], ids=["prompts", "edge_prompts"])
def test_the_native_tokenizer_gives_the_official_prompt_ids(llada2, batch):
    assert llada2.encode(OFFICIAL[f"{batch}prompts"]) == OFFICIAL[f"{batch}prompt_ids"]


NEEDS_AN_AR_MODEL = {"apd"}
NEEDS_A_NOISE_MODEL = {"entropy_bound_redraw"}  # refused on a mask model (tests/test_diffusion_gemma_loop.py)


@pytest.mark.parametrize("verification", get_registry().names("verification"))
def test_every_verification_strategy_decodes_llada2_a_batch_row_as_alone(verification):
    if verification in NEEDS_AN_AR_MODEL:
        pytest.skip(f"{verification} verifies with an autoregressive model (model.ar), which LLaDA 2.x has none of")
    if verification in NEEDS_A_NOISE_MODEL:
        pytest.skip(f"{verification} samples a uniform-noise model (DiffusionGemma); LLaDA 2.x is a mask model")
    overrides = [
        f"model.dllm.path={CHECKPOINT}",
        "model.dllm.block_size=8",
        "decoder.window=blocks",
        "decoder.window.size=8",
        f"decoder.verification={verification}",
        "generation.max_new_tokens=16",
        "generation.batch_size=3",
    ]
    decoder = Decoder.from_config([], overrides)
    prompts = [OFFICIAL["prompts"][i] for i in (2, 1, 3)]
    together = decoder.generate(prompts).token_ids
    assert all(ids for ids in together)
    assert [decoder.generate([p]).token_ids[0] for p in prompts] == together
