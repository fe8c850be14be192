"""``local_leap`` verification (LocalLeap, arXiv 2510.07081): the rule on hand-computed cases and its invariants,
batch independence, block-causal models.

No fixture test: the official repository (friedrichor/LocalLeap) could not be obtained here, so there is no official
code to record. The rule was read from a third-party mirror of what appears to be its ``generate.py`` (see the
module docstring of ``dlm_decode.strategies.local_leap``), not run. What is tested instead are hand-computed
commits and the rule's invariants: it is the ``threshold`` rule when ``radius = 0`` or ``relaxed_threshold =
threshold``, it never commits fewer positions than ``threshold`` nor more than a plain ``relaxed_threshold``, and
neighbourhoods never cross rows.
"""

from __future__ import annotations

import pytest
import torch

from dlm_decode.api import select_top, threshold_commit
from dlm_decode.decoder import Decoder
from dlm_decode.errors import ConfigError
from dlm_decode.hookspecs import hookimpl
from dlm_decode.strategies.local_leap import anchor_neighbourhood, local_leap_commit

from helpers import MIXED_BATCH

PRESET = "configs/decoders/local-leap.yaml"


def _commit(confidence, eligible=None, threshold=0.9, relaxed=0.75, radius=2):
    confidence = torch.tensor(confidence, dtype=torch.float32)
    eligible = torch.ones_like(confidence, dtype=torch.bool) if eligible is None else torch.tensor(eligible)
    return local_leap_commit(confidence, eligible, threshold, relaxed, radius).tolist()


def test_neighbourhood_spans_radius_columns_on_each_side_within_the_row():
    anchors = torch.tensor(
        [
            [False, False, False, True, False, False, False, False],
            [True, False, False, False, False, False, False, True],
        ]
    )
    assert anchor_neighbourhood(anchors, 2).tolist() == [
        [False, True, True, True, True, True, False, False],
        [True, True, True, False, False, True, True, True],
    ]
    assert anchor_neighbourhood(anchors, 0).tolist() == anchors.tolist()


def test_positions_near_an_anchor_are_committed_from_the_relaxed_threshold():
    # anchor at column 3 (0.95); radius 2 covers columns 1..5
    confidence = [0.8, 0.76, 0.7, 0.95, 0.5, 0.8, 0.8, 0.1]
    assert _commit([confidence]) == [[False, True, False, True, False, True, False, False]]
    # column 0 and 6 (0.8) are outside the neighbourhood; column 2 (0.7) is inside but below 0.75


def test_without_an_anchor_only_the_most_confident_position_is_committed():
    assert _commit([[0.8, 0.85, 0.8, 0.2]]) == [[False, True, False, False]]
    # the fallback (0.85 < 0.9) is no anchor: its neighbours at 0.8 stay masked


def test_ineligible_positions_are_neither_committed_nor_anchors():
    confidence = [[0.99, 0.8, 0.3, 0.8]]
    eligible = [[False, True, True, True]]
    assert _commit(confidence, eligible, radius=1) == [[False, True, False, False]]  # the best eligible only


def test_rows_are_independent():
    confidence = [[0.1, 0.2, 0.3, 0.95], [0.8, 0.2, 0.1, 0.3]]
    assert _commit(confidence, radius=4) == [[False, False, False, True], [True, False, False, False]]


def test_it_is_the_threshold_rule_when_the_relaxation_is_off():
    generator = torch.Generator().manual_seed(0)
    confidence = torch.rand(6, 40, generator=generator) ** 0.3  # many values near the thresholds
    eligible = torch.rand(6, 40, generator=generator) > 0.3
    plain = threshold_commit(confidence, eligible, 0.9)
    assert torch.equal(local_leap_commit(confidence, eligible, 0.9, 0.5, 0), plain)
    assert torch.equal(local_leap_commit(confidence, eligible, 0.9, 0.9, 5), plain)
    relaxed = local_leap_commit(confidence, eligible, 0.9, 0.75, 3)
    assert bool((plain & ~relaxed).sum() == 0)  # never fewer than the threshold rule
    assert bool((relaxed & ~threshold_commit(confidence, eligible, 0.75)).sum() == 0)  # never more than 0.75
    assert bool((relaxed & ~plain).any())  # and here strictly more


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="relaxed_threshold"):
        Decoder.from_config(PRESET, ["decoder.verification.relaxed_threshold=0.95"])
    with pytest.raises(ConfigError, match="radius"):
        Decoder.from_config(PRESET, ["decoder.verification.radius=-1"])


class Leaps:
    """Counts the commits below τ that are not a row's most confident eligible position (the rule's leaps)."""

    def __init__(self, threshold: float):
        self.threshold, self.count = threshold, 0

    @hookimpl(wrapper=True)
    def dlm_verify(self, proposal, window):
        decision = yield
        best = select_top(proposal.confidence, window.eligible, None)
        self.count += int((decision.commit & ~best & (proposal.confidence < self.threshold)).sum())
        return decision


def test_batch_of_16_with_mixed_prompt_lengths_decodes_each_row_as_alone():
    leaps = Leaps(0.9)
    batched = Decoder.from_config(PRESET, observers=[leaps]).generate(MIXED_BATCH)
    assert leaps.count > 0  # the relaxation fires on the embedded model
    single = Decoder.from_config(PRESET, ["generation.batch_size=1"])
    for prompt, ids in zip(MIXED_BATCH[:8], batched.token_ids[:8]):
        assert single.generate([prompt]).token_ids[0] == ids, prompt


def test_the_preset_decodes_a_block_causal_model():
    out = Decoder.from_config(PRESET, ["model.dllm.path=embedded:block"]).generate(MIXED_BATCH[:4])
    assert all(out.token_ids)
