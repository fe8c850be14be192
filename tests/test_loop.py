"""The rules the loop enforces whatever the plugins return (docs/concepts.md), and plugins that break them named:
commits outside the window, no progress, revocations of prompts, None results, NaN logits, the step limit."""

from __future__ import annotations

import pytest
import torch

from dlm_decode import DecodeError, PluginError
from dlm_decode.hookspecs import hookimpl
from dlm_decode.state import Decision
from dlm_decode.testing.toy import ToyDiffusionLM
from helpers import strategy_decoder, toy_decoder


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
    @hookimpl
    def dlm_verify(self, state, proposal, window):
        revoke = torch.zeros_like(window.eligible)
        revoke[:, 0] = True
        return Decision(commit=window.eligible, tokens=proposal.tokens, revoke=revoke)


class _NaNModel(ToyDiffusionLM):
    """Finite logits, except ``poison`` written into one logit of the last row's last position at step ``step``."""

    def __init__(self, poison: float = float("nan"), step: int = 0):
        super().__init__()
        self.poison, self.step, self.calls = poison, step, 0

    def forward(self, inputs, cache=None):
        logits = super().forward(inputs, cache).clone()
        logits[:, 0, 0] = float("-inf")  # infinities alone are not NaN
        if self.calls == self.step:
            logits[-1, -1, 5] = self.poison
        self.calls += 1
        return logits


@pytest.mark.parametrize(("plugin_cls", "pattern"), [
    (_Raising, r"tests.bad_plugin \(verification strategy 'bad'\) in dlm_verify: raised ValueError: boom.*fix"),
    (_CommitsNothing, r"tests.bad_plugin.*committed nothing for unfinished rows \[0, 1\].*never end.*fix"),
    (_CommitsPrompt, r"tests.bad_plugin.*committed a position the window did not make eligible.*fix"),
    (_ReturnsNone, r"tests.bad_plugin.*dlm_verify: returned None.*fix"),
    (_RevokesPrompt, r"tests.bad_plugin.*revoked a position that is not a committed generated token.*fix"),
])
def test_misbehaving_plugins_are_named(plugin_cls, pattern):
    with pytest.raises(PluginError, match="(?s)" + pattern):
        strategy_decoder("verification", "bad", lambda config, context: plugin_cls(), "generation.max_new_tokens=4",
                         plugin_name="tests.bad_plugin").generate(["ab", "cd"])


@pytest.mark.parametrize("step", [0, 2])
def test_a_single_nan_logit_stops_decoding_with_a_fix(step):
    decoder = toy_decoder(model=_NaNModel(step=step))
    with pytest.raises(DecodeError, match=f"(?s)NaN logits at step {step}.*fix"):
        decoder.generate(["ab", "cd"])


def test_infinite_logits_are_not_mistaken_for_nan():
    output = toy_decoder(model=_NaNModel(poison=float("inf"))).generate(["ab", "cd"])
    assert all(stats.steps >= 1 for stats in output.stats)


def test_step_limit_stops_a_runaway_generation_and_names_the_unfinished_rows():
    decoder = toy_decoder("generation.max_steps=2", "generation.max_new_tokens=6",
                          model=ToyDiffusionLM(eos_bias=float("-inf")))
    with pytest.raises(DecodeError, match=r"(?s)prompts \[0, 1\] did not finish within 2 steps.*"
                                          r"generation.max_steps"):
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
    decoder = strategy_decoder("window", "everything", lambda config, context: _GreedyWindow(),
                               plugin_name="tests.window_plugin")
    with pytest.raises(PluginError, match=r"(?s)tests.window_plugin.*dlm_window: made a position eligible.*fix"):
        decoder.generate(["ab"])
