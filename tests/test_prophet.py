"""The ``prophet`` verification (early answer commit, arXiv 2508.19982): the gap and the phase thresholds on hand-built
logits, the commit of every reachable mask on exit, both base rules, the config, batch invariance and block-causal
decoding with the presets, and the official decoder (``tests/reference/official_prophet.json``, recorded by
``tests/reference/record_prophet.py``) token for token and forward for forward."""

from __future__ import annotations

import json

import pytest
import torch

from dlm_decode import ConfigError
from dlm_decode.decoder import Decoder
from dlm_decode.ops import Scorer
from dlm_decode.state import ForwardOutput, ModelInputs, Window
from dlm_decode.strategies.prophet import (
    Base,
    Progress,
    ProphetConfig,
    ProphetVerifier,
    logit_gap,
    phase_threshold,
    prophet_verifier,
)
from dlm_decode.strategies.proposals import TokenProposal

from helpers import (
    REFERENCE,
    TASK_BATCH,
    assert_batch_equals_one_by_one,
    assert_official_tokens,
    decode_state,
    llada_tiny_blocks,
    official_settings,
)

PRESET = "configs/decoders/prophet.yaml"
COMPOSED = "configs/decoders/prophet-threshold.yaml"
OFFICIAL = json.loads((REFERENCE / "official_prophet.json").read_text(encoding="utf-8"))
MASK, V = 9, 10


# --- the rule on hand-built logits ---------------------------------------------------------------------------


def test_the_gap_is_top1_minus_top2_logit():
    logits = torch.tensor([[3.0, 7.5, -1.0, 7.0], [0.0, -2.0, 4.0, 1.0]])
    torch.testing.assert_close(logit_gap(logits), torch.tensor([0.5, 3.0]), rtol=1e-6, atol=0.0)


def test_the_threshold_follows_the_phase():
    config = ProphetConfig()
    progress = torch.tensor([0.0, 0.32, 0.33, 0.5, 0.67, 1.0])
    expected = torch.tensor([7.5, 7.5, 5.0, 5.0, 2.5, 2.5])
    assert torch.equal(phase_threshold(progress, config), expected)


def one_step(
    config: ProphetConfig, logits: torch.Tensor, prompts: list[list[int]], gen: int, block: int, steps_done: int = 0
):
    """One verify call on a hand-built state: ``logits`` ``[B, N, V]`` for the whole canvas; the window is the
    current block of ``block`` columns, widened by the verifier's own window wrapper."""
    state = decode_state(prompts, gen, mask=MASK, pad=0, eos=[8], fill=0, stop_at_eos=False)
    verifier = ProphetVerifier(config)
    memory = verifier.memory(state)
    memory.steps = memory.steps + steps_done
    start = torch.full((len(prompts),), state.gen_start)
    inner = Window(
        eligible=state.masked & (state.columns < state.gen_start + block)[None],
        input_end=state.width,
        block_start=start,
        block_end=start + block,
    )
    wrapper = verifier.dlm_window(state)
    next(wrapper)
    with pytest.raises(StopIteration) as stop:
        wrapper.send(inner)
    window = stop.value.value
    inputs = ModelInputs(
        input_ids=state.canvas, position_ids=state.position_ids, attention_mask=None, start=0, end=state.width
    )
    forward = ForwardOutput(logits=logits, inputs=inputs)
    proposal = TokenProposal(0.0, scorer=Scorer()).dlm_propose(state, forward, window)
    return state, window, verifier.dlm_verify(state, forward, proposal, window)


def peaked(tokens: list[int], gaps: list[float]) -> torch.Tensor:
    """``[len, V]`` logits: ``gaps[i]`` at token ``tokens[i]``, 0 elsewhere (so the top-2 gap is ``gaps[i]``)."""
    logits = torch.zeros(len(tokens), V)
    logits[torch.arange(len(tokens)), torch.tensor(tokens)] = torch.tensor(gaps)
    return logits


def test_a_row_whose_answer_gap_reaches_the_threshold_commits_every_mask():
    # two rows, prompt of 2, 6 generated columns, blocks of 2; answer region: generated columns 2..3
    # row 0: answer gaps 8 and 6 (mean 7 >= late 2.5 at progress 1/6? no: the early phase needs 7.5 -> no exit)
    # row 1: answer gaps 9 and 7 (mean 8 >= 7.5 -> exit: all 6 masks)
    config = ProphetConfig(answer_start=2, answer_length=2, total_steps=6)
    logits = torch.zeros(2, 8, V)
    logits[0, 2:] = peaked([1, 2, 3, 4, 5, 6], [1.0, 2.0, 8.0, 6.0, 0.5, 0.5])
    logits[1, 2:] = peaked([6, 5, 4, 3, 2, 1], [1.0, 2.0, 9.0, 7.0, 0.5, 0.5])
    state, window, decision = one_step(config, logits, [[1, 2], [3, 4]], gen=6, block=2)
    assert window.eligible[:, 2:].all()  # widened to every mask the model sees
    # row 0 commits LLaDA's single most confident position of its block (column 3, gap 2 > 1)
    assert decision.commit[0].nonzero().flatten().tolist() == [3]
    assert decision.commit[1].nonzero().flatten().tolist() == [2, 3, 4, 5, 6, 7]
    assert decision.tokens[1, 2:].tolist() == [6, 5, 4, 3, 2, 1]
    assert state.row_stats["prophet.exits"].tolist() == [0, 1]
    assert state.row_stats["prophet.early_tokens"].tolist() == [0, 5]  # beyond the base rule's one token


