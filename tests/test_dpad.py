"""DPad's window: keep probabilities and visibility on hand-computed small cases, the kept distribution by distance,
batch invariance, block-causal models, the config, and the official code through ``tests/reference/official_dpad.json``.

Parity with the official code. ``tests/reference/record_dpad.py`` ran Crys-Chen/DPad's LLaDA decoders on
``llada-tiny``. The official sampler draws its kept suffix columns from the global torch generator, once per block,
which the project (per-row generators, so a batch decodes each row as it would alone) cannot reproduce. So:

* the cases recorded with ``random: false`` keep every column of the window with probability >= 1 (a
  deterministic sliding window) and are compared token for token as they are;
* the cases with ``random: true`` are compared token for token after giving the project the kept sets the official
  code drew (recorded per prompt and block): this checks the visibility, positions and caches under irregular
  kept sets, while the draw itself is checked statistically (:func:`test_gaussian_keep_frequencies_follow_the_density`,
  :func:`test_uniform_keeps_exactly_the_preserved_number_uniformly`).

Every case group is decoded here in one left-padded batch of the 5 prompts.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from dlm_decode import ConfigError
from dlm_decode.decoder import Decoder
from dlm_decode.state import DecodeState
from dlm_decode.strategies.dpad import DPadConfig, DPadMemory, DPadWindow, keep_probabilities

from helpers import REFERENCE, FinalCanvas, assert_official_tokens, decode_state, official_settings

PRESET = Path(__file__).resolve().parents[1] / "configs" / "decoders" / "dpad.yaml"
OFFICIAL = json.loads((REFERENCE / "official_dpad.json").read_text(encoding="utf-8"))
MASK = 99


def phi(x: float) -> float:
    return math.exp(-x * x / 2) / math.sqrt(2 * math.pi)


# --- keep probabilities -------------------------------------------------------------------------------------------


def test_official_spacing_puts_the_window_on_linspace_0_to_sigma():
    p = keep_probabilities(DPadConfig(suffix_window=5, sigma=4.0, scale=2.0), 7)
    expected = [2 * phi(x) for x in (0.0, 1.0, 2.0, 3.0, 4.0)] + [0.0, 0.0]
    torch.testing.assert_close(p, torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=0)


def test_paper_spacing_starts_one_step_into_the_gaussian():
    p = keep_probabilities(DPadConfig(suffix_window=4, sigma=4.0, scale=2.0, spacing="paper"), 5)
    expected = [2 * phi(x) for x in (1.0, 2.0, 3.0, 4.0)] + [0.0]
    torch.testing.assert_close(p, torch.tensor(expected, dtype=torch.float64), rtol=1e-12, atol=0)


def test_a_one_column_window_and_the_default_window():
    torch.testing.assert_close(
        keep_probabilities(DPadConfig(suffix_window=1, scale=3.0), 3),
        torch.tensor([3 * phi(0.0), 0.0, 0.0], dtype=torch.float64),
        rtol=1e-12,
        atol=0,
    )
    p = keep_probabilities(DPadConfig(sigma=3.0, scale=1.0), 4)  # null window: the 4 distances given
    torch.testing.assert_close(
        p, torch.tensor([phi(0), phi(1), phi(2), phi(3)], dtype=torch.float64), rtol=1e-12, atol=0
    )


# --- visibility on a hand-built state ------------------------------------------------------------------------------


class FixedUniforms(DPadWindow):
    """DPad with chosen uniforms instead of the rows' generators."""

    def __init__(self, config: DPadConfig, values: torch.Tensor, trim: bool = True):
        super().__init__(config, trim)
        self.values = values

    def uniforms(self, state, blocks, distances):
        assert (blocks, distances) == tuple(self.values.shape[1:])
        return self.values


def small_state(prompts=((1, 2), (3, 4, 5)), new=12) -> DecodeState:
    return decode_state(prompts, new, mask=MASK, pad=0, eos=[98], fill=98)


def commit(state: DecodeState, columns: range) -> None:
    state.canvas[:, list(columns)] = 7
    state.masked = state.canvas == MASK


