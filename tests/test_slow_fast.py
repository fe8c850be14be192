"""``slow_fast`` verification (SlowFast sampling, arXiv 2506.10848): the phase rule on hand-computed cases, batch
independence, block-causal models, and the official sampler token for token.

The fixtures (``tests/reference/official_slow_fast.json``, written by ``tests/reference/record_slow_fast.py``) hold
what ``generate_slow_fast_sampling`` of LiangrunFlora/Slow-Fast-Sampling returned on the tiny LLaDA checkpoint, one
prompt at a time, at temperature 0, for 4 knob settings. Here each setting's 5 prompts are decoded in one
left-padded batch and must give the official final canvas (``generation.stop_at_eos=false``: the official sampler
decodes the whole canvas).
"""

from __future__ import annotations

import json
from collections import defaultdict

import pytest
import torch

from dlm_decode.api import ForwardPlan, ModelInputs, Window
from dlm_decode.decoder import Decoder
from dlm_decode.errors import ConfigError
from dlm_decode.hookspecs import hookimpl
from dlm_decode.state import DecodeState
from dlm_decode.strategies.slow_fast import SlowFastConfig, SlowFastVerifier, farthest_confident

from helpers import MIXED_BATCH, REFERENCE, assert_official_tokens, confidence_proposal, decode_state, llada_tiny_blocks

PRESET = "configs/decoders/slow-fast.yaml"


class Rows:
    """Observer keeping the final canvas (generated columns) and the row statistics of each batch."""

    def __init__(self):
        self.rows, self.stats = [], []

    @hookimpl
    def dlm_generation_end(self, state):
        self.rows += state.canvas[:, state.gen_start :].tolist()
        self.stats.append({k: v.clone() for k, v in state.row_stats.items()})


# --- the rule on hand-computed cases -----------------------------------------------------------------------------


def _state(width: int = 8) -> DecodeState:
    """One row: a 2-column prompt and ``width - 2`` masks (mask id 0)."""
    return decode_state([[5, 6]], width - 2, mask=0, pad=1, eos=[2], fill=1)


def _step(verifier, state, confidence):
    """Run one verify over the whole generated region as one block; apply and return the commits ``[N]`` bool."""
    confidence = torch.tensor([confidence], dtype=torch.float32)
    width = state.width
    window = Window(
        eligible=state.masked.clone(),
        input_end=width,
        block_start=torch.tensor([state.gen_start]),
        block_end=torch.tensor([width]),
    )
    proposal = confidence_proposal(confidence * state.masked, state.masked, token=7)
    decision = verifier.dlm_verify(state=state, forward=None, proposal=proposal, window=window)
    state.apply(decision)
    return decision.commit[0].tolist()


def test_farthest_confident_column_per_row():
    confidence = torch.tensor([[0.5, 0.1, 0.6, 0.2], [0.1, 0.1, 0.1, 0.1]])
    scope = torch.tensor([[True, True, True, False], [True] * 4])
    assert farthest_confident(confidence, scope, 0.5).tolist() == [2, -1]


def test_slow_phase_settles_the_span_then_the_fast_phase_decodes_only_the_span():
    # K = 2, W = 2: the estimates at the two slow steps are 3 and 3 (std 0 < 1): the span is [0, 3) of the block
    verifier = SlowFastVerifier(SlowFastConfig(exploration_steps=2, span_threshold=0.5, threshold=0.9))
    state = _state(8)  # generated columns 2..7 (block offsets 0..5)
    # slow 1: farthest >= 0.5 at offset 2 -> estimate 3; nothing >= 0.9 twice: commit the best one (offset 1)
    assert _step(verifier, state, [0, 0, 0.6, 0.8, 0.55, 0.1, 0.2, 0.3]) == [False, False, False, True] + [False] * 4
    memory = verifier.memory(state)
    assert memory.count.tolist() == [1] and memory.estimates[0, -1].tolist() == 3 and not memory.settled[0]
    # slow 2: farthest >= 0.5 at offset 2 again -> settled at 3; one position >= 0.9 only: the best one
    assert _step(verifier, state, [0, 0, 0.95, 0, 0.6, 0.1, 0.4, 0.3]) == [False, False, True] + [False] * 5
    assert memory.settled.tolist() == [True] and memory.span_end.tolist() == [2 + 3]
    # fast: the scope is the span [2, 5): only column 4 is masked there; column 5 is more confident but outside
    assert _step(verifier, state, [0, 0, 0, 0, 0.3, 0.99, 0, 0.99]) == [False] * 4 + [True] + [False] * 3
    assert memory.fast.tolist() == [True]
    # the span is complete: a new sub-cycle starts at its end (slow again, scope [5, 8)); 0.99 twice -> both
    assert _step(verifier, state, [0, 0, 0, 0, 0, 0.99, 0.2, 0.99]) == [False] * 5 + [True, False, True]
    assert memory.fast.tolist() == [False] and memory.span_start.tolist() == [5]


