"""LLaDA 2.1's token editing (``editing``) and the core's ``Decision.edit`` / ``Decision.hold``: held blocks, post-step
counts and EOS tails reopened by an edit (the loop's refusals are in ``tests/test_loop.py``). The official
``generate`` is matched in ``tests/test_llada2.py``."""

from __future__ import annotations

import pytest
import torch

from dlm_decode.errors import ConfigError
from dlm_decode.hookspecs import hookimpl
from dlm_decode.masks import AttentionPattern
from dlm_decode.state import Decision, DecodeState
from dlm_decode.testing.toy import ToyDiffusionLM

from helpers import MIXED_BATCH, toy_decoder

BLOCKS = AttentionPattern(block_size=4, anchor="position")
M = ToyDiffusionLM.mask_token_id


def block_state(stop_at_eos: bool = False) -> DecodeState:
    """One row: prompt ``[1, 5, 6, 7]`` (block 0), then 8 masks (blocks 1 and 2, columns 4-7 and 8-11)."""
    return DecodeState.build(
        [[1, 5, 6, 7]],
        max_new_tokens=8,
        mask_token_id=M,
        pad_token_id=0,
        eos_token_ids=[2],
        fill_token_id=0 if stop_at_eos else 2,
        seeds=[0],
        stop_at_eos=stop_at_eos,
        attention=BLOCKS,
    )


def commit(state: DecodeState, columns: list[int], token: int, **fields) -> None:
    chosen = torch.zeros_like(state.masked)
    chosen[0, columns] = True
    state.apply(Decision(commit=chosen, tokens=torch.full_like(state.canvas, token), **fields))


def test_a_held_block_stays_current_and_unfinished_until_released():
    state = block_state()
    commit(state, [4, 5, 6, 7], 8, hold=torch.tensor([True]))  # block 1 full, held
    assert state.held.tolist() == [True] and state.finished.tolist() == [False]
    assert [bound.tolist() for bound in state.model_block()] == [[4], [8]]  # still block 1, not block 2
    nothing = torch.zeros_like(state.masked)
    state.apply(Decision(commit=nothing, tokens=state.canvas))  # a decision without hold releases it
    assert state.held.tolist() == [False] and [b.tolist() for b in state.model_block()] == [[8], [12]]
    assert state.nfe.tolist() == [2]  # the post-step counts as a forward although it committed nothing


def test_a_hold_on_a_block_that_still_has_masks_is_ignored():
    state = block_state()
    commit(state, [4, 5], 8, hold=torch.tensor([True]))
    assert state.held.tolist() == [False] and [b.tolist() for b in state.model_block()] == [[4], [8]]


def test_an_edit_that_removes_the_first_eos_reopens_the_filled_tail():
    state = block_state(stop_at_eos=True)
    commit(state, [5], 2)  # EOS at column 5: columns 6-11 filled
    assert state.filled[0].nonzero().flatten().tolist() == list(range(6, 12))
    assert state.masked[0].nonzero().flatten().tolist() == [4]
    edit = torch.zeros_like(state.masked)
    edit[0, 5] = True
    state.apply(Decision(commit=torch.zeros_like(edit), tokens=torch.full_like(state.canvas, 9), edit=edit))
    assert state.canvas[0, 5] == 9 and state.masked[0].nonzero().flatten().tolist() == [4, *range(6, 12)]
    assert not state.filled.any() and state.finished.tolist() == [False]


def editing_decoder(*overrides: str, observers=()):
    model = ToyDiffusionLM(eos_bias=float("-inf"), attention=BLOCKS)
    return toy_decoder(
        "generation.max_new_tokens=12", "generation.stop_at_eos=false", *overrides, model=model, observers=observers
    )


def test_without_edits_each_block_costs_one_post_step_more_than_threshold():
    """``editing_threshold=1.0`` never edits (no probability exceeds 1): the tokens are ``threshold``'s with the
    same ``min_tokens``, and each block, once full, is held for one post-step that edits nothing and releases it,
    so every row takes one forward more per generated block (prompts of 2 to 4 ids: 3 or 4 blocks of 4)."""
    window = ["decoder.window=blocks", "decoder.window.size=4"]
    plain = editing_decoder(*window, "decoder.verification=threshold", "decoder.verification.threshold=0.6")
    editing = editing_decoder(
        *window,
        "decoder.verification=editing",
        "decoder.verification.threshold=0.6",
        "decoder.verification.editing_threshold=1.0",
        "decoder.verification.max_post_steps=3",
    ).generate(MIXED_BATCH[:4])
    plain = plain.generate(MIXED_BATCH[:4])
    assert editing.token_ids == plain.token_ids
    canvas_blocks = [len({(len(p) + 1 + i) // 4 for i in range(12)}) for p in MIXED_BATCH[:4]]
    assert [e.nfe - p.nfe for e, p in zip(editing.stats, plain.stats)] == canvas_blocks


class EditCounter:
    """Observer counting edited positions, and rows a step left held (each will take a post-step)."""

    def __init__(self):
        self.edits = self.holds = 0

    @hookimpl
    def dlm_step_end(self, state, decision):
        self.edits += int(decision.edit.sum()) if decision.edit is not None else 0
        self.holds += int(state.held.sum())


def test_editing_decodes_a_batch_as_each_row_alone_and_edits_fire():
    recorder = EditCounter()
    decoder = editing_decoder(
        "decoder.window=blocks",
        "decoder.window.size=4",
        "decoder.verification=editing",
        "decoder.verification.threshold=0.5",
        "decoder.verification.editing_threshold=0.3",
        "decoder.verification.max_post_steps=2",
        observers=[recorder],
    )
    batched = decoder.generate(MIXED_BATCH)
    alone = decoder.generate(MIXED_BATCH, batch_size=1)
    assert batched.token_ids == alone.token_ids
    assert [s.nfe for s in batched.stats] == [s.nfe for s in alone.stats]
    assert recorder.edits > 0 and recorder.holds > 0  # the rule edited tokens and held blocks open


@pytest.mark.parametrize(
    ("override", "key"),
    [
        ("decoder.verification.editing_threshold=1.5", "editing_threshold"),
        ("decoder.verification.max_post_steps=-1", "max_post_steps"),
        ("decoder.verification.min_tokens=0", "min_tokens"),
    ],
)
def test_bad_editing_settings_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key):
        editing_decoder("decoder.verification=editing", override)
