"""The window strategies on hand-built states: which masked positions are eligible, each row's block, what the model
sees (``input_end``, lookahead's ``visible``), for rows at different stages of one batch.

Every state below has the same canvas: ``MASK`` is the mask id, three prompts of 2, 1 and 2 tokens (the second left
padded), so ``gen_start`` is 2, and 6 generated columns, 2 to 7. ``committed`` lists, per row, the generated
offsets (column - 2) already decided.
"""

from __future__ import annotations

import pytest
import torch

from dlm_decode.masks import AttentionPattern
from dlm_decode.state import Decision, DecodeState
from dlm_decode.strategies.windows import BlockWindow, LookaheadWindow

from helpers import decode_state

MASK, TOKEN = 3, 10
PROMPTS = [[5, 6], [7], [8, 9]]


def state_with(committed: list[list[int]], attention: AttentionPattern | None = None) -> DecodeState:
    """The canvas of the module docstring with ``committed[row]`` (generated offsets) decided as ``TOKEN``."""
    options = {} if attention is None else {"attention": attention}
    state = decode_state(PROMPTS, 6, mask=MASK, pad=0, eos=[2], fill=0, seeds=[0, 1, 2], stop_at_eos=False, **options)
    commit = torch.zeros_like(state.masked)
    for row, offsets in enumerate(committed):
        commit[row, [state.gen_start + offset for offset in offsets]] = True
    state.apply(Decision(commit=commit, tokens=torch.full_like(state.canvas, TOKEN)))
    return state


def eligible_columns(window) -> list[list[int]]:
    return [row.nonzero().flatten().tolist() for row in window.eligible]


def test_the_hand_built_canvas_is_the_one_the_docstring_describes():
    state = state_with([[0, 2], [], [0, 1, 2, 3, 4, 5]])
    assert state.gen_start == 2 and state.width == 8
    assert state.canvas[1, :2].tolist() == [0, 7] and state.attention_mask[1, :2].tolist() == [False, True]
    assert state.masked.nonzero().tolist() == [[0, 3], [0, 5], [0, 6], [0, 7], *([1, c] for c in range(2, 8))]
    assert state.finished.tolist() == [False, False, True]


def test_full_makes_every_masked_generated_position_eligible():
    window = BlockWindow(None).dlm_window(state_with([[0, 2], [], [0, 1, 2, 3, 4, 5]]))
    assert eligible_columns(window) == [[3, 5, 6, 7], [2, 3, 4, 5, 6, 7], []]
    assert window.input_end == 8 and window.visible is None
    assert window.block_start[:2].tolist() == [2, 2] and window.block_end[:2].tolist() == [8, 8]


def test_blocks_make_the_masks_of_each_rows_first_unfinished_block_eligible():
    # blocks of 2: generated columns [2, 4), [4, 6), [6, 8)
    state = state_with([[0, 1, 2], [1], [0, 1, 2, 3, 4, 5]])
    window = BlockWindow(2).dlm_window(state)
    # row 0: block [2, 4) is done, column 4 decided: only 5 is left in [4, 6), the masks of [6, 8) wait;
    # row 1: column 3 is decided before the mask at column 2, both in the first block
    assert eligible_columns(window) == [[5], [2], []]
    assert window.block_start[:2].tolist() == [4, 2] and window.block_end[:2].tolist() == [6, 4]
    assert window.input_end == 8


def test_a_block_wider_than_the_rest_of_the_canvas_ends_at_the_canvas():
    window = BlockWindow(4).dlm_window(state_with([[0, 1, 2, 3], [], []]))
    # blocks of 4: [2, 6) and [6, 10) cut to [6, 8)
    assert eligible_columns(window) == [[6, 7], [2, 3, 4, 5], [2, 3, 4, 5]]
    assert window.block_start.tolist() == [6, 2, 2] and window.block_end.tolist() == [8, 6, 6]


def test_blocks_anchored_at_position_zero_lie_at_each_rows_own_columns():
    """SDAR's blocks count positions from 0, so a left-padded row's blocks start one column later: row 1 (one
    prompt token at column 1, position 0) has its first block at columns [1, 3), which ends one generated column
    in; row 0's first generated block is columns [2, 4)."""
    attention = AttentionPattern(block_size=2, anchor="position")
    state = state_with([[], [], [0, 1]], attention)
    window = BlockWindow(2).dlm_window(state)
    assert eligible_columns(window) == [[2, 3], [2], [4, 5]]
    assert window.block_start.tolist() == [2, 1, 4] and window.block_end.tolist() == [4, 3, 6]


def test_block_tables_follow_a_new_canvas_layout():
    """The kept ``[N]`` tables belong to one layout: the same plugin on a canvas with another ``gen_start`` and
    width computes its own blocks."""
    plugin = BlockWindow(2)
    assert eligible_columns(plugin.dlm_window(state_with([[0], [], []]))) == [[3], [2, 3], [2, 3]]
    other = decode_state(
        [[5, 6, 7]], 3, mask=MASK, pad=0, eos=[2], fill=0, stop_at_eos=False
    )  # generated columns 3, 4, 5
    window = plugin.dlm_window(other)
    assert eligible_columns(window) == [[3, 4]]
    assert window.block_end.tolist() == [5] and window.input_end == 6


@pytest.mark.parametrize("lookahead, ends", [(2, [5, 4]), (3, [6, 5]), (100, [8, 8]), (None, [8, 8])])
def test_lookahead_sees_up_to_m_columns_from_each_rows_frontier(lookahead, ends):
    # row 0's frontier (first mask) is column 3, row 1's column 2; row 2 is finished
    state = state_with([[0, 2], [], [0, 1, 2, 3, 4, 5]])
    window = LookaheadWindow(lookahead).dlm_window(state)
    expected = [[c for c in (3, 5, 6, 7) if c < ends[0]], [c for c in range(2, 8) if c < ends[1]], []]
    assert eligible_columns(window) == expected
    assert window.block_start.tolist() == [3, 2, 2] and window.block_end.tolist() == [*ends, 2]
    # each row sees its prompt and its lookahead, no further; the finished row sees its prompt; the model input
    # stops at the furthest end
    assert window.visible.tolist() == [[c < end for c in range(8)] for end in [*ends, 2]]
    assert window.input_end == max(ends)


def test_lookahead_windows_of_finished_rows_alone_stop_at_the_prompt():
    window = LookaheadWindow(2).dlm_window(state_with([[0, 1, 2, 3, 4, 5]] * 3))
    assert not window.eligible.any() and window.input_end == 2
    assert window.block_end.tolist() == [2, 2, 2]