def test_unstable_estimates_settle_on_their_floored_mean_at_the_last_slow_step():
    # estimates 1 then 6 (std 2.5 >= 1): at the last (second) slow step the span end is floor(3.5) = 3
    verifier = SlowFastVerifier(SlowFastConfig(exploration_steps=2, span_threshold=0.5))
    state = _state(8)
    _step(verifier, state, [0, 0, 0.1, 0.2, 0.3, 0.2, 0.1, 0.1])  # none >= 0.5: estimate 0 + 1 = 1
    _step(verifier, state, [0, 0, 0, 0.2, 0.3, 0.2, 0.1, 0.6])  # farthest at offset 5: estimate 6
    memory = verifier.memory(state)
    assert memory.estimates[0].tolist() == [1, 6] and memory.span_end.tolist() == [2 + 3]
    assert memory.settled.tolist() == [True]


def test_fewer_slow_steps_than_estimates_take_the_mean_of_those_made():
    verifier = SlowFastVerifier(SlowFastConfig(exploration_steps=1, stability_window=3, span_threshold=0.5))
    state = _state(8)
    _step(verifier, state, [0, 0, 0.1, 0.2, 0.3, 0.7, 0.1, 0.1])  # farthest at offset 3: estimate 4
    memory = verifier.memory(state)
    assert memory.settled.tolist() == [True] and memory.span_end.tolist() == [2 + 4]


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="exploration_steps"):
        Decoder.from_config(PRESET, ["decoder.verification.exploration_steps=0"])
    with pytest.raises(ConfigError, match="stability_std"):
        Decoder.from_config(PRESET, ["decoder.verification.stability_std=0"])


# --- whole decodes -----------------------------------------------------------------------------------------------


def test_batch_of_16_with_mixed_prompt_lengths_decodes_each_row_as_alone():
    rows = Rows()
    batched = Decoder.from_config(PRESET, observers=[rows]).generate(MIXED_BATCH)
    stats = rows.stats[0]
    assert stats["slow_fast.fast_phases"].sum() > 0 and stats["slow_fast.fast_steps"].sum() > 0  # the rule fires
    single = Decoder.from_config(PRESET, ["generation.batch_size=1"])
    for prompt, ids in zip(MIXED_BATCH[:8], batched.token_ids[:8]):
        assert single.generate([prompt]).token_ids[0] == ids, prompt


def test_fast_steps_after_the_first_see_only_the_columns_before_the_span_end():
    verifier = SlowFastVerifier(SlowFastConfig(exploration_steps=1))
    state = _state(8)
    window = Window(eligible=state.masked, input_end=8, block_start=torch.tensor([2]), block_end=torch.tensor([8]))
    mask = torch.ones(1, 1, 8, 8, dtype=torch.bool)
    inputs = ModelInputs(input_ids=state.canvas, position_ids=state.position_ids, attention_mask=mask, start=0, end=8)

    def visible_keys(fast_steps: int) -> list[bool]:
        memory = verifier.prepare(state, window)
        memory.fast[:] = True
        memory.span_end[:] = 5
        memory.fast_steps[:] = fast_steps
        wrapper = verifier.dlm_model_inputs(state=state, window=window, plan=ForwardPlan(start=0, end=8))
        next(wrapper)
        with pytest.raises(StopIteration) as result:
            wrapper.send(inputs)
        return result.value.value.attention_mask[0, 0, 3].tolist()

    assert visible_keys(0) == [True] * 8  # the fast phase's first forward sees the whole canvas
    assert visible_keys(1) == [True] * 5 + [False] * 3  # later ones: keys before the span end (column 5) only


def test_the_preset_decodes_a_block_causal_model():
    out = Decoder.from_config(
        PRESET, ["model.dllm.path=embedded:block", "decoder.window=blocks", "decoder.window.size=8"]
    ).generate(MIXED_BATCH[:4])
    assert all(out.token_ids)


# --- the official sampler ----------------------------------------------------------------------------------------

OFFICIAL = json.loads((REFERENCE / "official_slow_fast.json").read_text(encoding="utf-8"))
GROUPS: dict[str, list[dict]] = defaultdict(list)
for _case in OFFICIAL["cases"]:
    _a = _case["arguments"]
    GROUPS[
        f"block{_a['block_length']}-k{_a['k_exploration_steps']}-span{_a['cycle_len_confidence_threshold']}"
        f"-tau{_a['high_confidence_threshold']}-w{_a['cycle_length_stability_window']}"
    ].append(_case)


def equivalent(arguments: dict) -> list[str]:
    a = arguments
    return [
        *llada_tiny_blocks(a["gen_length"], a["block_length"]),
        "decoder.verification=slow_fast",
        f"decoder.verification.exploration_steps={a['k_exploration_steps']}",
        f"decoder.verification.span_threshold={a['cycle_len_confidence_threshold']}",
        f"decoder.verification.threshold={a['high_confidence_threshold']}",
        f"decoder.verification.stability_window={a['cycle_length_stability_window']}",
        f"decoder.verification.stability_std={a['cycle_length_stability_std_dev_threshold']}",
    ]


@pytest.mark.parametrize("name", sorted(GROUPS))
def test_the_official_sampler_is_matched_token_for_token(name):
    cases = GROUPS[name]
    stats = assert_official_tokens(equivalent(cases[0]["arguments"]), cases, OFFICIAL["prompts"])
    assert sum(row.extra["slow_fast.fast_phases"] for row in stats) > 0  # the fast phase ran
