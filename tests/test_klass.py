"""The ``klass`` verification (KL-adaptive stability sampling, arXiv 2511.05664): the KL and the stability history on
hand-built logits, the unmask strategies, the warm-up inside a block, the fallback, the config, batch invariance and
block-causal decoding with the preset, and the official LLaDA decoder (``tests/reference/official_klass.json``,
recorded by ``tests/reference/record_klass.py``) token for token and forward for forward.

The Dream variant (``dream_klass.py``, a replacement for the checkpoint's ``generation_utils.py``) is not recorded:
its rule is the LLaDA one on a ``full`` window with ``tokens_per_step: 1`` and ``inclusive: true``, which the
hand-built tests cover."""

from __future__ import annotations

import json
import math

import pytest
import torch

from dlm_decode import ConfigError
from dlm_decode.decoder import Decoder
from dlm_decode.ops import Scorer
from dlm_decode.state import ForwardOutput, ModelInputs, Window
from dlm_decode.strategies.klass import KlassConfig, KlassVerifier, Unmask, kl_divergence
from dlm_decode.strategies.proposals import TokenProposal

from helpers import (
    REFERENCE,
    TASK_BATCH,
    assert_batch_equals_one_by_one,
    assert_official_tokens,
    decode_state,
    llada_tiny_blocks,
    official_settings,
)

PRESET = "configs/decoders/klass.yaml"
OFFICIAL = json.loads((REFERENCE / "official_klass.json").read_text(encoding="utf-8"))
MASK, V = 9, 10


def test_the_kl_divergence_of_two_hand_distributions():
    p = torch.tensor([0.5, 0.5, 0.0]).log()  # the third id is excluded (-inf): no contribution
    q = torch.tensor([0.25, 0.75, 0.0]).log()
    expected = 0.5 * math.log(2.0) + 0.5 * math.log(0.5 / 0.75)
    torch.testing.assert_close(kl_divergence(p, q), torch.tensor(expected), rtol=1e-5, atol=0.0)
    assert float(kl_divergence(p, p)) == 0.0


class Harness:
    """Verify calls on one hand-built row: prompt of 2, ``gen`` masks, blocks of ``block`` columns."""

    def __init__(self, config: KlassConfig, gen: int = 4, block: int = 4):
        self.state = decode_state([[1, 2]], gen, mask=MASK, pad=0, eos=[8], fill=0, stop_at_eos=False)
        self.verifier, self.block = KlassVerifier(config), block

    def step(self, gen_logits: torch.Tensor, block_start: int = 0) -> torch.Tensor:
        """One verify call with ``gen_logits`` ``[gen, V]`` for the generated columns; returns the row's commits
        (generated columns). The canvas is not changed, so the same masks stay eligible."""
        state = self.state
        logits = torch.zeros(1, state.width, V)
        logits[0, state.gen_start :] = gen_logits
        logits[..., MASK] = float("-inf")  # the core excludes the mask id before any proposal
        first = state.gen_start + block_start
        start = torch.tensor([first])
        window = Window(
            eligible=state.masked & ((state.columns >= first) & (state.columns < first + self.block))[None],
            input_end=state.width,
            block_start=start,
            block_end=start + self.block,
        )
        inputs = ModelInputs(
            input_ids=state.canvas, position_ids=state.position_ids, attention_mask=None, start=0, end=state.width
        )
        forward = ForwardOutput(logits=logits, inputs=inputs)
        proposal = TokenProposal(0.0, scorer=Scorer()).dlm_propose(state, forward, window)
        decision = self.verifier.dlm_verify(state, forward, proposal, window)
        return decision.commit[0, state.gen_start :]


def logits_for(confident: list[float]) -> torch.Tensor:
    """``[len, V]``: column ``i`` puts logit ``confident[i]`` on token ``i + 1`` and 0 elsewhere."""
    logits = torch.zeros(len(confident), V)
    logits[torch.arange(len(confident)), torch.arange(1, len(confident) + 1)] = torch.tensor(confident)
    return logits


