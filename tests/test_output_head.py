"""The output head at the columns a step reads: ``ModelInputs.outputs`` from the window's width (plus WINO's shadow
slots), ``ForwardOutput`` reading logits by canvas column whatever their layout, the adapter's head on the gathered
hidden states (shifted logits included), the same tokens as with every column's logits, and a strategy reading a
column the forward did not compute named by the loop."""

from __future__ import annotations

import pytest
import torch

from dlm_decode import PluginError
from dlm_decode.decoder import Decoder
from dlm_decode.dispatch import FULL_LOGITS_ENV
from dlm_decode.hookspecs import hookimpl
from dlm_decode.masks import bidirectional_mask, position_ids_from_mask
from dlm_decode.state import Decision, ForwardOutput, ModelInputs
from dlm_decode.testing.toy import ToyDiffusionLM

from helpers import MIXED_BATCH, REFERENCE, assert_logits_close, strategy_decoder


def hand_output() -> ForwardOutput:
    """Two rows, queries for canvas columns 3 to 8 plus two extra slots; row 0 computed at queries 1, 2 and the first
    slot (6), row 1 at queries 3, 4 and 7; logit ``v`` of row ``b``'s query ``q`` is ``100 b + 10 q + v``."""
    outputs = torch.tensor([[1, 2, 6], [3, 4, 7]])
    logits = 100 * torch.arange(2.0)[:, None, None] + 10 * outputs[..., None] + torch.arange(4.0)
    ids = torch.zeros(2, 8, dtype=torch.long)
    inputs = ModelInputs(ids, ids, torch.ones(2, 1, 8, 8, dtype=torch.bool), start=3, end=9, outputs=outputs)
    return ForwardOutput(logits=logits, inputs=inputs, outputs=outputs)


def test_forward_output_reads_logits_by_canvas_column():
    forward = hand_output()
    at = forward.at(torch.tensor([0, 1, 0]), torch.tensor([4, 7, 5]))  # queries 1, 4 and 2
    assert torch.equal(at[:, 0], torch.tensor([10.0, 140.0, 20.0]))
    assert torch.equal(forward.extra(torch.tensor([0, 1]), torch.tensor([0, 1]))[:, 1], torch.tensor([61.0, 171.0]))
    assert forward.missed()[0].item() is False
    forward.columns(4, 6)  # row 1 has no logits at queries 1 and 2
    assert forward.missed()[0].item() is True


def test_forward_output_without_outputs_is_the_plain_layout():
    logits = torch.arange(2 * 6 * 3, dtype=torch.float32).view(2, 6, 3)
    ids = torch.zeros(2, 6, dtype=torch.long)
    forward = ForwardOutput(logits=logits, inputs=ModelInputs(ids, ids, torch.ones(2, 1, 6, 6, dtype=torch.bool), 3, 9))
    assert torch.equal(forward.at(torch.tensor([1]), torch.tensor([5])), logits[1, 2][None])
    assert torch.equal(forward.columns(4, 7), logits[:, 1:4])
    assert forward.missed() == []


def embedded_inputs(dllm, outputs=None, start=0):
    real = torch.ones(3, 12, dtype=torch.bool)
    real[0, :2] = False  # left padding
    ids = torch.randint(3, 60, (3, 12), generator=torch.Generator().manual_seed(0))
    mask = bidirectional_mask(real)[:, :, start:]
    return ModelInputs(ids[:, start:], position_ids_from_mask(real)[:, start:], mask[..., start:], start, 12, outputs)


@pytest.mark.parametrize("path", ["embedded:dllm", str(REFERENCE / "dream-tiny"), str(REFERENCE / "llada2-tiny")])
def test_head_at_output_queries_equals_those_columns_of_the_full_logits(path):
    """Bidirectional and shifted (Dream: column j reads hidden state j - 1) models, no cache."""
    decoder = Decoder.from_config({}, [f"model.dllm.path={path}"])
    dllm = decoder.dllm
    assert dllm.selects_outputs
    outputs = torch.tensor([[0, 1, 5], [4, 5, 6], [9, 10, 11]])
    full = dllm.forward(embedded_inputs(dllm))
    narrow = dllm.forward(embedded_inputs(dllm, outputs))
    assert narrow.shape == (3, 3, full.shape[-1])
    assert_logits_close(narrow, full[torch.arange(3)[:, None], outputs])


def selective_toy(**kwargs) -> ToyDiffusionLM:
    """The toy dLLM computing its logits at ``inputs.outputs`` only (as the adapter does)."""

    class Selective(ToyDiffusionLM):
        selects_outputs = True

        def forward(self, inputs, cache=None):
            logits = super().forward(inputs, cache)
            if inputs.outputs is None:
                return logits
            return logits[torch.arange(logits.shape[0])[:, None], inputs.outputs]

    return Selective(**kwargs)


class _ReadsColumnZero:
    @hookimpl
    def dlm_verify(self, state, forward, proposal, window):
        forward.at(torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long))  # a prompt column
        return Decision(commit=window.eligible, tokens=proposal.tokens)


def test_reading_a_column_the_forward_did_not_compute_is_named():
    decoder = strategy_decoder(
        "verification",
        "reads_zero",
        lambda config, context: _ReadsColumnZero(),
        "decoder.window.name=blocks",
        "decoder.window.size=2",
        plugin_name="tests.reader",
        model=selective_toy(),
    )
    with pytest.raises(PluginError, match=r"(?s)tests.reader.*did not compute at step 0.*fix"):
        decoder.generate(["abcdef"], max_new_tokens=6)


class _Widths:
    """Records the number of output queries of every forward (None: all)."""

    def __init__(self):
        self.widths = []

    @hookimpl(wrapper=True)
    def dlm_model_inputs(self):
        inputs = yield
        self.widths.append(None if inputs.outputs is None else inputs.outputs.shape[1])
        return inputs


#: preset -> the numbers of output queries per row its forwards use (None: every column): the window's width (blocks
#: of 16 or 8, APD's lookahead of 16), WINO's block of 16 and its 16 shadow slots; None where the span is no wider
#: (the dual and dKV caches' later steps), for a window with no width (``full``) and for KLASS, Prophet and FreeDave,
#: which read every column.
PRESETS = {
    "apd": {16},
    "dkv-cache": {8, None},
    "dpad": {8},
    "fast-dllm": {8, None},
    "freedave": {None},
    "klass": {None},
    "llada": {16},
    "prophet": {None},
    "slow-fast": {None},
    "wino": {32},
}


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_same_tokens_as_every_column(preset, monkeypatch):
    """Each preset on the embedded dLLM, a batch of 16: the tokens of the head at every column."""

    def tokens(full: bool):
        if full:
            monkeypatch.setenv(FULL_LOGITS_ENV, "1")
        else:
            monkeypatch.delenv(FULL_LOGITS_ENV, raising=False)
        widths = _Widths()
        decoder = Decoder.from_config(f"configs/decoders/{preset}.yaml", observers=[widths])
        return decoder.generate(MIXED_BATCH, max_new_tokens=24).token_ids, widths.widths

    needed, widths = tokens(False)
    every, full_widths = tokens(True)
    assert needed == every
    assert set(full_widths) == {None}
    assert set(widths) == PRESETS[preset]
