"""Rows that leave and join a running batch (``DecodeState.regroup``, the core of ``dlm-decode serve``'s continuous
batching): each row decodes exactly as alone, whatever joins or leaves around it; the ``Relayout`` moves of
tensors, by hand; batches that cannot be regrouped; the stable prefix a stream may send."""

from __future__ import annotations

import pytest
import torch

from dlm_decode import PluginError
from dlm_decode.decoder import Decoder
from dlm_decode.hookspecs import hookimpl
from dlm_decode.loop import run_step, stable_ends
from dlm_decode.state import Decision, Relayout, Window
from dlm_decode.testing.toy import ToyDiffusionLM

from helpers import strategy_decoder

PROMPTS = ["sort 4 1 7 9 3", "add 12 30", "reverse abc", "max 3 9 2 7 5 1 8", "copy hi"]


def decode_with_arrivals(decoder: Decoder, arrivals: dict[int, list[tuple[str, int, int]]]) -> dict[str, list[int]]:
    """Decode rows that join at the steps ``arrivals`` names (step -> (prompt, max_new_tokens, seed)), finished
    rows leaving at once; each prompt's generated ids (its own columns, cut after the first EOS)."""
    eos = list(decoder.dllm.eos_token_ids)
    state, rows, out, step = None, [], {}, 0
    decoder.roles.bind()
    with torch.inference_mode():
        while rows or any(s >= step for s in arrivals):
            for prompt, max_new, seed in arrivals.get(step, []):
                fresh = decoder.initial_state(decoder.dllm.encode([prompt]), 0, max_new, [seed])
                state = fresh if state is None or not rows else state.regroup(range(len(rows)), fresh)
                rows.append((prompt, max_new))
            step += 1
            if state is None or not rows:
                continue
            run_step(decoder.roles, decoder.dllm, state)
            finished = state.finished.tolist()
            generated = state.canvas[:, state.gen_start :].tolist()
            for row, (prompt, max_new) in enumerate(rows):
                if finished[row]:
                    ids = generated[row][:max_new]
                    out[prompt] = ids[: min((ids.index(e) for e in eos if e in ids), default=len(ids)) + 1]
            keep = [row for row, done in enumerate(finished) if not done]
            if len(keep) < len(rows):
                rows = [rows[row] for row in keep]
                state = state.regroup(keep) if keep else None
    return out


@pytest.mark.parametrize("config", ["llada", "fast-dllm", "apd", "wino"])
def test_rows_joining_and_leaving_decode_as_alone(config):
    """Prompts of different lengths and ``max_new_tokens`` (so both left and right padding change) join at steps
    0, 1, 2 and 4, and leave as they finish: each gets the ids of its solo ``generate``."""
    decoder = Decoder.from_config(f"configs/decoders/{config}.yaml")
    calls = [(prompt, max_new, 7 + i) for i, (prompt, max_new) in enumerate(zip(PROMPTS, [24, 8, 40, 16, 32]))]
    arrivals = {0: calls[:2], 1: calls[2:3], 2: calls[3:4], 4: calls[4:]}
    got = decode_with_arrivals(decoder, arrivals)
    for prompt, max_new, seed in calls:
        assert got[prompt] == decoder.generate([prompt], max_new_tokens=max_new, seeds=[seed]).token_ids[0], prompt