def test_a_position_is_committed_after_history_length_stable_steps():
    # columns 0, 1 confident (p = e^5 / (e^5 + 8) ~ 0.95 > 0.9), column 2 less so (gap 1 -> p ~ 0.25)
    harness = Harness(KlassConfig(conf_threshold=0.9, kl_threshold=0.01, history_length=2))
    logits = logits_for([5.0, 5.0, 1.0, 0.0])
    # step 1: no previous distribution -> fallback, one token: the most confident (column 0, the leftmost tie)
    assert harness.step(logits).tolist() == [True, False, False, False]
    # step 2: KL 0, a run of 1 < 2 -> fallback again
    assert harness.step(logits).tolist() == [True, False, False, False]
    # step 3: runs of 2 -> both confident columns together, not the unconfident one
    assert harness.step(logits).tolist() == [True, True, False, False]
    assert harness.state.row_stats["klass.stable_commits"].tolist() == [2]
    assert harness.state.row_stats["klass.fallback_steps"].tolist() == [2]


def test_a_moving_distribution_restarts_the_history():
    harness = Harness(KlassConfig(conf_threshold=0.9, kl_threshold=0.01, history_length=2))
    steady, moved = logits_for([5.0, 5.0, 1.0, 0.0]), logits_for([5.0, 8.0, 1.0, 0.0])
    harness.step(steady)
    harness.step(steady)
    # column 1's distribution moved (KL well above 0.01): only column 0 is stable at step 3
    assert harness.step(moved).tolist() == [True, False, False, False]
    assert harness.state.row_stats["klass.stable_commits"].tolist() == [1]
    harness.step(moved)  # run 1 for column 1
    assert harness.step(moved).tolist() == [True, True, False, False]


@pytest.mark.parametrize(
    "unmask, expected",
    [
        (Unmask.all, [True, True, False, False]),
        (Unmask.max_conf, [False, True, False, False]),
        (Unmask.min_kl, [True, False, False, False]),
    ],
)
def test_the_unmask_strategies(unmask, expected):
    # column 1 the most confident (logit 7); column 0 the lower KL (its distribution does not move)
    harness = Harness(KlassConfig(conf_threshold=0.9, kl_threshold=0.01, history_length=2, unmask=unmask))
    harness.step(logits_for([5.0, 6.99, 0.0, 0.0]))
    harness.step(logits_for([5.0, 6.995, 0.0, 0.0]))
    assert harness.step(logits_for([5.0, 7.0, 0.0, 0.0])).tolist() == expected


def test_the_warmup_waits_inside_a_new_block_and_the_fallback_follows_llada_s_schedule():
    # blocks of 2 over 4 columns; the history runs on, the rule waits for the block's 2nd step
    config = KlassConfig(conf_threshold=0.9, kl_threshold=0.01, history_length=2, steps_per_block=1)
    harness = Harness(config, block=2)
    logits = logits_for([5.0, 5.0, 5.0, 5.0])
    harness.step(logits)
    harness.step(logits)
    assert harness.step(logits).tolist() == [True, True, False, False]  # stable, 3rd step of block 0
    # block 1's first step: stable columns, but the gate waits -> fallback quota m // s = 2 // 1 = 2
    assert harness.step(logits, block_start=2).tolist() == [False, False, True, True]
    assert harness.state.row_stats["klass.fallback_steps"].tolist() == [3]
    unwarmed = Harness(
        KlassConfig(conf_threshold=0.9, kl_threshold=0.01, history_length=2, block_warmup=False), block=2
    )
    for _ in range(3):
        unwarmed.step(logits)
    unwarmed.step(logits, block_start=2)
    assert unwarmed.state.row_stats["klass.fallback_steps"].tolist() == [2]


