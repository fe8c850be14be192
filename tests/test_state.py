"""DecodeState: left padding, EOS tail fill, re-opening the tail when its EOS is revoked, counting."""

from __future__ import annotations

import torch

from dlm_decode.state import Decision, first_of

from helpers import decode_state

MASK, PAD, EOS, FILL = 3, 0, 2, 2


def build(prompts=([5, 6, 7], [8]), max_new=5):
    return decode_state(prompts, max_new, mask=MASK, pad=PAD, eos=[EOS], fill=FILL)


def decision(state, commits: dict[tuple[int, int], int], revoke=()):
    commit = torch.zeros_like(state.masked)
    tokens = state.canvas.clone()
    for (row, col), token in commits.items():
        commit[row, col] = True
        tokens[row, col] = token
    revoked = None
    if revoke:
        revoked = torch.zeros_like(state.masked)
        for row, col in revoke:
            revoked[row, col] = True
    return Decision(commit=commit, tokens=tokens, revoke=revoked)


def test_left_padding_masks_and_positions():
    state = build()
    assert state.gen_start == 3
    assert state.canvas[1].tolist() == [PAD, PAD, 8, MASK, MASK, MASK, MASK, MASK]
    assert state.attention_mask[1].tolist() == [False, False] + [True] * 6
    assert state.position_ids[1].tolist() == [0, 0, 0, 1, 2, 3, 4, 5]
    assert state.masked[0].tolist() == [False] * 3 + [True] * 5


def test_eos_fills_the_tail_finishes_the_row_and_counts_up_to_eos():
    state = build()
    state.apply(decision(state, {(0, 3): 9, (0, 4): EOS, (1, 6): 11}))
    assert state.canvas[0, 3:].tolist() == [9, EOS, FILL, FILL, FILL]
    assert bool(state.finished[0]) and not bool(state.finished[1])
    assert state.generated()[0] == [9, EOS]
    assert state.changed[0, 3:].tolist() == [True] * 5 and state.changed[1].tolist() == [False] * 6 + [True, False]
    state.apply(decision(state, {(1, 3): EOS}))
    assert state.canvas[1, 3:].tolist() == [EOS, FILL, FILL, FILL, FILL], "committed tokens after EOS are cut"
    assert state.generated()[1] == [EOS]
    assert state.nfe.tolist() == [1, 2]
    assert [c.tolist() for c in state.commits] == [[2, 1], [0, 1]]


def test_a_commit_after_an_eos_of_the_same_step_is_filled_and_not_counted():
    state = build()
    commits = state.apply(decision(state, {(0, 3): 9, (0, 4): EOS, (0, 6): 7, (1, 5): 11}))
    assert state.canvas[0, 3:].tolist() == [9, EOS, FILL, FILL, FILL]
    assert commits.tolist() == [2, 1] and [c.tolist() for c in state.commits] == [[2, 1]]


def test_revoking_the_first_eos_reopens_the_filled_tail():
    state = build(prompts=([5],), max_new=5)
    state.apply(decision(state, {(0, 2): EOS, (0, 1): 9}))
    assert bool(state.finished[0])
    state.finished[0] = False
    state.apply(decision(state, {}, revoke=[(0, 2)]))
    assert state.canvas[0, 1:].tolist() == [9, MASK, MASK, MASK, MASK]
    assert state.masked[0, 2:].all() and not bool(state.finished[0])


def test_row_without_eos_generates_every_column():
    state = build(prompts=([5],), max_new=2)
    state.apply(decision(state, {(0, 1): 7, (0, 2): 8}))
    assert state.generated()[0] == [7, 8] and bool(state.finished[0])


def test_an_eos_id_inside_the_prompt_does_not_end_the_row():
    """Chat templates put end-of-turn ids (EOS for Qwen/Dream, LLaDA's EoT) in the prompt; only generated ones count."""
    state = build(prompts=([5, EOS, 6],), max_new=4)
    state.apply(decision(state, {(0, 4): 9}))
    assert state.canvas[0, 3:].tolist() == [MASK, 9, MASK, MASK] and not bool(state.finished[0])
    state.apply(decision(state, {(0, 3): 7, (0, 5): EOS}))
    assert state.canvas[0].tolist() == [5, EOS, 6, 7, 9, EOS, FILL] and bool(state.finished[0])
    assert state.generated()[0] == [7, 9, EOS]


def test_with_several_eos_ids_a_row_ends_at_the_first_of_any():
    """Rows end at whichever EOS id comes first, not at the first id of the list (e.g. end of turn vs end of text)."""
    END_OF_TURN = 9
    state = decode_state([[5], [5]], 4, mask=MASK, pad=PAD, eos=[EOS, END_OF_TURN], fill=FILL)
    state.apply(decision(state, {(0, 1): 7, (0, 2): END_OF_TURN, (1, 1): EOS, (1, 2): END_OF_TURN}))
    assert state.generated() == [[7, END_OF_TURN], [EOS]]
    assert state.canvas[0, 3:].tolist() == [FILL, FILL] and state.finished.tolist() == [True, True]


def test_first_of_finds_the_earliest_of_several_targets():
    assert first_of([4, 9, 2, 9, 3], [3, 9]) == 1
    assert first_of([4, 9, 2], [7]) == 3
    assert first_of([], [1]) == 0


def test_without_stop_at_eos_every_position_is_decoded_and_the_ids_still_end_at_the_first_eos():
    state = decode_state([[5, 6]], 4, mask=MASK, pad=PAD, eos=[EOS], fill=FILL, stop_at_eos=False)
    start = state.gen_start
    state.apply(decision(state, {(0, start + 1): EOS}))
    assert state.masked[0, start:].tolist() == [True, False, True, True], "nothing filled after the EOS"
    assert not bool(state.finished[0])
    state.apply(decision(state, {(0, start): 9, (0, start + 2): 7, (0, start + 3): 8}))
    assert bool(state.finished[0]) and state.generated() == [[9, EOS]]
    assert [int(c) for c in state.commits] == [1, 3], "positions after the EOS are decoded and counted"


def test_the_excluded_ids_are_the_mask_id_and_the_undecodable_ones():
    state = decode_state([[5]], 2, mask=MASK, pad=PAD, eos=[EOS], fill=FILL, excluded_token_ids=[7, 5, 7])
    assert state.excluded_ids.tolist() == [MASK, 5, 7]
