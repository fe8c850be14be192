"""A decoder built from YAML with ``entropy_bound`` decodes the tiny random model to the end."""

from __future__ import annotations

import pytest
import torch

from dlm_decode.api import hookimpl
from dlm_decode_eb_sampler import EntropyBound, EntropyBoundConfig

PROMPTS = ["sort: 5 3 9 1", "ab", "pick a fruit"]
MAX_NEW = 12


class FinalState:
    """Observer keeping the starting canvas and the final state of the last generation."""

    @hookimpl
    def dlm_generation_start(self, state):
        self.initial = state.canvas.clone()

    @hookimpl
    def dlm_generation_end(self, state):
        self.state = state


def write_config(tmp_path, window: str, verification: str):
    path = tmp_path / "decoder.yaml"
    path.write_text(
        "decoder:\n"
        f"  window: {window}\n"
        "  cache: {name: none}\n"
        "  proposal: {name: greedy}\n"
        f"  verification: {verification}\n"
        "generation:\n"
        f"  max_new_tokens: {MAX_NEW}\n"
        "  batch_size: 4\n"
    )
    return str(path)


@pytest.mark.parametrize("window", ["{name: full}", "{name: blocks, size: 4}"])
def test_every_row_finishes_with_every_position_decided(make_decoder, tmp_path, window):
    observer = FinalState()
    decoder = make_decoder(
        source=write_config(tmp_path, window, "{name: entropy_bound, gamma: 0.5}"), observers=[observer]
    )
    spec, strategy = decoder.strategies["verification"]
    assert (spec.name, spec.package) == ("entropy_bound", "dlm-decode-eb-sampler")
    assert isinstance(strategy, EntropyBound) and strategy.gamma == 0.5
    assert decoder.config.strategies["verification"] == ("entropy_bound", EntropyBoundConfig(gamma=0.5))

    out = decoder.generate(PROMPTS)

    state = observer.state
    generated = state.canvas[:, state.gen_start :]
    assert bool(state.finished.all())
    assert not bool(state.masked.any())
    assert not bool((generated == state.mask_token_id).any())
    assert torch.equal(state.canvas[:, : state.gen_start], observer.initial[:, : state.gen_start])
    assert len(out.texts) == len(PROMPTS)
    for row, stats in enumerate(out.stats):
        # Every generated position was either committed by the strategy or filled after the row's first EOS.
        filled = int(state.filled[row].sum())
        assert sum(stats.commits_per_step) + filled == MAX_NEW
        assert stats.nfe == len(stats.commits_per_step) >= 1
        assert all(count >= 1 for count in stats.commits_per_step)
        assert 1 <= stats.generated_tokens <= MAX_NEW


def test_gamma_zero_is_one_token_per_step(make_decoder, tmp_path):
    decoder = make_decoder(source=write_config(tmp_path, "{name: full}", "{name: entropy_bound, gamma: 0}"))
    for stats in decoder.generate(PROMPTS).stats:
        assert stats.commits_per_step == [1] * stats.nfe


def test_an_unbounded_budget_fills_the_canvas_in_one_step(make_decoder, tmp_path):
    decoder = make_decoder(source=write_config(tmp_path, "{name: full}", "{name: entropy_bound, gamma: 1.0e9}"))
    for stats in decoder.generate(PROMPTS).stats:
        assert stats.nfe == 1
        assert stats.commits_per_step == [MAX_NEW]


def test_max_tokens_caps_every_step(make_decoder, tmp_path):
    decoder = make_decoder(
        source=write_config(tmp_path, "{name: full}", "{name: entropy_bound, gamma: 1.0e9, max_tokens: 3}")
    )
    for stats in decoder.generate(PROMPTS).stats:
        assert stats.commits_per_step[0] == 3
        assert max(stats.commits_per_step) <= 3
