"""LLaDA-MoE-7B-A1B (published as ``model_type: llada`` with ``architectures: [LLaDAMoEModelLM]``) on transformers' own
``Qwen3MoeForCausalLM`` with bidirectional attention, against the hub's ``modeling_lladamoe.py`` and its decoders,
through the fixtures ``tests/reference/record_lladamoe.py`` wrote (transformers 4.49, an environment of their own).

``lladamoe-tiny`` has LLaDA-MoE's ``config.json`` keys at a tiny scale (8 experts, 3 per token, one dense layer
through ``moe_layer_freq``, grouped-query heads, ``norm_topk_prob: true``, which the official block ignores), random
norms and router weights. The project must give the official logits (one prompt; a left-padded batch, whose rows must
equal each prompt's official logits alone, since the official forward ignores masks), route every token to the
official experts, and decode the tokens of LLaDA's ``generate`` and of dInfer's threshold decoder in one left-padded
batch; expert dispatch must take as many Python calls for 64 tokens as for 2.

Why not ``OlmoeForCausalLM``, the class LLaDA-MoE's code was adapted from: OLMoE normalises the query and key
projections as a whole (an RMSNorm over all heads, weights of ``hidden_size``), LLaDA-MoE each head on its own
(``q_norm.weight`` of ``head_dim``, the statistic over one head): different numbers, not only different shapes
(``test_olmoe_s_whole_projection_norm_is_not_llada_moe_s_per_head_norm``). Qwen3-MoE's block is LLaDA-MoE's
operation for operation when the top-k weights are not renormalised.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from dlm_decode.config.schema import ModelSpec
from dlm_decode.errors import ModelError
from dlm_decode.masks import BIDIRECTIONAL, bidirectional_mask, position_ids_from_mask
from dlm_decode.models.adapter import DiffusionLM
from dlm_decode.state import ModelInputs

import helpers
from helpers import REFERENCE

CHECKPOINT = REFERENCE / "lladamoe-tiny"
OFFICIAL = json.loads((REFERENCE / "official_lladamoe.json").read_text(encoding="utf-8"))
SETTINGS = helpers.official_settings(OFFICIAL["cases"])
RECORDED = load_file(REFERENCE / "logits_lladamoe.safetensors")  # 75 KB of official logits and their inputs


@pytest.fixture(scope="module")
def lladamoe():
    """The tiny checkpoint as the project loads it, natively (``model.dllm.path`` alone, the rest detected)."""
    return DiffusionLM.from_spec(ModelSpec(path=str(CHECKPOINT)))


def test_lladamoe_loads_natively_on_qwen3_moe_as_its_own_family(lladamoe):
    assert (type(lladamoe.model).__name__, lladamoe.remote) == ("Qwen3MoeForCausalLM", False)
    assert lladamoe.family.name == "llada_moe" and lladamoe.attention == BIDIRECTIONAL
    model = lladamoe.model
    ids = OFFICIAL["special_ids"]
    assert (lladamoe.mask_token_id, list(lladamoe.eos_token_ids)) == (ids["<|mask|>"], [ids["<|endoftext|>"]])
    assert lladamoe.pad_token_id == ids["<|endoftext|>"]
    kinds = [type(layer.mlp).__name__ for layer in model.model.layers]
    assert kinds == ["Qwen3MoeSparseMoeBlock", "Qwen3MoeMLP", "Qwen3MoeSparseMoeBlock"]  # moe_layer_freq [1, 0, 1]
    assert model.config.head_dim == 16 and model.config.num_key_value_heads == 2
    assert not model.model.layers[0].mlp.gate.norm_topk_prob  # config.json says true; the official block ignores it


def test_native_logits_equal_the_official_ones(lladamoe):
    with torch.no_grad():
        logits = lladamoe.model(input_ids=RECORDED["full.input_ids"]).logits
    helpers.assert_logits_close(logits, RECORDED["full.logits"])


def test_each_row_of_a_left_padded_batch_gets_its_official_logits_alone(lladamoe):
    """The official forward drops every mask, so a padded batch through it would attend to the padding; the project
    hides the padding and numbers positions from each row's first token, so each row equals its prompt alone."""
    rows = [RECORDED[f"alone.{i}.input_ids"][0] for i in range(len(OFFICIAL["padded_prompts"]))]
    width = max(len(row) for row in rows)
    ids = torch.stack([torch.cat([row.new_full((width - len(row),), lladamoe.pad_token_id), row]) for row in rows])
    real = torch.arange(width) >= torch.tensor([[width - len(row)] for row in rows])
    with torch.no_grad():
        logits = lladamoe.forward(ModelInputs(ids, position_ids_from_mask(real), bidirectional_mask(real), 0, width))
    assert len({len(row) for row in rows}) == len(rows)
    for i, row in enumerate(rows):
        helpers.assert_logits_close(logits[i, width - len(row) :], RECORDED[f"alone.{i}.logits"][0])


