"""Fast-dLLM's confidence threshold and factor rules."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from dlm_decode import ConfigError, load_config
from dlm_decode.decoder import Decoder
from dlm_decode.state import Window
from dlm_decode.strategies.threshold import Factor, FactorConfig, Threshold, ThresholdConfig

from helpers import PROMPTS, confidence_proposal


def verify(plugin, confidence: list[list[float]], eligible: list[list[bool]] | None = None) -> list[list[int]]:
    """The columns ``plugin`` commits, per row, for hand-built confidences (all eligible unless given)."""
    scores = torch.tensor(confidence, dtype=torch.float32)
    allowed = torch.ones_like(scores, dtype=torch.bool) if eligible is None else torch.tensor(eligible)
    proposal = confidence_proposal(scores, allowed)
    zeros = torch.zeros(len(scores), dtype=torch.long)
    window = Window(eligible=allowed, input_end=scores.shape[1], block_start=zeros, block_end=zeros + scores.shape[1])
    commit = plugin.dlm_verify(proposal=proposal, window=window).commit
    return [row.nonzero().flatten().tolist() for row in commit]


def factor(f: float) -> Factor:
    return Factor(FactorConfig(factor=f))


def threshold(tau: float) -> Threshold:
    return Threshold(ThresholdConfig(threshold=tau))


# --- factor: 1-based rank n is accepted while c_(n) >= 1 - f / (n + 1) -------------------------------------


def test_factor_rejects_a_failing_last_candidate():
    # thresholds for f = 1: n=2 -> 2/3, n=3 -> 3/4. 0.7 < 0.75 fails at the last candidate; the official code would
    # accept all three.
    assert verify(factor(1.0), [[0.99, 0.9, 0.7]]) == [[0, 1]]
    assert verify(factor(1.0), [[0.7, 0.99, 0.9]]) == [[1, 2]]


def test_factor_accepts_every_candidate_that_passes():
    assert verify(factor(1.0), [[0.99, 0.9, 0.8]]) == [[0, 1, 2]]
    assert verify(factor(1.0), [[0.9, 0.75, 0.75]]) == [[0, 1, 2]], "c_(n) equal to its threshold is accepted"


def test_factor_stops_at_the_first_failure_and_always_takes_the_first():
    # f = 2: thresholds n=2 -> 1/3, n=3 -> 1/2, n=4 -> 3/5; sorted: 0.9, 0.9, 0.55 pass, 0.5 fails.
    assert verify(factor(2.0), [[0.9, 0.55, 0.5, 0.9]]) == [[0, 1, 3]]
    assert verify(factor(2.0), [[0.9, 0.4, 0.45, 0.9]]) == [[0, 3]]
    assert verify(factor(1.0), [[0.2, 0.1]]) == [[0]], "the most confident is accepted whatever its confidence"
    assert verify(factor(1.0), [[0.6, 0.6, 0.6]]) == [[0]], "tied failures after the first: leftmost first only"


def test_factor_counts_per_row_among_eligible_positions_only():
    confidence = [[0.99, 0.98, 0.97, 0.96], [0.99, 0.98, 0.97, 0.96], [0.5, 0.5, 0.5, 0.5]]
    eligible = [[True, True, True, True], [False, True, False, True], [False, False, False, False]]
    # row 0: n=4 threshold 0.8 -> all four; row 1: 0.98, 0.96 -> both; row 2: nothing eligible.
    assert verify(factor(1.0), confidence, eligible) == [[0, 1, 2, 3], [1, 3], []]


# --- threshold: every eligible c >= τ, and the most confident -----------------------------------------------


def test_threshold_on_hand_built_confidences():
    confidence = [[0.95, 0.2, 0.9, 0.89], [0.3, 0.5, 0.4, 0.1], [0.99, 0.99, 0.99, 0.99]]
    eligible = [[True, True, True, True], [True, True, True, True], [False, True, False, True]]
    assert verify(threshold(0.9), confidence, eligible) == [[0, 2], [1], [1, 3]]
    assert verify(threshold(1.0), [[0.3, 0.8, 0.8]]) == [[1]], "ties for the top go to the leftmost"


@given(data=st.data(), rows=st.integers(1, 4), cols=st.integers(1, 6), tau=st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0]))
def test_threshold_matches_its_definition(data, rows, cols, tau):
    values = st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0, 0.1, 0.6])  # coarse values: ties and c == τ are common
    confidence = data.draw(st.lists(st.lists(values, min_size=cols, max_size=cols), min_size=rows, max_size=rows))
    eligible = data.draw(st.lists(st.lists(st.booleans(), min_size=cols, max_size=cols), min_size=rows, max_size=rows))
    expected = []
    for scores, allowed in zip(confidence, eligible):
        candidates = [i for i in range(cols) if allowed[i]]
        best = max(candidates, key=lambda i: (scores[i], -i)) if candidates else None
        expected.append([i for i in candidates if scores[i] >= tau or i == best])
    assert verify(threshold(tau), confidence, eligible) == expected


# --- end to end on a tiny HF model ---------------------------------------------------------------------------


def decode(dllm, *overrides):
    config = load_config(
        {}, ["decoder.window=blocks", "decoder.window.size=8", "generation.max_new_tokens=16", *overrides]
    )
    return Decoder(config, dllm=dllm).generate(PROMPTS)


def test_strict_rules_are_topk_with_one_token_per_step(sharp):
    """τ = 1 and a vanishing factor (every threshold rounds to 1) accept only the most confident position while
    confidences stay below 1: LLaDA's one token per step, token for token."""
    topk = decode(sharp, "decoder.verification=topk", "decoder.verification.tokens_per_step=1")
    assert len({tuple(ids) for ids in topk.token_ids}) == len(PROMPTS), "rows too alike to compare"
    for rule in (
        ["decoder.verification=threshold", "decoder.verification.threshold=1.0"],
        ["decoder.verification=factor", "decoder.verification.factor=1.0e-9"],
    ):
        strict = decode(sharp, *rule)
        assert strict.token_ids == topk.token_ids, rule
        assert all(set(s.commits_per_step) == {1} for s in strict.stats), rule


