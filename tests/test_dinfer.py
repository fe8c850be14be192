"""dInfer's hierarchical decoding and CreditDecoding (``hierarchy`` and ``credit`` verification).

The rules on hand-computed cases; a batch of 16 mixed-length prompts decodes each row as it would alone; the presets
decode a block-causal model; and the official dInfer decoders (``HierarchyDecoder`` and
``CreditThresholdParallelDecoder`` in ``BlockWiseDiffusionLLM``, recorded by ``tests/reference/record_dinfer.py`` on
the tiny LLaDA checkpoint) are matched token for token, all prompts of a setting in one left-padded batch, with a
count showing that each rule shaped the decisions (peaks between the thresholds, credit-made commits).
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path

import pytest
import torch

from dlm_decode import ConfigError, load_config
from dlm_decode.decoder import Decoder
from dlm_decode.hookspecs import hookimpl
from dlm_decode.ops import Scorer
from dlm_decode.state import Proposal, Window
from dlm_decode.strategies.dinfer import (
    Credit,
    CreditConfig,
    Hierarchy,
    HierarchyConfig,
    near_best_commit,
    segment_peaks,
)

from helpers import (
    PROMPTS16,
    REFERENCE,
    assert_official_tokens,
    confidence_proposal,
    decode_state,
    llada_tiny_blocks,
    official_settings,
)

ROOT = Path(__file__).resolve().parents[1]
OFFICIAL = json.loads((REFERENCE / "official_dinfer.json").read_text(encoding="utf-8"))


def window_of(eligible: torch.Tensor, block_start: list[int] | None = None) -> Window:
    rows = eligible.shape[0]
    start = torch.tensor(block_start if block_start is not None else [0] * rows)
    return Window(
        eligible=eligible, input_end=eligible.shape[1], block_start=start, block_end=start + eligible.shape[1]
    )


# --- hierarchy: hand-computed --------------------------------------------------------------------------------------


def hierarchy(confidence: list[list[float]], eligible: list[list[bool]], threshold=0.9, low=0.4) -> list[list[int]]:
    scores, allowed = torch.tensor(confidence), torch.tensor(eligible)
    proposal = confidence_proposal(scores, allowed)
    plugin = Hierarchy(HierarchyConfig(threshold=threshold, low_threshold=low))
    commit = plugin.dlm_verify(proposal=proposal, window=window_of(allowed)).commit
    return [row.nonzero().flatten().tolist() for row in commit]


T, F = True, False


def test_each_run_of_masks_commits_its_peak_above_the_low_threshold():
    # runs [0, 3) and [4, 7) (column 3 is decided): peaks 0.7 at 1 and 0.95 at 4; 0.95 is also above 0.9
    assert hierarchy([[0.5, 0.7, 0.3, 0.99, 0.95, 0.2, 0.45]], [[T, T, T, F, T, T, T]]) == [[1, 4]]
    # a peak at or below the low threshold is not committed; the best position always is
    assert hierarchy([[0.5, 0.7, 0.3, 0.99, 0.95, 0.2, 0.45]], [[T, T, T, F, T, T, T]], low=0.7) == [[4]]


def test_positions_above_the_high_threshold_are_committed_even_when_not_peaks():
    # one run; 0.93 and 0.97 both pass 0.9, only 0.97 is the peak
    assert hierarchy([[0.93, 0.97, 0.1, 0.2]], [[T, T, T, T]]) == [[0, 1]]
    # strict comparisons: 0.9 exactly is not above the high threshold (and not the peak), a peak of 0.4 exactly is
    # not above the low one
    assert hierarchy([[0.9, 0.95, 0.1]], [[T, T, T]]) == [[1]]
    assert hierarchy([[0.4, 0.3, 0.2, 0.1, 0.41]], [[T, T, T, F, T]]) == [[4]]


def test_ties_at_a_peak_all_count_and_nulls_switch_parts_off():
    # run [0, 3): 0.6 twice (both peaks); run [4, 6): 0.5 at 5
    assert hierarchy([[0.6, 0.2, 0.6, 0.0, 0.1, 0.5]], [[T, T, T, F, T, T]]) == [[0, 2, 5]]
    # no high threshold: 0.95 at 1 is not a peak of its run (0.96 is), so it waits
    assert hierarchy([[0.95, 0.96, 0.1]], [[T, T, T]], threshold=None) == [[1]]
    # no low threshold: every peak, however unsure
    assert hierarchy([[0.05, 0.1, 0.0, 0.2]], [[T, T, F, T]], low=None) == [[1, 3]]


def test_segments_and_fallbacks_are_per_row():
    confidence = [[0.3, 0.35, 0.0, 0.1, 0.2], [0.5, 0.6, 0.7, 0.5, 0.45], [0.9, 0.9, 0.9, 0.9, 0.9]]
    eligible = [[T, T, F, T, T], [T, F, T, F, T], [F, F, F, F, F]]
    # row 0: nothing above 0.4, its best (0.35) alone; row 1: three runs, peaks 0.5, 0.7, 0.45; row 2: nothing
    assert hierarchy(confidence, eligible) == [[1], [0, 2, 4], []]


def test_segment_peaks_ignore_ineligible_columns_whatever_their_score():
    confidence = torch.tensor([[0.1, 0.99, 0.2, 0.3, 0.99, 0.25]])
    eligible = torch.tensor([[T, F, T, T, F, T]])
    assert segment_peaks(confidence, eligible).nonzero()[:, 1].tolist() == [0, 3, 5]


# --- credit: hand-computed ------------------------------------------------------------------------------------------


def softmax(z: list[float]) -> list[float]:
    total = sum(math.exp(v) for v in z)
    return [math.exp(v) / total for v in z]


class OneRow:
    """One row of one eligible position, fed hand-made logits step by step through the credit verifier."""

    def __init__(self, **config):
        self.plugin = Credit(CreditConfig(**config), Scorer())
        self.state = decode_state([[1]], 1, mask=0, pad=2, eos=[3], fill=2)

    def step(self, logits: list[float], block_start: int = 0):
        eligible = torch.tensor([[F, T]])
        rows, cols = eligible.nonzero(as_tuple=True)
        proposal = Proposal(
            tokens=torch.tensor([[1, 0]]),
            confidence=torch.zeros(1, 2),
            rows=rows,
            cols=cols,
            logits=torch.tensor([logits]),
            temperature=0.0,
            noise=None,
            scorer=Scorer(),
        )
        decision = self.plugin.dlm_verify(
            state=self.state, proposal=proposal, window=window_of(eligible, [block_start])
        )
        return int(decision.tokens[0, 1]), bool(decision.commit[0, 1])


def test_credit_accumulates_decays_and_can_overturn_the_current_top_token():
    alpha, gamma, beta = 0.7, 0.2, 0.8
    run = OneRow(threshold=0.99, alpha=alpha, gamma=gamma, beta=beta)
    history = [2.0, 1.0, 0.0]
    assert run.step(history)[0] == 0 and run.step(history)[0] == 0
    now = [1.0, 1.1, 0.0]  # token 1 now leads by 0.1 in the logits
    # by hand: token 0 held the top-1 at two steps, token 1 gains this step's boost
    p0, p1 = softmax(history)[0], softmax(now)[1]
    c0 = beta * (beta * p0**gamma + p0**gamma)
    c1 = p1**gamma
    fused0, fused1 = now[0] + alpha * math.log(1 + c0), now[1] + alpha * math.log(1 + c1)
    assert fused0 > fused1  # 1.5915 > 1.5311: the older token wins
    assert run.step(now)[0] == 0


def test_credit_confidences_are_the_fused_softmax():
    alpha, gamma, beta = 0.7, 0.2, 0.8
    logits = [math.log(0.8), math.log(0.1), math.log(0.1)]
    plugin = Credit(CreditConfig(threshold=0.87, alpha=alpha, gamma=gamma, beta=beta), Scorer())
    state = decode_state([[1]], 3, mask=0, pad=2, eos=[3], fill=2)
    eligible = torch.tensor([[F, T, T, F]])
    rows, cols = eligible.nonzero(as_tuple=True)
    # column 1: 0.8 alone, fused 0.8648 then 0.8896 (by hand); column 2: a steady 0.935, fused 0.9588 at once
    steady = [math.log(0.935), math.log(0.0325), math.log(0.0325)]
    expected = []
    c1 = c2 = 0.0
    for _ in range(2):
        c1 = beta * c1 + 0.8**gamma
        c2 = beta * c2 + 0.935**gamma
        p1 = softmax([logits[0] + alpha * math.log(1 + c1), logits[1], logits[2]])[0]
        p2 = softmax([steady[0] + alpha * math.log(1 + c2), steady[1], steady[2]])[0]
        expected.append([p1 >= min(0.87, max(p1, p2) - 1e-5), p2 >= 0.87])
        proposal = Proposal(
            tokens=torch.zeros(1, 4, dtype=torch.long),
            confidence=torch.zeros(1, 4),
            rows=rows,
            cols=cols,
            logits=torch.tensor([logits, steady]),
            temperature=0.0,
            noise=None,
            scorer=Scorer(),
        )
        decision = plugin.dlm_verify(state=state, proposal=proposal, window=window_of(eligible))
        assert decision.commit[0, 1:3].tolist() == expected[-1]
    assert expected == [[False, True], [True, True]]  # credit brings column 1 over 0.87 at step 2


def test_credit_restarts_when_the_block_moves():
    # two steps of token 0, then logits where token 1 leads by 0.1: the decayed credit keeps token 0 (see above),
    # unless the block moved, which clears it
    kept, moved = OneRow(), OneRow()
    for run in (kept, moved):
        run.step([2.0, 1.0, 0.0])
        run.step([2.0, 1.0, 0.0])
    assert kept.step([1.0, 1.1, 0.0])[0] == 0
    assert moved.step([1.0, 1.1, 0.0], block_start=8)[0] == 1


def test_near_best_commits_within_1e5_of_the_best_and_above_the_threshold():
    confidence = torch.tensor([[0.5, 0.499995, 0.49, 0.95], [0.3, 0.2999, 0.1, 0.0]])
    eligible = torch.tensor([[T, T, T, F], [T, T, T, T]])
    # row 0: best 0.5 (0.95 is not eligible); 0.499995 lies within 1e-5 of it; row 1: 0.3 only
    assert near_best_commit(confidence, eligible, 0.9).tolist() == [[T, T, F, F], [T, F, F, F]]
    assert near_best_commit(confidence, eligible, 0.2).tolist() == [[T, T, T, F], [T, T, F, F]]


# --- batches, block-causal models, config ---------------------------------------------------------------------------

SAMPLING = ["decoder.proposal=sample", "decoder.proposal.temperature=0.8", "decoder.proposal.top_k=5"]


@pytest.mark.parametrize("preset", ["hierarchy", "credit"])
@pytest.mark.parametrize("proposal", [[], SAMPLING], ids=["greedy", "sample"])
def test_a_batch_of_16_decodes_each_row_as_alone(preset, proposal):
    decoder = Decoder.from_config(str(ROOT / f"configs/decoders/{preset}.yaml"), proposal)
    together = decoder.generate(PROMPTS16, batch_size=16)
    assert sum(len(ids) for ids in together.token_ids) > sum(s.nfe for s in together.stats), "parallel commits"
    for index, prompt in enumerate(PROMPTS16):
        alone = decoder.generate([prompt], seeds=[index])
        assert alone.token_ids[0] == together.token_ids[index], prompt
        assert alone.stats[0].commits_per_step == together.stats[index].commits_per_step, prompt


@pytest.mark.parametrize("preset", ["hierarchy", "credit"])
def test_the_presets_decode_a_block_causal_model(preset):
    decoder = Decoder.from_config(str(ROOT / f"configs/decoders/{preset}.yaml"), ["model.dllm.path=embedded:block"])
    out = decoder.generate(PROMPTS16[:4])
    assert all(0 < len(ids) <= 32 for ids in out.token_ids)


@pytest.mark.parametrize(
    "name, key, value",
    [
        ("hierarchy", "threshold", 1.5),
        ("hierarchy", "low_threshold", -0.1),
        ("credit", "threshold", 2),
        ("credit", "alpha", -1),
        ("credit", "gamma", 0),
        ("credit", "beta", 1.2),
    ],
)
def test_invalid_parameters_name_their_key(name, key, value):
    with pytest.raises(ConfigError, match=f"(?s)`decoder.verification.{key}`.*{value}.*fix"):
        load_config({}, [f"decoder.verification={name}", f"decoder.verification.{key}={value}"])


def test_the_presets_hold_the_official_defaults_or_the_train_split_choice():
    """The strategy defaults are dInfer's; hierarchy.yaml's low threshold 0.8 was chosen on the train split."""
    for preset, name, expected in (
        ("hierarchy", "hierarchy", {"threshold": 0.9, "low_threshold": 0.8}),
        ("credit", "credit", {"threshold": 0.9, "alpha": 0.7, "gamma": 0.2, "beta": 0.8}),
    ):
        config = load_config(str(ROOT / f"configs/decoders/{preset}.yaml"))
        strategy, params = config.strategies["verification"]
        assert strategy == name and {k: getattr(params, k) for k in expected} == expected
        assert config.strategies["window"][0] == "blocks"
    assert (HierarchyConfig().threshold, HierarchyConfig().low_threshold) == (0.9, 0.4)
    assert (CreditConfig().alpha, CreditConfig().gamma, CreditConfig().beta) == (0.7, 0.2, 0.8)


# --- the official decoders -------------------------------------------------------------------------------------------


GROUPS = official_settings(OFFICIAL["cases"], ignored=("mask_id", "eos_id", "temperature"))


def equivalent(decoder: str, a: dict) -> list[str]:
    """The overrides under which the project decodes as the official ``decoder`` called with arguments ``a``."""

    def null(value):
        return "null" if value is None else value

    common = llada_tiny_blocks(a["gen_length"], a["block_length"])
    if decoder == "dinfer.HierarchyDecoder":
        return [
            *common,
            "decoder.verification=hierarchy",
            f"decoder.verification.threshold={null(a['threshold'])}",
            f"decoder.verification.low_threshold={null(a['low_threshold'])}",
        ]
    return [
        *common,
        "decoder.verification=credit",
        f"decoder.verification.threshold={a['threshold']}",
        f"decoder.verification.alpha={a['credit_alpha']}",
        f"decoder.verification.gamma={a['boost_gamma']}",
        f"decoder.verification.beta={a['decay_beta']}",
    ]


class RuleCounter:
    """Wraps the verifier and counts what only the dInfer rule committed: for ``hierarchy``, commits that are neither
    above the high threshold nor the row's best (peaks between the thresholds); for ``credit``, commits the plain
    threshold rule on the unfused logits would not make, and commits whose token the credit changed."""

    def __init__(self, arguments: dict):
        self.arguments = arguments
        self.counts = defaultdict(int)

    @hookimpl(wrapper=True)
    def dlm_verify(self, proposal, window):
        decision = yield
        commit, eligible, confidence = decision.commit, window.eligible, proposal.confidence
        self.counts["steps"] += int(eligible.any(-1).sum())
        self.counts["parallel steps"] += int((commit.sum(-1) > 1).sum())
        if "low_threshold" in self.arguments:
            best = torch.zeros_like(eligible).scatter_(-1, confidence.masked_fill(~eligible, -1).argmax(-1, True), True)
            high = self.arguments["threshold"]
            above = confidence > high if high is not None else torch.zeros_like(eligible)
            self.counts["peaks between thresholds"] += int((commit & ~above & ~best).sum())
        else:
            plain = near_best_commit(confidence, eligible, self.arguments["threshold"])
            self.counts["credit-made commits"] += int((commit & ~plain).sum())
            self.counts["credit-changed tokens"] += int((commit & (decision.tokens != proposal.tokens)).sum())
        return decision


def test_every_recorded_case_is_compared():
    assert OFFICIAL["repository"] == "inclusionAI/dInfer" and OFFICIAL["commit"].startswith("fce4e32")
    assert len(OFFICIAL["cases"]) == 30 and len(GROUPS) == 6
    llada_tiny = Decoder.from_config({}, [f"model.dllm.path={REFERENCE / 'llada-tiny'}"]).dllm
    assert llada_tiny.encode(OFFICIAL["prompts"]) == OFFICIAL["prompt_ids"]["llada"]


@pytest.mark.parametrize("name", sorted(GROUPS))
def test_the_official_decoder_is_matched_token_for_token(name):
    cases = GROUPS[name]
    counter = RuleCounter(cases[0]["arguments"])
    assert_official_tokens(
        equivalent(cases[0]["decoder"], cases[0]["arguments"]), cases, OFFICIAL["prompts"], [counter]
    )
    counts = counter.counts
    assert counts["parallel steps"] > 0, counts
    key = "peaks between thresholds" if "low_threshold" in cases[0]["arguments"] else "credit-made commits"
    assert counts[key] > 0, counts