def test_later_phases_need_smaller_gaps():
    # the same row 0 (mean gap 7) at its 3rd of 6 steps: progress 0.5, the middle phase needs 5.0 -> exit
    config = ProphetConfig(answer_start=2, answer_length=2, total_steps=6)
    logits = torch.zeros(1, 8, V)
    logits[0, 2:] = peaked([1, 2, 3, 4, 5, 6], [1.0, 2.0, 8.0, 6.0, 0.5, 0.5])
    _, _, decision = one_step(config, logits, [[1, 2]], gen=6, block=2, steps_done=2)
    assert decision.commit[0].sum() == 6


def test_the_region_is_cut_at_the_canvas_end_and_a_negative_start_counts_from_it():
    # answer_start -1, length 5: only the last column; gap 3.0 >= 2.5 in the late phase (progress 6/6)
    logits = torch.zeros(1, 8, V)
    logits[0, 2:] = peaked([1, 2, 3, 4, 5, 6], [9.0, 9.0, 9.0, 9.0, 9.0, 3.0])
    config = ProphetConfig(answer_start=-1, answer_length=5, total_steps=6)
    _, _, decision = one_step(config, logits, [[1, 2]], gen=6, block=2, steps_done=5)
    assert decision.commit[0].sum() == 6
    logits[0, 7, 6] = 2.0  # gap 2.0 < 2.5: no exit, one token
    _, _, decision = one_step(config, logits, [[1, 2]], gen=6, block=2, steps_done=5)
    assert decision.commit[0].sum() == 1


def test_the_threshold_base_commits_every_confident_position_until_the_exit():
    # base threshold 0.5: gaps 1.0 -> p = e/(e + 9) ~ 0.23, gap 3.0 -> e^3/(e^3 + 9) ~ 0.69; no exit (gap 1)
    config = ProphetConfig(
        base=Base.threshold, threshold=0.5, answer_start=0, answer_length=1, progress=Progress.decoded
    )
    logits = torch.zeros(1, 8, V)
    logits[0, 2:] = peaked([1, 2, 3, 4, 5, 6], [1.0, 3.0, 3.0, 3.0, 1.0, 1.0])
    _, _, decision = one_step(config, logits, [[1, 2]], gen=6, block=4)
    assert decision.commit[0].nonzero().flatten().tolist() == [3, 4, 5]
    # progress decoded: 0 decided -> early phase (7.5); a gap of 8 at the region exits
    logits[0, 2, 1] = 8.0
    _, _, decision = one_step(config, logits, [[1, 2]], gen=6, block=4)
    assert decision.commit[0].sum() == 6


def test_the_topk_schedule_gives_the_official_step_budget():
    verifier = ProphetVerifier(ProphetConfig(steps_per_block=8))
    state = decode_state([[1, 2]], 32, mask=MASK, pad=0, eos=[8], fill=0)
    window = Window(
        eligible=state.masked, input_end=state.width, block_start=torch.tensor([2]), block_end=torch.tensor([18])
    )
    assert verifier.schedule_steps(state, window).tolist() == [16]  # 2 blocks of 16, 8 steps each
    verifier = ProphetVerifier(ProphetConfig(tokens_per_step=3))
    assert verifier.schedule_steps(state, window).tolist() == [12]  # ceil(16 / 3) = 6 per block


# --- config --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "override, key",
    [
        ("decoder.verification.threshold=0.5", "threshold"),  # a threshold knob with base topk
        ("decoder.verification.answer_length=0", "answer_length"),
        ("decoder.verification.mid_until=0.2", "mid_until"),
        ("decoder.verification.total_steps=0", "total_steps"),
    ],
)
def test_invalid_parameters_name_their_key(override, key):
    with pytest.raises(ConfigError, match=f"`decoder.verification.{key}`"):
        Decoder.from_config({}, ["decoder.verification=prophet", override])


def test_an_adaptive_base_needs_a_step_budget_or_decoded_progress():
    with pytest.raises(ConfigError, match="(?s)`decoder.verification.total_steps`.*base threshold.*progress: decoded"):
        Decoder.from_config({}, ["decoder.verification=prophet", "decoder.verification.base=threshold"])
    with pytest.raises(ConfigError, match="`decoder.verification.steps_per_block`: is a knob of base topk"):
        Decoder.from_config(
            {},
            [
                "decoder.verification=prophet",
                "decoder.verification.base=threshold",
                "decoder.verification.progress=decoded",
                "decoder.verification.steps_per_block=4",
            ],
        )