def test_lax_rules_fill_a_block_per_step(sharp):
    """τ = 0 and a huge factor accept every eligible position: each step fills the rest of a block of 8."""
    for rule in (
        ["decoder.verification=threshold", "decoder.verification.threshold=0.0"],
        ["decoder.verification=factor", "decoder.verification.factor=1.0e9"],
    ):
        assert all(set(s.commits_per_step) == {8} for s in decode(sharp, *rule).stats), rule


def test_threshold_decodes_several_tokens_per_forward_at_the_paper_setting(sharp):
    out = decode(sharp, "decoder.verification=threshold", "decoder.verification.threshold=0.9")
    assert any(max(s.commits_per_step) > 1 for s in out.stats)


@pytest.mark.parametrize(
    "override, key",
    [
        ("decoder.verification.threshold=1.5", "decoder.verification.threshold"),
        ("decoder.verification.threshold=-0.1", "decoder.verification.threshold"),
    ],
)
def test_threshold_out_of_range_names_its_key(override, key):
    with pytest.raises(ConfigError, match=f"(?s)`{key}`.*must be in \\[0, 1\\].*fix"):
        load_config({}, ["decoder.verification=threshold", override])


def test_factor_must_be_positive():
    with pytest.raises(ConfigError, match="(?s)`decoder.verification.factor`: must be > 0.*fix"):
        load_config({}, ["decoder.verification=factor", "decoder.verification.factor=0"])


def test_min_tokens_commits_at_least_that_many_of_the_most_confident():
    """SDAR's dynamic rule: everything above τ when at least k pass, else the k most confident (never an
    ineligible position, never more than the eligible ones)."""
    from dlm_decode.api import threshold_commit

    confidence = torch.tensor([[0.9, 0.5, 0.4, 0.1, 0.95]])
    eligible = torch.tensor([[True, True, True, True, False]])
    assert threshold_commit(confidence, eligible, 0.8, 1).int().tolist() == [[1, 0, 0, 0, 0]]
    assert threshold_commit(confidence, eligible, 0.8, 3).int().tolist() == [[1, 1, 1, 0, 0]]
    assert threshold_commit(confidence, eligible, 0.3, 2).int().tolist() == [[1, 1, 1, 0, 0]]
    assert threshold_commit(confidence, eligible, 0.99, 9).int().tolist() == [[1, 1, 1, 1, 0]]
    with pytest.raises(ConfigError, match="min_tokens"):
        load_config({}, ["decoder.verification=threshold", "decoder.verification.min_tokens=0"])
