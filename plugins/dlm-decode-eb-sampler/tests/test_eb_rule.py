"""The EB-Sampler selection rule on hand-built error vectors, and against a plain-Python reading of its definition."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dlm_decode.ops import get_scorer
from dlm_decode.state import Proposal
from dlm_decode_eb_sampler import EntropyBound, EntropyBoundConfig, ErrorProxy, entropy_bounded_commit


def commit(rows, gamma, eligible=None, max_tokens=None):
    errors = torch.tensor(rows, dtype=torch.float32)
    eligible = torch.ones_like(errors, dtype=torch.bool) if eligible is None else torch.tensor(eligible)
    return entropy_bounded_commit(errors, eligible, gamma, max_tokens)


def test_commits_the_largest_prefix_within_the_budget():
    # Sorted: 0.02 (col 4), 0.05 (col 1), 0.10 (col 3), 0.30 (col 0), 0.50 (col 2).
    # Sum of the values sorted ahead of each: 0, 0.02, 0.07, 0.17, 0.47.
    row = [[0.30, 0.05, 0.50, 0.10, 0.02]]
    # gamma 0.2: the first four pass (0.17 <= 0.2): U = {4, 1, 3, 0}, sum 0.47 - max 0.30 = 0.17.
    assert commit(row, 0.2).tolist() == [[True, True, False, True, True]]
    # gamma 0.1: the first three pass (0.07 <= 0.1, 0.17 > 0.1).
    assert commit(row, 0.1).tolist() == [[False, True, False, True, True]]
    # gamma 0.01: only the most certain one.
    assert commit(row, 0.01).tolist() == [[False, False, False, False, True]]


def test_the_last_committed_position_may_be_uncertain():
    # The largest proxy of U is not charged: two near-certain positions buy one arbitrarily uncertain one.
    row = [[5.0, 0.01, 0.02, 7.0]]
    assert commit(row, 0.05).tolist() == [[True, True, True, False]]


def test_gamma_zero_commits_exactly_one_per_row_with_eligible_positions():
    rows = [
        [0.7, 0.2, 0.9, 0.4],
        [0.0, 0.0, 0.3, 0.0],  # ties at zero: still one, the leftmost
        [0.5, 0.5, 0.5, 0.5],
        [0.1, 0.2, 0.3, 0.4],  # a finished row: nothing eligible
    ]
    eligible = [[True] * 4, [True] * 4, [False, True, True, True], [False] * 4]
    out = commit(rows, 0.0, eligible)
    assert out.sum(-1).tolist() == [1, 1, 1, 0]
    assert out.nonzero().tolist() == [[0, 1], [1, 0], [2, 1]]


def test_rows_of_one_batch_commit_different_counts():
    rows = [
        [0.9, 0.8, 1.0, 2.0, 0.7],  # sums ahead: 0, 0.7, ...        -> 1
        [0.1, 0.2, 3.0, 0.15, 2.0],  # sums ahead: 0, 0.1, 0.25, 0.45, 2.45 -> 4
        [0.01] * 5,  # sums ahead: 0, 0.01, ..., 0.04   -> 5
    ]
    out = commit(rows, 0.5)
    assert out.sum(-1).tolist() == [1, 4, 5]
    assert out[0].tolist() == [False, False, False, False, True]
    assert out[1].tolist() == [True, True, False, True, True]


def test_only_eligible_positions_are_ranked_and_committed():
    rows = [[0.0, 0.3, 0.1, 0.0, 0.2]]
    eligible = [[False, True, True, False, True]]
    assert commit(rows, 0.35, eligible).tolist() == [[False, True, True, False, True]]
    assert commit(rows, 0.25, eligible).tolist() == [[False, False, True, False, True]]


def test_max_tokens_caps_each_row():
    rows = [[0.01, 0.03, 0.02, 0.04], [0.5, 0.1, 0.2, 0.3]]
    eligible = [[True] * 4, [True, False, False, False]]
    out = commit(rows, 100.0, eligible, max_tokens=2)
    assert out.tolist() == [[True, False, True, False], [True, False, False, False]]
    assert commit(rows, 100.0, eligible).sum(-1).tolist() == [4, 1]


# --- against the definition ----------------------------------------------------------------------------------


def reference(values: list[float], eligible: list[bool], gamma: float, max_tokens: int | None) -> list[bool]:
    """Largest prefix U of the ascending order with sum(U) - max(U) <= gamma, at least one, capped; gamma=0 -> 1."""
    ranked = sorted((value, col) for col, (value, ok) in enumerate(zip(values, eligible)) if ok)
    size = 0
    for k in range(1, len(ranked) + 1):
        prefix = [value for value, _ in ranked[:k]]
        if sum(prefix) - max(prefix) <= gamma:
            size = k
    if gamma == 0:
        size = min(size, 1)
    if max_tokens is not None:
        size = min(size, max_tokens)
    chosen = {col for _, col in ranked[:size]}
    return [col in chosen for col in range(len(values))]


@st.composite
def batches(draw):
    rows, width = draw(st.integers(1, 4)), draw(st.integers(1, 9))
    grid = st.integers(0, 24).map(lambda k: k / 8)  # multiples of 1/8: every partial sum is exact
    values = draw(st.lists(st.lists(grid, min_size=width, max_size=width), min_size=rows, max_size=rows))
    eligible = draw(st.lists(st.lists(st.booleans(), min_size=width, max_size=width), min_size=rows, max_size=rows))
    gamma = draw(grid)
    max_tokens = draw(st.none() | st.integers(1, width))
    return values, eligible, gamma, max_tokens


@settings(max_examples=300, deadline=None, derandomize=True)
@given(batches())
def test_matches_the_definition(batch):
    values, eligible, gamma, max_tokens = batch
    out = entropy_bounded_commit(torch.tensor(values), torch.tensor(eligible), gamma, max_tokens)
    assert out.tolist() == [reference(v, e, gamma, max_tokens) for v, e in zip(values, eligible)]
    assert not (out & ~torch.tensor(eligible)).any()
    has_eligible = torch.tensor(eligible).any(-1)
    assert (out.any(-1) == has_eligible).all()


# --- the strategy object -------------------------------------------------------------------------------------


def window(eligible: torch.Tensor):
    batch = eligible.shape[0]
    return SimpleNamespace(
        eligible=eligible,
        block_start=torch.zeros(batch, dtype=torch.long),
        block_end=torch.full((batch,), eligible.shape[1]),
        input_end=eligible.shape[1],
    )


def real_proposal(logits_by_column: list[list[float]]) -> Proposal:
    """A one-row proposal over ``len(logits_by_column)`` columns, all eligible, scored by the real scorer."""
    logits = torch.tensor(logits_by_column)
    cols = torch.arange(logits.shape[0])
    rows = torch.zeros_like(cols)
    scorer = get_scorer()
    confidence, tokens = scorer.max_prob(logits)
    return Proposal(
        tokens=tokens[None].clone(),
        confidence=confidence[None].clone(),
        rows=rows,
        cols=cols,
        logits=logits,
        temperature=0.0,
        noise=None,
        scorer=scorer,
    )


# Columns 1 and 3 are near-certain (entropy ~ 0, confidence ~ 1, margin ~ 1); columns 0 and 2 are uniform over
# four tokens: entropy ln 4 = 1.386, 1 - confidence = 0.75, 1 - margin = 1.
SHARP, FLAT = [20.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]
COLUMNS = [FLAT, SHARP, FLAT, SHARP]


@pytest.mark.parametrize(
    ("score", "gamma", "expected"),
    [
        ("entropy", 0.5, [True, True, False, True]),  # sums ahead: 0, ~0, ~0, 1.386
        ("entropy", 1.5, [True, True, True, True]),
        ("entropy", 0.0, [False, True, False, False]),
        ("confidence", 0.8, [True, True, True, True]),  # sums ahead: 0, ~0, ~0, 0.75
        ("confidence", 0.7, [True, True, False, True]),
        ("margin", 0.8, [True, True, False, True]),  # sums ahead: 0, ~0, ~0, 1.0
        ("margin", 1.0, [True, True, True, True]),
    ],
)
def test_error_proxies_read_from_the_proposal(score, gamma, expected):
    strategy = EntropyBound(EntropyBoundConfig(gamma=gamma, score=ErrorProxy(score)))
    proposal = real_proposal(COLUMNS)
    decision = strategy.dlm_verify(proposal=proposal, window=window(torch.ones(1, 4, dtype=torch.bool)))
    assert decision.commit.tolist() == [expected]
    assert decision.tokens is proposal.tokens
    assert decision.revoke is None


def test_confidence_and_margin_are_turned_into_errors():
    # Most confident = smallest error: the budget must be spent on 1 - confidence, not on confidence.
    confidence = torch.tensor([[0.2, 0.9, 0.5]])
    margin = torch.tensor([[0.1, 0.05, 0.95]])
    proposal = SimpleNamespace(confidence=confidence, margin=margin, tokens=torch.tensor([[7, 8, 9]]))
    eligible = torch.ones(1, 3, dtype=torch.bool)
    pick = EntropyBound(EntropyBoundConfig(gamma=0.0, score=ErrorProxy.confidence))
    assert pick.dlm_verify(proposal=proposal, window=window(eligible)).commit.tolist() == [[False, True, False]]
    pick = EntropyBound(EntropyBoundConfig(gamma=0.0, score=ErrorProxy.margin))
    assert pick.dlm_verify(proposal=proposal, window=window(eligible)).commit.tolist() == [[False, False, True]]