def test_the_dual_cache_is_refused():
    with pytest.raises(
        ConfigError,
        match="(?s)`decoder.cache`.*dual cache recomputes only the current block.*"
        "fix: set decoder.cache to none or prefix",
    ):
        Decoder.from_config(PRESET, ["decoder.cache=dual"])


# --- presets on the embedded models ------------------------------------------------------------------------

BATCH = TASK_BATCH


#: Prophet's own thresholds (the presets scale them for the embedded dLLM), under which the early commit fires often.
OFFICIAL_THRESHOLDS = [
    "decoder.verification.early_threshold=7.5",
    "decoder.verification.mid_threshold=5.0",
    "decoder.verification.late_threshold=2.5",
]


@pytest.mark.parametrize("preset", [PRESET, COMPOSED])
def test_batch_of_16_equals_one_by_one(preset):
    together = assert_batch_equals_one_by_one(Decoder.from_config(preset, OFFICIAL_THRESHOLDS), BATCH)
    assert sum(s.extra["prophet.exits"] for s in together.stats) >= 8  # the early commit fires on most rows


def test_the_early_commit_saves_forwards_and_keeps_llada_s_answers():
    prompts = ["sort 4 1 7 9 3", "reverse hello", "sort 9 8 7 6 5 4"]
    prophet = Decoder.from_config(PRESET, OFFICIAL_THRESHOLDS).generate(prompts)
    llada = Decoder.from_config("configs/decoders/llada.yaml", []).generate(prompts)
    assert prophet.texts == llada.texts
    assert sum(s.nfe for s in prophet.stats) < sum(s.nfe for s in llada.stats)


def test_the_composition_without_exits_is_the_threshold_rule():
    never = [
        "decoder.verification.early_threshold=1e9",
        "decoder.verification.mid_threshold=1e9",
        "decoder.verification.late_threshold=1e9",
    ]
    composed = Decoder.from_config(COMPOSED, never).generate(BATCH[:6])
    threshold = Decoder.from_config("configs/decoders/fast-dllm.yaml", ["decoder.cache=none"]).generate(BATCH[:6])
    assert composed.token_ids == threshold.token_ids
    assert [s.nfe for s in composed.stats] == [s.nfe for s in threshold.stats]
    fired = Decoder.from_config(COMPOSED, []).generate(BATCH[:6])
    assert sum(s.nfe for s in fired.stats) < sum(s.nfe for s in threshold.stats)


@pytest.mark.parametrize("preset", [PRESET, COMPOSED])
def test_the_presets_decode_a_block_causal_model(preset):
    out = Decoder.from_config(preset, ["model.dllm.path=embedded:block", *OFFICIAL_THRESHOLDS]).generate(BATCH[:4])
    assert all(ids for ids in out.token_ids)
    assert sum(s.extra["prophet.exits"] for s in out.stats) >= 1


# --- the official decoder ---------------------------------------------------------------------------------------


SETTINGS = list(official_settings(OFFICIAL["cases"]).values())


def equivalent(arguments: dict) -> list[str]:
    """The overrides under which the project decodes as the official ``generate`` with ``arguments``."""
    a = arguments
    thresholds = a["early_exit_thresholds"] or {"early": 7.5, "mid": 5.0, "late": 2.5}
    return [
        *llada_tiny_blocks(a["gen_length"], a["block_length"]),
        "decoder.verification=prophet",
        f"decoder.verification.steps_per_block={a['steps'] // (a['gen_length'] // a['block_length'])}",
        f"decoder.verification.answer_start={a['answer_offset']}",
        f"decoder.verification.early_threshold={thresholds['early']}",
        f"decoder.verification.mid_threshold={thresholds['mid']}",
        f"decoder.verification.late_threshold={thresholds['late']}",
    ]


def test_every_recorded_case_is_compared_and_the_early_commit_fires():
    assert len(OFFICIAL["cases"]) == 20 and len(SETTINGS) == 4
    assert sum(case["exit_info"]["early_exit_triggered"] for case in OFFICIAL["cases"]) == 17


@pytest.mark.parametrize(
    "cases",
    SETTINGS,
    ids=lambda cases: "-".join(str(cases[0]["arguments"][k]) for k in ("steps", "block_length", "answer_offset")),
)
def test_the_official_decoder_is_matched_token_for_token(cases):
    stats_per_row = assert_official_tokens(equivalent(cases[0]["arguments"]), cases, OFFICIAL["prompts"])
    for case, stats in zip(cases, stats_per_row, strict=True):
        assert stats.nfe == case["exit_info"]["actual_steps"], f"prompt {case['prompt']}"
        assert stats.extra["prophet.exits"] == case["exit_info"]["early_exit_triggered"]


def test_the_factory_names_the_cache_it_refuses():
    class Resolved:
        strategies = {"cache": ("dual", None)}

    class Context:
        resolved = Resolved()

    with pytest.raises(ConfigError, match="`decoder.cache`"):
        prophet_verifier(ProphetConfig(), Context())
