"""The proposal strategies on hand-computed cases: top-k and top-p filtering (:func:`filter_logits`: the sets kept,
ties, the argmax always kept, the order of the two filters, rows filtered independently), and what ``greedy`` and
``sample`` propose and report as confidence on a hand-built step."""

from __future__ import annotations

import math

import pytest
import torch

from dlm_decode.ops import Scorer
from dlm_decode.state import ForwardOutput, ModelInputs, Window
from dlm_decode.strategies.proposals import TokenProposal, filter_logits

from helpers import decode_state

INF = float("inf")
#: One row over four tokens, probabilities 0.1, 0.6, 0.05, 0.25: sorted, the most likely token is 1, then 3, 0, 2,
#: and the probability before each in that order is 0, 0.6, 0.85, 0.95 (top-p drops a token once that reaches p).
PROBS = [0.1, 0.6, 0.05, 0.25]


def logits_of(*rows: list[float]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32).log()


def kept(filtered: torch.Tensor) -> list[list[int]]:
    """Per row, the tokens that survived the filter (finite logits)."""
    return [row.isfinite().nonzero().flatten().tolist() for row in filtered]


@pytest.mark.parametrize(
    "top_k, expected", [(1, [1]), (2, [1, 3]), (3, [0, 1, 3]), (4, [0, 1, 2, 3]), (10, [0, 1, 2, 3])]
)
def test_top_k_keeps_the_k_most_likely_tokens(top_k, expected):
    logits = logits_of(PROBS)
    filtered = filter_logits(logits, top_k, None)
    assert kept(filtered) == [expected]
    assert torch.equal(filtered[0, expected], logits[0, expected])  # survivors keep their logits


@pytest.mark.parametrize(
    "top_p, expected",
    [(0.01, [1]), (0.5, [1]), (0.7, [1, 3]), (0.9, [0, 1, 3]), (0.99, [0, 1, 2, 3]), (1.0, [0, 1, 2, 3])],
)
def test_top_p_keeps_the_smallest_most_likely_set_reaching_p(top_p, expected):
    logits = logits_of(PROBS)
    filtered = filter_logits(logits, None, top_p)
    assert kept(filtered) == [expected]
    assert torch.equal(filtered[0, expected], logits[0, expected])


def test_no_filter_returns_the_logits_unchanged():
    logits = logits_of(PROBS)
    assert torch.equal(filter_logits(logits, None, None), logits)


def test_top_k_keeps_every_token_tied_with_the_kth():
    logits = torch.tensor([[1.0, 2.0, 2.0, 0.0]])
    assert kept(filter_logits(logits, 1, None)) == [[1, 2]]
    assert kept(filter_logits(logits, 2, None)) == [[1, 2]]


def test_top_p_keeps_one_of_two_tied_tokens_when_one_reaches_p():
    """Probabilities 0.4, 0.4, 0.2 and p = 0.3: either tied token alone reaches p, so the smallest set holds one
    of them (which one is the sort's choice), at the largest logit."""
    logits = logits_of([0.4, 0.4, 0.2])
    (survivors,) = kept(filter_logits(logits, None, 0.3))
    assert len(survivors) == 1 and survivors[0] in (0, 1)
    assert kept(filter_logits(logits, None, 0.5)) == [[0, 1]]


@pytest.mark.parametrize("top_k, top_p", [(1, None), (None, 1e-6), (1, 1e-6), (2, 0.01)])
def test_the_most_likely_token_always_survives(top_k, top_p):
    logits = torch.tensor([[0.0, 5.0, -3.0, 4.9], [9.0, -INF, 8.0, 1.0]])
    filtered = filter_logits(logits, top_k, top_p)
    assert filtered.argmax(-1).tolist() == [1, 0]
    assert kept(filtered) == [[1], [0]]


def test_top_k_applies_before_top_p_over_the_renormalised_survivors():
    """top_k = 3 keeps 0.6, 0.25, 0.1, renormalised to 0.632, 0.263, 0.105: the probability before the third is
    0.895 >= 0.88, so top_p drops it; on the full distribution it is 0.85 < 0.88 and the token stays."""
    logits = logits_of(PROBS)
    assert kept(filter_logits(logits, None, 0.88)) == [[0, 1, 3]]
    assert kept(filter_logits(logits, 3, 0.88)) == [[1, 3]]