def test_inclusive_confidence_is_dream_s_comparison():
    logits = logits_for([5.0, 0.0, 0.0, 0.0])
    probability = float(torch.softmax(torch.cat([logits[0, :MASK], logits[0, MASK + 1 :]]), -1).max())
    for inclusive, stable in ((False, 0), (True, 1)):
        harness = Harness(
            KlassConfig(conf_threshold=probability, history_length=1, inclusive=inclusive, block_warmup=False)
        )
        harness.step(logits)
        harness.step(logits)
        assert harness.state.row_stats["klass.stable_commits"].tolist() == [stable]


@pytest.mark.parametrize(
    "key, value",
    [
        ("conf_threshold", 1.5),
        ("kl_threshold", 0.0),
        ("history_length", 0),
        ("steps_per_block", 0),
        ("tokens_per_step", 0),
    ],
)
def test_invalid_parameters_name_their_key(key, value):
    with pytest.raises(ConfigError, match=f"`decoder.verification.{key}`"):
        Decoder.from_config({}, ["decoder.verification=klass", f"decoder.verification.{key}={value}"])


# --- the preset on the embedded models ---------------------------------------------------------------------------

BATCH = TASK_BATCH


def test_batch_of_16_equals_one_by_one():
    together = assert_batch_equals_one_by_one(Decoder.from_config(PRESET, []), BATCH)
    assert sum(s.extra["klass.stable_commits"] for s in together.stats) >= 32  # the KL rule fires


def test_the_preset_decodes_faster_than_llada_with_its_answers():
    prompts = ["sort 4 1 7 9 3", "reverse hello", "sort 9 8 7 6 5 4"]
    klass = Decoder.from_config(PRESET, []).generate(prompts)
    llada = Decoder.from_config("configs/decoders/llada.yaml", []).generate(prompts)
    assert klass.texts == llada.texts
    assert sum(s.nfe for s in klass.stats) < sum(s.nfe for s in llada.stats)


def test_the_preset_decodes_a_block_causal_model():
    out = Decoder.from_config(PRESET, ["model.dllm.path=embedded:block"]).generate(BATCH[:4])
    assert all(ids for ids in out.token_ids)
    assert sum(s.extra["klass.stable_commits"] for s in out.stats) >= 1


# --- the official decoder ---------------------------------------------------------------------------------------


SETTINGS = list(official_settings(OFFICIAL["cases"]).values())


def equivalent(arguments: dict) -> list[str]:
    """The overrides under which the project decodes as the official ``stable_confident_decode``."""
    a = arguments
    return [
        *llada_tiny_blocks(a["gen_length"], a["block_length"]),
        "decoder.verification=klass",
        f"decoder.verification.steps_per_block={a['steps'] // (a['gen_length'] // a['block_length'])}",
        f"decoder.verification.conf_threshold={a['conf_threshold']}",
        f"decoder.verification.kl_threshold={a['kl_threshold']}",
        f"decoder.verification.history_length={a['kl_history_length']}",
        f"decoder.verification.unmask={a['unmask_strategy']}",
    ]


def test_every_recorded_case_is_compared():
    assert len(OFFICIAL["cases"]) == 20 and len(SETTINGS) == 4
    assert {case["arguments"]["unmask_strategy"] for case in OFFICIAL["cases"]} == {"all", "max_conf", "min_kl"}


@pytest.mark.parametrize(
    "cases",
    SETTINGS,
    ids=lambda cases: "-".join(
        str(cases[0]["arguments"][k])
        for k in ("block_length", "conf_threshold", "kl_threshold", "kl_history_length", "unmask_strategy")
    ),
)
def test_the_official_decoder_is_matched_token_for_token(cases):
    stats_per_row = assert_official_tokens(equivalent(cases[0]["arguments"]), cases, OFFICIAL["prompts"])
    for case, stats in zip(cases, stats_per_row, strict=True):
        assert stats.nfe == case["used_steps"], f"prompt {case['prompt']}"
        assert stats.extra["klass.stable_commits"] >= 1  # the KL rule fired in every recorded row
