"""dKV-Cache-Decode (the ``dkv`` cache, :mod:`dlm_decode.strategies.adaptive_cache`): the refresh schedule and the
delayed store by hand, exactness where the approximation vanishes, batch invariance, block-causal models, and the
official decoder token for token.

``tests/reference/record_dkv.py`` ran the official ``horseee/dKV-Cache`` LLaDA decoder (``generate`` of
``generation_utils/llada_dkv_cache_decode.py`` with its modified LLaDA model, ``enable_cache=True``) on the tiny LLaDA
checkpoint, one prompt at a time, for three (steps, block length, refresh interval) settings; here each setting's five
prompts are decoded in one left-padded batch and must give the official tokens exactly. The fixture also records how
often the official code reused keys/values and how many tokens that changed against its own uncached run, so the
comparison would catch a cache that recomputes too much (it would decode like ``none``).
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from dlm_decode import ConfigError, load_config
from dlm_decode.config.schema import ModelSpec
from dlm_decode.decoder import Decoder
from dlm_decode.models.adapter import DiffusionLM
from dlm_decode.state import Decision, Window
from dlm_decode.strategies.adaptive_cache import DKVCache, DKVMemory, RefreshSchedule
from dlm_decode.testing.models import build_tiny_checkpoint

from helpers import REFERENCE, assert_official_tokens, decode_state

PRESET = "configs/decoders/dkv-cache.yaml"
PROMPTS = ["sort 4 1 7 9 3", "hi", "reverse the word stone", "7+5=", "pick a fruit please"]
OFFICIAL = json.loads((REFERENCE / "official_dkv.json").read_text(encoding="utf-8"))
#: The LLaDA fixture of tests/test_reference.py, whose prompts the dKV recording reuses.
REFERENCE_FIXTURE = json.loads((REFERENCE / "official.json").read_text(encoding="utf-8"))


# --- the rule by hand ----------------------------------------------------------------------------------------------


def schedule_flags(cache: DKVCache, block_starts: list[list[int]]) -> list[list[bool]]:
    """The refresh flags of steps 1.. for rows whose window block starts are ``block_starts[step]`` (step 0 is the
    batch's first forward, always full, which sets the counters as ``dlm_cache`` does)."""
    memory = DKVMemory(
        block_start=torch.tensor(block_starts[0]), block_step=torch.zeros(len(block_starts[0]), dtype=torch.long)
    )
    flags = []
    for step, starts in enumerate(block_starts[1:], start=1):
        window = SimpleNamespace(block_start=torch.tensor(starts))
        flags.append(cache.refreshing(SimpleNamespace(step=step), window, memory).tolist())
    return flags


def test_block_schedule_refreshes_at_block_steps_0_1_and_multiples_of_the_interval():
    # row 0 stays in one block for 7 steps: block steps 1..6 -> refresh at 1, 3, 6 (i < 2 or i % 3 == 0)
    # row 1 enters a new block at step 3: block steps 1, 2, 0, 1, 2, 3 -> refresh at steps 1, 3, 4, 6
    starts = [[2, 2], [2, 2], [2, 2], [2, 6], [2, 6], [2, 6], [2, 6]]
    flags = schedule_flags(DKVCache(3, RefreshSchedule.block), starts)
    assert [f[0] for f in flags] == [True, False, True, False, False, True]
    assert [f[1] for f in flags] == [True, False, True, True, False, True]


def test_generation_schedule_counts_the_decoder_steps_only():
    starts = [[2, 2]] + [[2, 6]] * 6  # block changes do not matter
    flags = schedule_flags(DKVCache(3, RefreshSchedule.generation), starts)
    assert flags == [[False, False], [False, False], [True, True], [False, False], [False, False], [True, True]]


def test_delayed_store_recomputes_masks_and_the_columns_decoded_one_step_ago():
    """Two rows, prompts [5, 6] and [7] (left-padded), 4 masks each; interval 3 (schedule block, one block)."""
    state = decode_state([[5, 6], [7]], 4, mask=3, pad=0, eos=[2], fill=2, stop_at_eos=False)
    cache = DKVCache(3, RefreshSchedule.block)

    def plan():
        window = Window(
            eligible=state.masked.clone(), input_end=6, block_start=torch.tensor([2, 2]), block_end=torch.tensor([6, 6])
        )
        plan = cache.dlm_cache(state=state, window=window)
        return plan.start, plan.end, plan.key_end, plan.cache.write

    def commit(*cells):
        mask = torch.zeros(2, 6, dtype=torch.bool)
        for row, col in cells:
            mask[row, col] = True
        state.apply(Decision(commit=mask, tokens=torch.full((2, 6), 9)))

    assert plan() == (0, 6, 6, None)  # step 0: the first forward fills the store
    commit((0, 2), (1, 4))
    start, end, _, write = plan()  # step 1: block step 1, a full refresh
    assert (start, end) == (0, 6) and bool(write.all())
    commit((0, 3), (1, 2))
    start, end, key_end, write = plan()  # step 2: cached
    # row 0: masks 4, 5 and column 3 (decoded at step 1); column 2 (decoded at step 0, stored at step 1) is reused
    # row 1: masks 3, 5 and column 2 (decoded at step 1); column 4 (decoded at step 0) is reused
    assert (start, end, key_end) == (2, 6, 6)
    assert write.tolist() == [[False, True, True, True], [True, True, False, True]]
    commit((0, 4), (1, 3))
    start, end, _, write = plan()  # step 3: block step 3 = 3 * 1, a full refresh
    assert (start, end) == (0, 6) and bool(write.all())
    commit((0, 5))
    # step 4: row 0 is finished (writes nothing); row 1 decoded column 3 at step 2 and stored it at the refresh of
    # step 3, decoded nothing at step 3, so it recomputes only its mask 5
    start, end, _, write = plan()
    assert (start, end) == (5, 6)
    assert write.tolist() == [[False], [True]]


def test_interval_must_be_positive():
    with pytest.raises(ConfigError, match="(?s)`decoder.cache.interval`.*got 0"):
        load_config({}, ["decoder.cache=dkv", "decoder.cache.interval=0"])


# --- decoding ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def one_layer(tmp_path_factory):
    """One layer, weights scaled up from the 0.02 init so that predictions depend on the context; "}" (id 98, a
    frequent proposal) also ends a row, so the core fills tails (a change the store must see)."""
    path = build_tiny_checkpoint(tmp_path_factory.mktemp("one-layer"), layers=1, seed=0)
    dllm = DiffusionLM.from_spec(ModelSpec(path=str(path), eos_token_ids=[2, 98]))
    with torch.no_grad():
        for name, weight in dllm.model.named_parameters():
            if "norm" not in name:
                weight.mul_(35.0)
    return dllm


def preset(*overrides: str, dllm=None) -> Decoder:
    return Decoder(load_config(PRESET, list(overrides)), dllm=dllm)


def test_with_one_layer_any_interval_decodes_exactly_like_no_cache(one_layer):
    """A layer-0 key/value depends only on its own token and position and a column is stored only once it holds its
    token, so the reuse is exact: any difference from ``none`` is a bug in the store, spans or write masks."""
    common = ["decoder.verification.threshold=0.5", "generation.max_new_tokens=24", "decoder.window.size=4"]
    plain = preset(*common, "decoder.cache=none", dllm=one_layer).generate(PROMPTS)
    assert any(len(ids) < 24 for ids in plain.token_ids), "no row ended early: the EOS-fill path went untested"
    assert any(max(s.commits_per_step) > 1 for s in plain.stats), "no step committed in parallel"
    for interval in (2, 100):
        cached = preset(*common, f"decoder.cache.interval={interval}", dllm=one_layer).generate(PROMPTS)
        assert cached.token_ids == plain.token_ids, interval


def test_interval_1_decodes_exactly_like_no_cache_and_a_long_one_does_not():
    """On the embedded dLLM (4 layers): refreshing every step is ``none``; never refreshing within a block is an
    approximation that changes some tokens (else the other tests could not tell the cache from ``none``)."""
    common = ["decoder.verification.threshold=0.5"]
    plain = preset(*common, "decoder.cache=none").generate(PROMPTS)
    assert preset(*common, "decoder.cache.interval=1").generate(PROMPTS).token_ids == plain.token_ids
    approximate = preset(*common, "decoder.cache.interval=100", "decoder.window=full").generate(PROMPTS)
    assert approximate.token_ids != plain.token_ids


def test_batch_of_16_decodes_like_batch_of_1():
    prompts = [f"{word} {n}" for n in range(4) for word in ("sort 3 1", "hi", "reverse the word ab", "7+5=")]
    decoder = preset("generation.max_new_tokens=16", "decoder.cache.interval=3")
    together = decoder.generate(prompts, batch_size=16)
    assert len({tuple(ids) for ids in together.token_ids}) > 4, "rows too alike to test invariance"
    assert together.token_ids == [decoder.generate([p], batch_size=1).token_ids[0] for p in prompts]


def test_block_causal_model_decodes_and_refreshing_every_step_is_no_cache():
    decoder = preset("model.dllm.path=embedded:block")
    out = decoder.generate(PROMPTS)
    assert all(s.nfe == len(s.commits_per_step) >= 1 for s in out.stats) and all(ids for ids in out.token_ids)
    assert out.token_ids == [decoder.generate([p], batch_size=1).token_ids[0] for p in PROMPTS]
    plain = preset("model.dllm.path=embedded:block", "decoder.cache=none").generate(PROMPTS)
    every = preset("model.dllm.path=embedded:block", "decoder.cache.interval=1").generate(PROMPTS)
    assert every.token_ids == plain.token_ids


# --- the official decoder --------------------------------------------------------------------------------------------


def _settings() -> dict[tuple[int, int, int], list[dict]]:
    groups: dict[tuple[int, int, int], list[dict]] = {}
    for case in OFFICIAL["cases"]:
        a = case["arguments"]
        groups.setdefault((a["steps"], a["block_length"], a["cache_reloading_step"]), []).append(case)
    return groups


SETTINGS = _settings()


def test_the_fixture_exercises_the_cache():
    assert OFFICIAL["repository"] == "horseee/dKV-Cache" and len(OFFICIAL["cases"]) == 15
    # the prompt ids are record.py's, which test_reference.py checks against the native tokenizer
    assert OFFICIAL["prompts"] == REFERENCE_FIXTURE["prompts"]
    assert OFFICIAL["prompt_ids"]["llada"] == REFERENCE_FIXTURE["prompt_ids"]["llada"]
    # steps per block s and interval R: cached forwards per block = steps i in [2, s) with i % R != 0
    for (steps, block, interval), cases in SETTINGS.items():
        per_block = sum(1 for i in range(2, steps * block // 32) if i % interval)
        assert all(case["cached_forwards"] == per_block * 32 // block for case in cases)
    assert sum(case["differs_from_no_cache"] for case in OFFICIAL["cases"]) > 0


@pytest.mark.parametrize("setting", list(SETTINGS), ids=lambda s: "steps{}-block{}-interval{}".format(*s))
def test_the_official_decoder_is_matched_token_for_token(setting):
    steps, block, interval = setting
    cases = SETTINGS[setting]
    assert_official_tokens(
        [
            f"model.dllm.path={REFERENCE / 'llada-tiny'}",
            "generation.max_new_tokens=32",
            "decoder.window=blocks",
            f"decoder.window.size={block}",
            "decoder.proposal=greedy",
            "decoder.cache=dkv",
            f"decoder.cache.interval={interval}",
            "decoder.cache.schedule=block",
            "decoder.verification=topk",
            "decoder.verification.score=confidence",
            f"decoder.verification.steps_per_block={steps * block // 32}",
            "generation.stop_at_eos=false",
        ],
        cases,
        OFFICIAL["prompts"],
    )