def test_a_row_sees_its_block_and_only_its_kept_suffix_columns():
    # gen_start 3, 12 generated columns, blocks of 4: [3, 7), [7, 11), [11, 15); K = 12 // 4 + 2 = 5 blocks
    config = DPadConfig(size=4, suffix_window=4, sigma=4.0, scale=2.0)
    # p(d) = 2 phi(0, 4/3, 8/3, 4) = 0.798, 0.328, 0.0227, 0.00027, then 0
    u = torch.ones(2, 5, 12, dtype=torch.float64)
    u[0, 0, :5] = torch.tensor([0.9, 0.2, 0.01, 0.0001, 0.0])  # row 0, block 0: keeps d = 1, 2, 3 (never d = 4)
    u[1, 0, :4] = torch.tensor([0.5, 0.5, 0.5, 0.5])  # row 1, block 0: keeps d = 0
    u[0, 1, :4] = torch.tensor([0.1, 0.9, 0.9, 0.9])  # block 1: row 0 keeps d = 0, row 1 none
    window = FixedUniforms(config, u)
    state = small_state()
    w = window.dlm_window(state)
    assert w.block_start.tolist() == [3, 3] and w.block_end.tolist() == [7, 7]
    visible = [[c for c in range(15) if w.visible[b, c]] for b in range(2)]
    assert visible == [[0, 1, 2, 3, 4, 5, 6, 8, 9, 10], [0, 1, 2, 3, 4, 5, 6, 7]]
    assert w.eligible.tolist() == [[3 <= c < 7 for c in range(15)]] * 2
    assert w.input_end == 11  # cache none: the span ends after the batch's last kept column
    # the same block keeps the same set at its next step
    commit(state, range(3, 5))
    assert torch.equal(window.dlm_window(state).visible, w.visible)
    commit(state, range(5, 7))
    w = window.dlm_window(state)
    assert w.block_end.tolist() == [11, 11]
    visible = [[c for c in range(15) if w.visible[b, c]] for b in range(2)]
    assert visible == [list(range(11)) + [11], list(range(11))]
    assert w.input_end == 12


def test_without_trimming_the_model_sees_the_whole_canvas_span():
    u = torch.ones(1, 5, 12, dtype=torch.float64)
    w = FixedUniforms(DPadConfig(size=4, suffix_window=4), u, trim=False).dlm_window(small_state(((1, 2),)))
    assert w.input_end == 14 and w.visible[0].tolist() == [c < 6 for c in range(14)]


