"""The rules the loop enforces whatever the plugins return (docs/concepts.md), and plugins that break them named:
commits outside the window, no progress, revocations of prompts, None results, NaN or +inf logits, the step limit."""

from __future__ import annotations

import pytest
import torch

from dlm_decode import DecodeError, PluginError
from dlm_decode.hookspecs import hookimpl
from dlm_decode.state import Decision
from dlm_decode.testing.toy import ToyDiffusionLM

from helpers import StepRecorder, strategy_decoder, toy_decoder


class _Raising:
    @hookimpl
    def dlm_verify(self, proposal):
        raise ValueError("boom")


class _CommitsNothing:
    @hookimpl
    def dlm_verify(self, proposal):
        return Decision(commit=torch.zeros_like(proposal.tokens, dtype=torch.bool), tokens=proposal.tokens)


class _CommitsPrompt:
    @hookimpl
    def dlm_verify(self, state, proposal, window):
        commit = window.eligible.clone()
        commit[:, 0] = True
        return Decision(commit=commit, tokens=proposal.tokens)


class _ReturnsNone:
    @hookimpl
    def dlm_verify(self, proposal):
        return None


class _RevokesPrompt:
    """Marks every row's first column (a prompt column) in the decision field ``change``."""

    revokes = True
    change = "revoke"

    @hookimpl
    def dlm_verify(self, state, proposal, window):
        first = torch.zeros_like(window.eligible)
        first[:, 0] = True
        return Decision(commit=window.eligible, tokens=proposal.tokens, **{self.change: first})


class _RedrawsOnMasks:
    @hookimpl
    def dlm_verify(self, state, proposal, window):
        return Decision(commit=window.eligible, tokens=proposal.tokens, redraw=window.eligible)


class _EditsThePrompt(_RevokesPrompt):
    change = "edit"


class _HoldsOnABidirectionalModel:
    @hookimpl
    def dlm_verify(self, state, proposal, window):
        hold = torch.ones_like(state.finished)
        return Decision(commit=window.eligible, tokens=proposal.tokens, hold=hold)


class _NaNModel(ToyDiffusionLM):
    """Finite logits, except ``poison`` written into one logit of the last row's last position at step ``step``
    (and token 0's logit at the first position, always ``-inf``); ``toy`` goes to :class:`ToyDiffusionLM`."""

    def __init__(self, poison: float = float("nan"), step: int = 0, **toy):
        super().__init__(**toy)
        self.poison, self.step, self.calls = poison, step, 0

    def forward(self, inputs, cache=None):
        logits = super().forward(inputs, cache).clone()
        logits[:, 0, 0] = float("-inf")  # infinities alone are not NaN
        if self.calls == self.step:
            logits[-1, -1, 5] = self.poison
        self.calls += 1
        return logits


@pytest.mark.parametrize(
    ("plugin_cls", "pattern"),
    [
        (_Raising, r"tests.bad_plugin \(verification strategy 'bad'\) in dlm_verify: raised ValueError: boom.*fix"),
        (_CommitsNothing, r"tests.bad_plugin.*committed nothing for unfinished rows \[0, 1\].*never end.*fix"),
        (_CommitsPrompt, r"tests.bad_plugin.*committed a position the window did not make eligible.*fix"),
        (_ReturnsNone, r"tests.bad_plugin.*dlm_verify: returned None.*fix"),
        (_RevokesPrompt, r"tests.bad_plugin.*revoked a position that is not a committed generated token.*fix"),
        (_EditsThePrompt, r"tests.bad_plugin.*edited a position that is not a committed generated token.*fix"),
        (_HoldsOnABidirectionalModel, r"tests.bad_plugin.*held a row's block open on a bidirectional model.*fix"),
        (_RedrawsOnMasks, r"tests.bad_plugin.*redrew a position .* or redrew on a mask canvas.*fix"),
    ],
)
def test_misbehaving_plugins_are_named(plugin_cls, pattern):
    with pytest.raises(PluginError, match="(?s)" + pattern):
        strategy_decoder(
            "verification",
            "bad",
            lambda config, context: plugin_cls(),
            "generation.max_new_tokens=4",
            plugin_name="tests.bad_plugin",
        ).generate(["ab", "cd"])