def test_the_router_picks_the_official_experts_and_renormalising_would_show(lladamoe):
    """The first layer routes every token of the ``full`` forward to the official experts (many different triples);
    the same model with its top-k weights renormalised (what ``norm_topk_prob: true`` would ask of Qwen3-MoE) no longer
    gives the official logits."""
    official = OFFICIAL["first_sparse_layer_experts"]
    chosen = helpers.first_layer_experts(lladamoe.model, input_ids=RECORDED["full.input_ids"])
    assert chosen == [sorted(triple) for triple in official] and len({tuple(t) for t in chosen}) >= 10
    renormalised = helpers.with_topk_renormalised(lladamoe.model, True)
    with torch.no_grad(), pytest.raises(AssertionError):
        helpers.assert_logits_close(renormalised(input_ids=RECORDED["full.input_ids"]).logits, RECORDED["full.logits"])


def test_olmoe_s_whole_projection_norm_is_not_llada_moe_s_per_head_norm(lladamoe):
    """OLMoE's query norm (transformers' ``OlmoeRMSNorm`` over the ``hidden_size`` projection), even with LLaDA-MoE's
    per-head weights tiled across the heads, differs from the per-head norm LLaDA-MoE applies (and Qwen3-MoE's
    ``q_norm`` reproduces): the operation that keeps LLaDA-MoE off ``OlmoeForCausalLM``."""
    from transformers.models.olmoe.modeling_olmoe import OlmoeRMSNorm

    attention = lladamoe.model.model.layers[0].self_attn
    heads, head_dim = lladamoe.model.config.num_attention_heads, lladamoe.model.config.head_dim
    with torch.no_grad():
        hidden = lladamoe.model.model.embed_tokens(RECORDED["full.input_ids"])
        query = attention.q_proj(hidden)
        per_head = attention.q_norm(query.view(*query.shape[:-1], heads, head_dim)).flatten(-2)
        whole = OlmoeRMSNorm(heads * head_dim, eps=attention.q_norm.variance_epsilon)
        whole.weight.copy_(attention.q_norm.weight.repeat(heads))
        assert (whole(query) - per_head).abs().max() > 0.1 * per_head.abs().max()


def test_expert_dispatch_takes_as_many_python_calls_for_64_tokens_as_for_2(lladamoe):
    """transformers 5's Qwen3-MoE experts run ``grouped_mm`` (token-expert pairs sorted by expert, one grouped product
    per projection): no Python loop over tokens or experts, unlike the official block's loop over experts."""
    helpers.assert_dispatch_calls_do_not_grow(lladamoe.model)


def test_every_official_case_is_compared():
    assert len(SETTINGS) == 6 and all(len(cases) == len(OFFICIAL["prompts"]) for cases in SETTINGS.values())


def equivalent(decoder: str, arguments: dict) -> list[str]:
    """LLaDA's ``generate`` is ``topk(confidence)`` with its steps spread over the blocks; dInfer's threshold decoder
    (every position at ``>= min(threshold, best - 1e-5)``) is ``threshold``; both fill the whole canvas."""
    common = [
        *helpers.llada_tiny_blocks(arguments["gen_length"], arguments["block_length"]),
        f"model.dllm.path={CHECKPOINT}",
    ]
    if decoder == "llada.generate":
        steps = arguments["steps"] * arguments["block_length"] // arguments["gen_length"]
        return [*common, "decoder.verification=topk", f"decoder.verification.steps_per_block={steps}"]
    return [*common, "decoder.verification=threshold", f"decoder.verification.threshold={arguments['threshold']}"]


@pytest.mark.parametrize("name", list(SETTINGS))
def test_the_official_decoders_are_matched_token_for_token(name):
    """One left-padded batch of the 5 prompts per setting (the official code decodes them one at a time)."""
    cases = SETTINGS[name]
    assert len({len(ids) for ids in OFFICIAL["prompt_ids"]}) > 1
    helpers.assert_official_tokens(equivalent(cases[0]["decoder"], cases[0]["arguments"]), cases, OFFICIAL["prompts"])


def test_the_native_tokenizer_gives_the_official_prompt_ids(lladamoe):
    assert lladamoe.encode(OFFICIAL["prompts"]) == OFFICIAL["prompt_ids"]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("moe_router_enable_expert_bias", True),
        ("shared_expert_intermediate_size", 32),
        ("qk_layernorm", False),
        ("partial_rotary_factor", 0.5),
    ],
)
def test_what_qwen3_moe_cannot_reproduce_is_refused_by_field(tmp_path, field, value):
    path = helpers.edited_copy(CHECKPOINT, tmp_path / "edited", config={field: value})
    with pytest.raises(ModelError, match=rf"LLaDA-MoE checkpoint's config.json asks for .*{field}={value!r}"):
        DiffusionLM.from_spec(ModelSpec(path=str(path)))