def test_uniform_dropout_keeps_the_preserved_number_among_the_window_or_the_whole_short_suffix():
    # one prompt of 2, 12 generated, blocks of 4: suffix lengths L = 8, 4, 0 for blocks 0, 1, 2
    config = DPadConfig(size=4, suffix_window=6, dropout="uniform", preserved_tokens=4)
    u = torch.full((1, 5, 12), 0.5, dtype=torch.float64)
    # block 0: candidates d < min(8, 6) = 6; the 4 smallest among them: d = 5, 0, 3, 2 (d = 6, 7 are not candidates)
    u[0, 0] = torch.tensor([0.2, 0.9, 0.4, 0.3, 0.8, 0.1, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    window = FixedUniforms(config, u)
    state = small_state(((1, 2),))
    w = window.dlm_window(state)
    assert [c for c in range(14) if w.visible[0, c]] == [0, 1, 2, 3, 4, 5, 6, 8, 9, 11]
    commit(state, range(2, 6))
    w = window.dlm_window(state)  # block 1: L = 4 <= 4 preserved: the whole suffix
    assert w.visible[0].tolist() == [True] * 14


def test_gaussian_keep_frequencies_follow_the_density():
    """400 rows x 6 blocks of real per-row draws; each distance's keep frequency lies within 0.05 of p(d) (more than
    5 standard deviations of a frequency over 2400 draws, sqrt(0.25 / 2400) = 0.0102)."""
    config = DPadConfig(size=8, suffix_window=16, sigma=4.0, scale=2.0)
    state = decode_state([[1, 2]] * 400, 32, mask=MASK, pad=0, eos=[98], fill=98, seeds=list(range(400)))
    keep = DPadWindow(config, trim=True).keep_table(state).keep  # [400, 6, 32]
    frequency = keep.double().mean((0, 1))
    expected = torch.tensor([2 * phi(4 * d / 15) if d < 16 else 0.0 for d in range(32)], dtype=torch.float64)
    assert (frequency - expected.clamp(max=1)).abs().max() < 0.05
    assert not keep[..., 16:].any()
    assert frequency[0] > 0.7 and frequency[12] < 0.1  # the decay with distance


def test_uniform_keeps_exactly_the_preserved_number_uniformly():
    """Block 0 of a 32-column generation in blocks of 8: suffix 24, window 12, 3 kept: every candidate distance is
    kept with frequency 3 / 12 = 0.25 (within 0.05 over 1000 rows: > 5 standard deviations, sqrt(0.1875/1000) =
    0.0137)."""
    config = DPadConfig(size=8, suffix_window=12, dropout="uniform", preserved_tokens=3)
    state = decode_state([[1, 2]] * 1000, 32, mask=MASK, pad=0, eos=[98], fill=98, seeds=list(range(1000)))
    keep = DPadWindow(config, trim=True).keep_table(state).keep
    assert keep[:, :3].sum(-1).eq(3).all()  # blocks 0-2 (suffix 24, 16, 8 > 3)
    assert keep[:, 3].sum(-1).eq(0).all()  # the last block has no suffix
    frequency = keep[:, 0].double().mean(0)
    assert (frequency[:12] - 0.25).abs().max() < 0.05 and not keep[:, :3, 12:].any()


def test_a_row_draws_the_same_kept_sets_alone_and_in_a_batch():
    config = DPadConfig(size=4, suffix_window=8)
    batch = decode_state([[1], [2, 3, 4], [5, 6]], 16, mask=MASK, pad=0, eos=[98], fill=98, seeds=[5, 6, 7])
    alone = decode_state([[2, 3, 4]], 16, mask=MASK, pad=0, eos=[98], fill=98, seeds=[6])
    window = DPadWindow(config, trim=True)
    assert torch.equal(window.keep_table(batch).keep[1], window.keep_table(alone).keep[0])


# --- decoding ------------------------------------------------------------------------------------------------------

MIXED = [
    "sort 4 1 7 9 3",
    "hi",
    "What is 12 + 30?",
    "a",
    "reverse the word stone please",
    "x y z",
    "count 1 2 3",
    "ok",
    "Name three fruits",
    "b c",
    "longer prompt with several words in it",
    "7 * 8",
    "q",
    "abc abc",
    "zz",
    "the end",
]


@pytest.mark.parametrize("cache", ["none", "dual"])
def test_batch_16_with_mixed_prompt_lengths_decodes_each_row_as_alone(cache):
    overrides = [f"decoder.cache={cache}"]
    batched = Decoder.from_config(PRESET, [*overrides, "generation.batch_size=16"]).generate(MIXED)
    single = Decoder.from_config(PRESET, [*overrides, "generation.batch_size=1"])
    for index in (0, 1, 4, 10):
        # prompt i draws from seed generation.seed + i: give the row alone its seed in the batch
        assert single.generate([MIXED[index]], seeds=[index]).token_ids[0] == batched.token_ids[index], MIXED[index]


def test_the_preset_is_a_no_op_on_a_block_causal_model_with_whole_blocks():
    """``embedded:block`` has blocks of 8, the preset's size: every suffix mask lies in a later model block, which the
    block's queries cannot see anyway, so DPad decodes as ``blocks(8)``."""
    prompts = MIXED[:6]
    dpad = Decoder.from_config(PRESET, ["model.dllm.path=embedded:block"]).generate(prompts)
    plain = Decoder.from_config(
        PRESET, ["model.dllm.path=embedded:block", "decoder.window=blocks", "decoder.window.size=8"]
    ).generate(prompts)
    assert dpad.token_ids == plain.token_ids


def test_a_block_straddling_the_model_blocks_is_refused():
    with pytest.raises(
        ConfigError,
        match=r"decoder\.window\.size.*12 neither divides nor is a multiple.*block "
        r"size 8",
    ):
        Decoder.from_config(PRESET, ["model.dllm.path=embedded:block", "decoder.window.size=12"])


@pytest.mark.parametrize(
    "override, key",
    [
        ("decoder.window.dropout=bernoulli", "dropout"),
        ("decoder.window.suffix_window=0", "suffix_window"),
        ("decoder.window.scale=0", "scale"),
        ("decoder.window.spacing=linear", "spacing"),
    ],
)
def test_bad_knobs_are_refused_naming_the_key(override, key):
    with pytest.raises(ConfigError, match=key):
        Decoder.from_config(PRESET, [override])


# --- the official code ---------------------------------------------------------------------------------------------

CACHES = {"dpad.generate": "none", "dpad.generate_with_prefix_cache": "prefix", "dpad.generate_with_dual_cache": "dual"}


def equivalent(decoder: str, a: dict) -> list[str]:
    """The overrides under which the project decodes as the official ``decoder`` called with arguments ``a``."""
    blocks = a["gen_length"] // a["block_length"]
    window = [f"decoder.window.dropout={a['dropout']}", f"decoder.window.suffix_window={a['window']}"]
    window += (
        [f"decoder.window.sigma={a['sigma']}", f"decoder.window.scale={a['scale']}"]
        if a["dropout"] == "gaussian"
        else [f"decoder.window.preserved_tokens={a['preserved_tokens']}"]
    )
    verification = (
        ["decoder.verification=threshold", f"decoder.verification.threshold={a['threshold']}"]
        if a["threshold"] is not None
        else [
            "decoder.verification=topk",
            "decoder.verification.score=confidence",
            f"decoder.verification.steps_per_block={a['steps'] // blocks}",
        ]
    )
    return [
        f"model.dllm.path={REFERENCE / 'llada-tiny'}",
        f"generation.max_new_tokens={a['gen_length']}",
        "decoder.window=dpad",
        f"decoder.window.size={a['block_length']}",
        *window,
        "decoder.proposal=greedy",
        f"decoder.cache={CACHES[decoder]}",
        *verification,
        "generation.stop_at_eos=false",
    ]


GROUPS = official_settings(OFFICIAL["cases"], ignored=("mask_id", "eos_id", "temperature"))


def recorded_keep_table(cases: list[dict]):
    """A ``DPadWindow.keep_table`` giving each row the kept sets the official code drew for its prompt."""
    by_prompt = {tuple(OFFICIAL["prompt_ids"]["llada"][case["prompt"]]): case["kept"] for case in cases}

    def keep_table(self, state):
        generated = state.width - state.gen_start
        keep = torch.zeros(state.batch_size, generated // self.config.size + 2, generated, dtype=torch.bool)
        for row in range(state.batch_size):
            prompt = state.canvas[row, : state.gen_start][state.attention_mask[row, : state.gen_start]].tolist()
            for block, distances in enumerate(by_prompt[tuple(prompt)]):
                keep[row, block, distances] = True
        return DPadMemory(keep=keep, first_block=torch.zeros(state.batch_size, dtype=torch.long))

    return keep_table


def test_every_recorded_case_is_compared_and_the_dropout_drops():
    assert len(OFFICIAL["cases"]) == 35 and len(GROUPS) == 7
    assert OFFICIAL["commit"].startswith("461b36e")
    for case in OFFICIAL["cases"]:  # suffix lengths 24, 16, 8, 0: every case drops some of them
        assert [len(k) for k in case["kept"]][3] == 0
        assert sum(len(k) for k in case["kept"]) < 48


@pytest.mark.parametrize("name", sorted(GROUPS))
def test_the_official_decoder_is_matched_token_for_token(name, monkeypatch):
    cases = GROUPS[name]
    if cases[0]["random"]:
        monkeypatch.setattr(DPadWindow, "keep_table", recorded_keep_table(cases))
    stats_per_row = assert_official_tokens(
        equivalent(cases[0]["decoder"], cases[0]["arguments"]), cases, OFFICIAL["prompts"]
    )
    for case, stats in zip(cases, stats_per_row, strict=True):
        assert stats.nfe == case["nfe"], f"prompt {case['prompt']}"


def test_the_deterministic_window_changes_the_tokens_on_llada_tiny():
    """The rule fires: the window of 8 suffix masks gives other tokens than seeing the whole suffix."""
    name = next(n for n in GROUPS if n.startswith("dpad.generate{") and '"window": 8' in n)
    cases = GROUPS[name]
    overrides = [
        o for o in equivalent(cases[0]["decoder"], cases[0]["arguments"]) if not o.startswith("decoder.window")
    ]
    canvas = FinalCanvas()
    Decoder.from_config(
        {},
        [*overrides, "decoder.window=blocks", "decoder.window.size=8", "generation.batch_size=16"],
        observers=[canvas],
    ).generate([OFFICIAL["prompts"][case["prompt"]] for case in cases])
    assert sum(row != case["generated"] for row, case in zip(canvas.rows, cases)) >= 1