@pytest.mark.parametrize("poison", [float("nan"), float("inf")])
@pytest.mark.parametrize("step", [0, 2])
def test_a_single_nan_or_positive_infinite_logit_stops_decoding_with_a_fix(step, poison):
    """A ``+inf`` logit (a float16 overflow) makes its position's softmax ``inf - inf``: NaN confidence, and the
    argmax of NaN is id 0, the pad token, which would be committed silently."""
    decoder = toy_decoder(model=_NaNModel(step=step, poison=poison))
    with pytest.raises(DecodeError, match=f"(?s)NaN or infinite logits at step {step}.*fix"):
        decoder.generate(["ab", "cd"])


def test_negative_infinite_logits_are_not_mistaken_for_nan():
    """A model that never proposes EOS, one token per step: each row commits exactly one token per step until its
    4 masks are decided, 4 steps and 4 forwards, ``-inf`` logits (an excluded id) or not."""
    recorder = StepRecorder()
    decoder = toy_decoder(
        "generation.max_new_tokens=4",
        "decoder.verification.tokens_per_step=1",
        model=_NaNModel(poison=float("-inf"), eos_bias=float("-inf")),
        observers=[recorder],
    )
    output = decoder.generate(["ab", "cd"])
    (run,) = recorder.runs
    assert [step.commit.sum(-1).tolist() for step in run.steps] == [[1, 1]] * 4
    assert not run.steps[-1].masked.any()
    for stats in output.stats:
        assert (stats.commits_per_step, stats.nfe, stats.generated_tokens) == ([1, 1, 1, 1], 4, 4)


def test_rows_commit_tokens_per_step_until_their_masks_run_out():
    """5 masks, 2 tokens per step, a model that never proposes EOS: 3 steps committing 2, 2 and the last 1, one
    forward each, for every row of the batch whatever its prompt length."""
    recorder = StepRecorder()
    decoder = toy_decoder(
        "generation.max_new_tokens=5",
        "decoder.verification.tokens_per_step=2",
        model=ToyDiffusionLM(eos_bias=float("-inf")),
        observers=[recorder],
    )
    output = decoder.generate(["ab", "cde", "f"])
    (run,) = recorder.runs
    assert [step.commit.sum(-1).tolist() for step in run.steps] == [[2, 2, 2], [2, 2, 2], [1, 1, 1]]
    assert [(s.commits_per_step, s.nfe, s.generated_tokens) for s in output.stats] == [([2, 2, 1], 3, 5)] * 3


def test_step_limit_stops_a_runaway_generation_and_names_the_unfinished_rows():
    decoder = toy_decoder(
        "generation.max_steps=2", "generation.max_new_tokens=6", model=ToyDiffusionLM(eos_bias=float("-inf"))
    )
    with pytest.raises(
        DecodeError,
        match=r"(?s)prompts \[0, 1\] did not finish within 2 steps.*"
        r"generation.max_steps",
    ):
        decoder.generate(["ab", "cde"])
    from dlm_decode.loop import decode

    later_batch = decoder._state(["ab"], 5, 6, [0])  # a batch whose first prompt is prompt 5 of the request
    with pytest.raises(DecodeError, match=r"prompts \[5\] did not finish"):  # numbered in the request
        decode(decoder.roles, decoder.dllm, later_batch, 2)


class _GreedyWindow:
    @hookimpl
    def dlm_window(self, state):
        from dlm_decode.state import Window

        everything = torch.ones_like(state.masked)
        start = torch.zeros(state.batch_size, dtype=torch.long)
        return Window(eligible=everything, input_end=state.width, block_start=start, block_end=start + state.width)


def test_window_that_makes_prompt_positions_eligible_is_named():
    decoder = strategy_decoder(
        "window", "everything", lambda config, context: _GreedyWindow(), plugin_name="tests.window_plugin"
    )
    with pytest.raises(PluginError, match=r"(?s)tests.window_plugin.*dlm_window: made a position eligible.*fix"):
        decoder.generate(["ab"])
