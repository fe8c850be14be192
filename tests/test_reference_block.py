"""The native SDAR and Fast-dLLM v2 families (Qwen3 / Qwen2 with the block-causal pattern) against their official
code, through the fixtures of ``tests/reference`` written by ``tests/reference/record_block.py`` (the official
modeling files and decoders, transformers 4.53, in an environment of their own).

The project loads ``sdar-tiny`` on transformers' own ``Qwen3ForCausalLM`` (none of the checkpoint's code) and
builds its masks from the pattern the config declares (blocks of ``block_size`` from position 0); it must give:

* the official logits of a full forward and of a left-padded batch, and the same 4-D masks;
* the official tokenizer's prompt ids;
* the tokens of SDAR's evaluation decoder (``huggingface_bd3.block_diffusion_generate``, behind the paper's
  numbers), 4 configurations x 5 prompts, and of the repository's ``generate.py``, 3 configurations x 5 prompts,
  decoded here in one batch of mixed prompt lengths, with no cache and with the exact prefix cache. ``generate.py``
  takes its confidences after top-k filtering, so at ``top_k=1`` they all equal 1.0: its ``sequential`` remasking
  is left to right (``left_to_right``), its ``low_confidence_dynamic`` commits the whole block at once (threshold
  0); its ``low_confidence_static``, whose order would be ``torch.topk``'s among ties, is not recorded.

``fastdllm-v2-tiny`` loads on ``Qwen2ForCausalLM``, its shifted logits realigned under the block-causal pattern;
it must give the official raw logits under the pattern's mask, the prompt ids of its chat template, and the tokens
of the checkpoint's ``generate`` (3 configurations x 5 prompts, sub-blocks and thresholds), again with no cache and
with the exact prefix cache.
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
    SDAR_SCRIPT_DECODER,
    assert_logits_close,
    decode_cases,
    decode_like_sdar,
    until_stop,
)

OFFICIAL = json.loads((REFERENCE / "official_block.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def sdar():
    return DiffusionLM.from_spec(ModelSpec(path=str(REFERENCE / "sdar-tiny")))


@pytest.fixture(scope="module")
def recorded():
    return load_file(REFERENCE / "logits_block.safetensors")


def test_sdar_loads_natively_with_its_declared_pattern(sdar):
    assert type(sdar.model).__name__ == "Qwen3ForCausalLM" and not sdar.remote
    assert sdar.attention == AttentionPattern(block_size=4, anchor="position")
    assert sdar.mask_token_id == OFFICIAL["special_ids"]["sdar"]["<|MASK|>"]
    assert sorted(sdar.eos_token_ids) == [272, 274]


@pytest.mark.parametrize("name", ["sdar.full.b4", "sdar.padded.b4"])
def test_native_logits_and_masks_equal_the_official_ones(sdar, recorded, name):
    ids, positions, mask = (recorded[f"{name}.{part}"] for part in ("input_ids", "position_ids", "mask"))
    real = ids != sdar.pad_token_id if name.endswith("padded.b4") else torch.ones_like(ids, dtype=torch.bool)
    gen_start = ids.shape[1] - OFFICIAL["gen_length"]
    assert torch.equal(
        sdar.attention.mask(real, gen_start)[real[:, None, :, None].expand_as(mask)],
        mask[real[:, None, :, None].expand_as(mask)],
    ), "the pattern's mask is not the official one"
    logits = sdar.model(input_ids=ids, position_ids=positions, attention_mask=mask).logits
    rows = real.bool()
    assert_logits_close(logits[rows], recorded[f"{name}.logits"][rows])


def test_the_native_tokenizer_gives_the_official_prompt_ids(sdar):
    assert sdar.encode(OFFICIAL["prompts"]) == OFFICIAL["prompt_ids"]["sdar"]


def _groups() -> dict[str, list[dict]]:
    groups = defaultdict(list)
    for case in OFFICIAL["cases"]:
        if case["decoder"] in (SDAR_EVALUATION_DECODER, SDAR_SCRIPT_DECODER):
            groups[json.dumps([case["decoder"], case["arguments"]], sort_keys=True)].append(case)
    return groups


GROUPS = _groups()


def test_every_sdar_case_is_compared():
    assert len(GROUPS) == 7 and sum(len(cases) for cases in GROUPS.values()) == 35
    assert sum(case["model"] == "sdar" for case in OFFICIAL["cases"]) == 35


def test_every_fast_dllm_v2_case_without_the_official_block_cache_is_compared():
    assert len(V2_GROUPS) == 3 and sum(len(cases) for cases in V2_GROUPS.values()) == 15


@pytest.mark.parametrize("cache", ["none", "prefix"])
@pytest.mark.parametrize("key", list(GROUPS))
def test_the_official_sdar_decoders_are_matched_token_for_token(sdar, key, cache):
    """One batch of the 5 prompts (left-padded, so each row's blocks lie at other columns). The official decoder
    fills whole blocks from position 0; the canvas here is as long as the longest of its outputs, and the columns
    a shorter row has beyond its official end form later blocks, which no earlier block sees."""
    cases = GROUPS[key]
    arguments = cases[0]["arguments"]
    out = decode_like_sdar(REFERENCE / "sdar-tiny", OFFICIAL["prompts"], cases, cache)
    assert len({len(ids) for ids in OFFICIAL["prompt_ids"]["sdar"]}) > 1
    stops = arguments["stopping_criteria_idx"]
    for case, ids in zip(cases, out.token_ids, strict=True):
        official = until_stop(case["generated"], stops)  # its whole output when it never stopped
        assert ids[: len(official)] == official, f"prompt {case['prompt']}"


# --- Fast-dLLM v2 ----------------------------------------------------------------------------------------------

V2_DECODER = "fastdllm_v2.generate"


@pytest.fixture(scope="module")
def fast_v2():
    return DiffusionLM.from_spec(ModelSpec(path=str(REFERENCE / "fastdllm-v2-tiny")))


def test_fast_dllm_v2_loads_natively_with_shifted_logits_and_autoregressive_block_heads(fast_v2):
    assert type(fast_v2.model).__name__ == "Qwen2ForCausalLM" and not fast_v2.remote
    assert fast_v2.family.shifted_logits
    assert fast_v2.attention == AttentionPattern(block_size=8, anchor="position", head_first=True)
    assert fast_v2.mask_token_id == OFFICIAL["special_ids"]["fastdllm_v2"]["|<MASK>|"]
    assert fast_v2.encode(OFFICIAL["prompts"]) == OFFICIAL["prompt_ids"]["fastdllm_v2"]


@pytest.mark.parametrize("name, block", [("fastdllm_v2.full.b8", 8), ("fastdllm_v2.full.b32", 32)])
def test_fast_dllm_v2_raw_logits_equal_the_official_ones_under_the_patterns_mask(fast_v2, recorded, name, block):
    """The official forward ignores the attention mask it is given and builds a block-causal one from its
    ``block_size`` argument; the pattern's mask for that block size gives the same logits."""
    ids = recorded[f"{name}.input_ids"]
    real = torch.ones_like(ids, dtype=torch.bool)
    mask = AttentionPattern(block_size=block, anchor="position").mask(real, ids.shape[1] - OFFICIAL["gen_length"])
    assert torch.equal(mask, recorded[f"{name}.mask"].bool()), "the pattern's mask is not the official eval_mask"
    positions = torch.arange(ids.shape[1])[None]
    logits = fast_v2.model(input_ids=ids, position_ids=positions, attention_mask=mask).logits
    assert_logits_close(logits[0], recorded[f"{name}.logits"][0])


def v2_equivalent(arguments: dict) -> list[str]:
    """Fast-dLLM v2's ``generate``: blocks of ``block_size`` (the attention's and the window's unit) decoded in
    sub-blocks of ``small_block_size``, each step committing every masked position above ``threshold`` and always
    the most confident one; the block's first column first and alone (:attr:`AttentionPattern.head_first`)."""
    return [
        f"model.dllm.block_size={arguments['block_size']}",
        "decoder.window=blocks",
        f"decoder.window.size={arguments['small_block_size']}",
        "decoder.verification=threshold",
        f"decoder.verification.threshold={arguments['threshold']}",
        "decoder.proposal=greedy",
        "generation.stop_at_eos=false",
    ]


V2_GROUPS = defaultdict(list)
for _case in OFFICIAL["cases"]:
    if _case["decoder"] == V2_DECODER and not _case["arguments"]["use_block_cache"]:
        V2_GROUPS[json.dumps(_case["arguments"], sort_keys=True)].append(_case)


@pytest.mark.parametrize("cache", ["none", "prefix"])
@pytest.mark.parametrize("key", list(V2_GROUPS))
def test_fast_dllm_v2_generate_is_matched_token_for_token(fast_v2, key, cache):
    """The three recorded configurations without the official block cache (whose stale in-block keys/values are
    another approximation than ``dual``'s), 5 prompts each, in one batch of mixed prompt lengths."""
    cases = V2_GROUPS[key]
    arguments = cases[0]["arguments"]
    out = decode_cases(REFERENCE / "fastdllm-v2-tiny", v2_equivalent(arguments), OFFICIAL["prompts"], cases, cache)
    stops = [arguments["stop_token"]]
    for case, ids in zip(cases, out.token_ids, strict=True):
        official = until_stop(case["generated"], stops)
        assert ids[: len(official)] == official, f"prompt {case['prompt']}"