def test_relayout_moves_rows_and_columns_by_hand():
    tensor = torch.tensor([[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    wider = Relayout(torch.tensor([2, 0]), joined=1, left=2, width=6, old_width=3)
    assert wider.apply(tensor, 0).tolist() == [[0, 0, 7, 8, 9, 0], [0, 0, 1, 2, 3, 0], [0, 0, 0, 0, 0, 0]]
    narrower = Relayout(torch.tensor([1]), joined=0, left=-1, width=1, old_width=3)
    assert narrower.apply(tensor, -1).tolist() == [[5]]
    assert wider.rows_of(torch.tensor([10, 20, 30]), -1).tolist() == [30, 10, -1]
    assert wider.columns_of(torch.tensor([0, 1, 2]), -1).tolist() == [4, 2, -1]
    keys = torch.arange(2 * 1 * 3 * 1).reshape(2, 1, 3, 1)  # [B, H, N, D]: columns on dim 2
    moved = Relayout(torch.tensor([1]), joined=1, left=1, width=4, old_width=3).apply(keys, 0, dim=2)
    assert moved[:, 0, :, 0].tolist() == [[0, 3, 4, 5], [0, 0, 0, 0]]


def test_a_batch_with_a_memory_that_cannot_follow_its_rows_is_not_regrouped():
    decoder = Decoder.from_config("configs/decoders/klass.yaml")
    state = decoder.initial_state(decoder.dllm.encode(PROMPTS[:2]), 0, 16, [0, 1])
    assert state.joinable  # no memory before the first step
    decoder.roles.bind()
    with torch.inference_mode():
        run_step(decoder.roles, decoder.dllm, state)
    assert not state.joinable
    with pytest.raises(ValueError, match="(?s)cannot be regrouped.*no RowMemory.*fix"):
        state.regroup([0])
    fresh = decoder.initial_state(decoder.dllm.encode(PROMPTS[2:3]), 0, 16, [2])
    with torch.inference_mode():
        run_step(decoder.roles, decoder.dllm, fresh)
    llada = Decoder.from_config("configs/decoders/llada.yaml")
    other = llada.initial_state(llada.dllm.encode(PROMPTS[:1]), 0, 16, [0])
    with pytest.raises(ValueError, match="took no step"):
        other.regroup([0], fresh)


class _RevokesBehindTheBlock:
    """Commits the leftmost eligible position, and from the second step revokes the first generated column,
    which lies before the current block of a ``blocks`` window of 2."""

    revokes = True

    @hookimpl
    def dlm_verify(self, state, proposal, window):
        first = window.eligible & (window.eligible.cumsum(-1) == 1)
        revoke = torch.zeros_like(first)
        if state.step >= 3:
            revoke[:, state.gen_start] = True
        return Decision(commit=first, tokens=proposal.tokens, revoke=revoke)


class _RevokesUndeclared:
    @hookimpl
    def dlm_verify(self, state, proposal, window):
        first = window.eligible & (window.eligible.cumsum(-1) == 1)
        return Decision(commit=first, tokens=proposal.tokens, revoke=torch.zeros_like(first))


@pytest.mark.parametrize(
    ("plugin", "pattern"),
    [
        (_RevokesBehindTheBlock, "revoked a position that is not a committed generated token .*current window block"),
        (_RevokesUndeclared, "returned a `revoke` or `edit` mask, but no plugin implementing dlm_verify declares"),
    ],
)
def test_revocations_stay_in_the_window_block_and_are_declared(plugin, pattern):
    decoder = strategy_decoder(
        "verification",
        "bad",
        lambda config, context: plugin(),
        "decoder.window=blocks",
        "decoder.window.size=2",
        model=ToyDiffusionLM(eos_bias=float("-inf")),
    )
    with pytest.raises(PluginError, match=pattern):
        decoder.generate(["ab"], max_new_tokens=6)


def test_stable_ends_stop_at_the_first_mask_and_for_a_revoking_decoder_at_the_window_block():
    decoder = Decoder.from_config("configs/decoders/llada.yaml")
    state = decoder.initial_state(decoder.dllm.encode(["ab", "abcd"]), 0, 6, [0, 1])
    g = state.gen_start
    state.canvas[0, g : g + 3] = 7  # row 0: three decided columns, then masks
    state.canvas[1, g:] = 7  # row 1: all decided
    state.masked = state.canvas == state.mask_token_id
    state.finished = ~state.masked.any(-1)
    window = Window(
        eligible=state.masked,
        input_end=state.width,
        block_start=torch.tensor([g + 2, g]),
        block_end=torch.tensor([0, 0]),
    )
    assert stable_ends(state, window, revokes=False).tolist() == [g + 3, state.width]
    assert stable_ends(state, window, revokes=True).tolist() == [g + 2, state.width]
