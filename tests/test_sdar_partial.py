"""SDAR's evaluation decoder when the prompt's tail fills part of the first block, against the fixture
``tests/reference/record_sdar_partial.py`` wrote (``huggingface_bd3.block_diffusion_generate``, JetAstra/SDAR c2041a8,
on ``sdar-tiny``): 5 prompts of 17 to 28 tokens, 4 to 7 masks in their first block of 8, at 4 and 8 tokens per step.

The official decoder commits ``k = block_length / denoising_steps`` tokens per step whatever the block's mask count
(6 masks at k = 4: 4, then 2), which ``threshold(threshold, min_tokens=k)`` reproduces, tokens and commits per step,
in one left-padded batch with no cache and with the exact prefix cache. ``topk(tokens_per_step=k)`` re-spreads a
partial block over ``ceil(masks / k)`` steps LLaDA-style (3, then 3) and so is not SDAR's decoder.
"""

from __future__ import annotations

import json

import pytest

from dlm_decode.decoder import Decoder

from helpers import REFERENCE, SDAR_EVALUATION_DECODER, decode_like_sdar, official_settings, until_stop

OFFICIAL = json.loads((REFERENCE / "official_sdar_partial.json").read_text(encoding="utf-8"))
OFFICIAL_BLOCK = json.loads((REFERENCE / "official_block.json").read_text(encoding="utf-8"))
GROUPS = official_settings(OFFICIAL["cases"])
PRESET = str(REFERENCE.parent.parent / "configs" / "decoders" / "sdar.yaml")


def setting(case: dict) -> tuple[int, float]:
    """``(k, threshold)`` of an official case: its tokens per step and its threshold."""
    arguments = case["arguments"]
    return arguments["block_length"] // arguments["denoising_steps"], arguments["threshold"]


def official_commits(masks_per_forward: list[int]) -> list[int]:
    """Tokens committed at each decoding step of the official decoder, from the masks in the ids of its forwards
    (each forward on a block with masks is followed by one commit; its prefill and cache-storing forwards have 0)."""
    return [before - after for before, after in zip(masks_per_forward, masks_per_forward[1:], strict=False) if before]


def test_the_fixture_holds_partial_first_blocks_at_4_and_8_tokens_per_step():
    assert [len(ids) % 8 for ids in OFFICIAL["prompt_ids"]] == [2, 3, 1, 1, 4]
    assert {setting(case) for case in OFFICIAL["cases"]} == {(4, 1.0), (8, 1.0), (4, 0.9)}
    assert len(OFFICIAL["cases"]) == 15
    first = next(case for case in OFFICIAL["cases"] if case["prompt"] == 0 and setting(case) == (4, 1.0))
    assert official_commits(first["masks_per_forward"])[:2] == [4, 2]  # the example: 6 masks at k = 4


@pytest.mark.parametrize("cache", ["none", "prefix"])
@pytest.mark.parametrize("key", list(GROUPS))
def test_threshold_with_min_tokens_k_gives_the_official_tokens_and_commits(key, cache):
    cases = GROUPS[key]
    out = decode_like_sdar(REFERENCE / "sdar-tiny", OFFICIAL["prompts"], cases, cache)
    stops = cases[0]["arguments"]["stopping_criteria_idx"]
    for case, ids, stats in zip(cases, out.token_ids, out.stats, strict=True):
        official = until_stop(case["generated"], stops)
        assert ids[: len(official)] == official, f"prompt {case['prompt']}"
        commits = official_commits(case["masks_per_forward"])
        assert stats.commits_per_step[: len(commits)] == commits, f"prompt {case['prompt']}"


def test_topk_re_spreads_a_partial_first_block_and_is_not_sdars_decoder():
    """At k = 4 and threshold 1.0, ``topk`` splits the first block's 6, 5, 7, 7, 4 masks evenly; the official decoder
    commits 4 first. The tokens differ on at least one prompt (the finding of issue #25, item 6(a))."""
    cases = next(cases for cases in GROUPS.values() if setting(cases[0]) == (4, 1.0))
    topk = ["decoder.verification=topk", "decoder.verification.tokens_per_step=4"]
    out = decode_like_sdar(REFERENCE / "sdar-tiny", OFFICIAL["prompts"], cases, "none", topk)
    assert [stats.commits_per_step[:2] for stats in out.stats] == [[3, 3], [3, 2], [4, 3], [4, 3], [4, 4]]
    stops = cases[0]["arguments"]["stopping_criteria_idx"]
    differing = [
        case["prompt"]
        for case, ids in zip(cases, out.token_ids, strict=True)
        if ids[: len(until_stop(case["generated"], stops))] != until_stop(case["generated"], stops)
    ]
    assert differing, "topk gave the official tokens on every partial-block prompt"


def test_the_sdar_preset_is_sdars_evaluation_decoder_on_an_sdar_checkpoint():
    """``configs/decoders/sdar.yaml`` on ``sdar-tiny`` (blocks of 4, as SDAR's checkpoints declare) gives the tokens
    ``record_block.py`` recorded from the evaluation decoder at the eval script's settings (blocks of 4, 4 steps,
    threshold 1.0), in one batch. With the EOS fill (``stop_at_eos``, which the preset turns off)
    prompt 0 differs."""
    settings = {"block_length": 4, "denoising_steps": 4, "threshold": 1.0}
    cases = [
        case
        for case in OFFICIAL_BLOCK["cases"]
        if case["decoder"] == SDAR_EVALUATION_DECODER and settings.items() <= case["arguments"].items()
    ]
    assert len(cases) == 5
    width = max(len(case["generated"]) for case in cases)
    decoder = Decoder.from_config(
        PRESET, [f"model.dllm.path={REFERENCE / 'sdar-tiny'}", f"generation.max_new_tokens={width}"]
    )
    out = decoder.generate([OFFICIAL_BLOCK["prompts"][case["prompt"]] for case in cases])
    for case, ids in zip(cases, out.token_ids, strict=True):
        official = until_stop(case["generated"], case["arguments"]["stopping_criteria_idx"])
        assert ids[: len(official)] == official, f"prompt {case['prompt']}"