def test_rows_are_filtered_independently_and_excluded_ids_stay_excluded():
    logits = torch.cat([logits_of(PROBS), torch.tensor([[-INF, 3.0, 1.0, 2.0]])])
    assert kept(filter_logits(logits, 2, None)) == [[1, 3], [1, 3]]
    # row 1: softmax of (3, 1, 2) over tokens 1..3 is 0.665, 0.090, 0.245: p = 0.7 keeps tokens 1 and 3
    assert kept(filter_logits(logits, None, 0.7)) == [[1, 3], [1, 3]]
    assert filter_logits(logits, None, 0.7)[1, 0] == -INF


# --- proposing, on a hand-built step ---------------------------------------------------------------------------------

MASK = 3


def one_step(logits_per_column: list[list[float]]):
    """One row, prompt ``[5, 6]``, 3 generated columns (2, 3, 4); columns 2 and 4 masked and eligible, column 3
    already decided as token 7. ``logits_per_column`` gives the logits of columns 2, 3, 4."""
    state = decode_state([[5, 6]], 3, mask=MASK, pad=0, eos=[2], fill=0, stop_at_eos=False)
    state.canvas[0, 3] = 7
    state.masked = state.canvas == MASK
    logits = torch.zeros(1, state.width, len(logits_per_column[0]))
    logits[0, 2:] = torch.tensor(logits_per_column)
    inputs = ModelInputs(
        input_ids=state.canvas, position_ids=state.position_ids, attention_mask=None, start=0, end=state.width
    )
    zero = torch.zeros(1, dtype=torch.long)
    window = Window(eligible=state.masked, input_end=state.width, block_start=zero + 2, block_end=zero + 5)
    return state, ForwardOutput(logits=logits, inputs=inputs), window


LOGITS = [[0.0, 2.0, 1.0, -INF, 0.5], [9.0, 0.0, 0.0, -INF, 0.0], [1.0, 0.0, 3.0, -INF, 2.5]]


def softmax_at(row: list[float], token: int) -> float:
    finite = [math.exp(x) for x in row if x > -INF]
    return math.exp(row[token]) / sum(finite)


def test_greedy_proposes_the_argmax_with_its_probability_at_eligible_positions_only():
    state, forward, window = one_step(LOGITS)
    proposal = TokenProposal(0.0, scorer=Scorer()).dlm_propose(state, forward, window)
    assert proposal.tokens[0].tolist() == [5, 6, 1, 7, 2]  # the canvas outside the eligible columns 2 and 4
    expected = [0.0, 0.0, softmax_at(LOGITS[0], 1), 0.0, softmax_at(LOGITS[2], 2)]
    torch.testing.assert_close(proposal.confidence[0], torch.tensor(expected), rtol=1e-6, atol=0.0)
    assert (proposal.rows.tolist(), proposal.cols.tolist()) == ([0, 0], [2, 4])
    assert proposal.noise is None and proposal.sampling_logits is None


def test_sampling_with_top_k_one_proposes_the_argmax_with_its_untempered_probability():
    """The sample is drawn from the tempered, filtered distribution (only the argmax survives top_k = 1), and the
    confidence is the argmax's probability under the untempered one, as in LLaDA."""
    state, forward, window = one_step(LOGITS)
    proposal = TokenProposal(2.0, top_k=1, scorer=Scorer()).dlm_propose(state, forward, window)
    assert proposal.tokens[0].tolist() == [5, 6, 1, 7, 2]
    expected = [softmax_at(LOGITS[0], 1), softmax_at(LOGITS[2], 2)]
    torch.testing.assert_close(proposal.confidence[0, [2, 4]], torch.tensor(expected), rtol=1e-6, atol=0.0)
    assert kept(proposal.sampling_logits) == [[1], [2]]
    torch.testing.assert_close(
        proposal.sampling_logits[:, [1, 2]].diagonal(), torch.tensor([1.0, 1.5]), rtol=1e-6, atol=0.0
    )  # the tempered logits, 2.0 / 2 and 3.0 / 2
    assert proposal.noise.shape == (2, 5) and proposal.noise.dtype == torch.float64
