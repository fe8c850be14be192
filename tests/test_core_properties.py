"""Property tests of the denoising core: progress, immutability, termination, schedules, invariance, sampling."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from dlm_decode.masks import bidirectional_mask, position_ids_from_mask
from dlm_decode.ops import Scorer
from dlm_decode.state import ModelInputs
from dlm_decode.testing.hypothesis_strategies import prompts, proposals, verifications, windows
from dlm_decode.testing.toy import ToyDiffusionLM

from helpers import PROMPTS, StepRecorder, assert_logits_close, toy_decoder

prompts_st = prompts()
windows_st, proposals_st, verifications_st = windows, proposals, verifications


@given(
    prompts=prompts_st,
    window=windows_st,
    proposal=proposals_st,
    verification=verifications_st,
    max_new=st.integers(1, 14),
    eos_bias=st.sampled_from([float("-inf"), 0.0, 2.0]),
    batch=st.integers(1, 4),
)
def test_every_step_progresses_prompt_is_immutable_and_nothing_stays_masked(
    prompts, window, proposal, verification, max_new, eos_bias, batch
):
    recorder = StepRecorder()
    decoder = toy_decoder(
        *window,
        *proposal,
        *verification,
        f"generation.max_new_tokens={max_new}",
        f"generation.batch_size={batch}",
        model=ToyDiffusionLM(eos_bias=eos_bias),
        observers=[recorder],
    )
    out = decoder.generate(prompts)
    assert len(recorder.runs) == math.ceil(len(prompts) / batch)
    finals = []
    for run in recorder.runs:
        start = run.gen_start
        for step in run.steps:
            assert bool((step.commit.sum(-1)[~step.finished_before] >= 1).all()), "an unfinished row stalled"
            assert torch.equal(step.canvas[:, :start], run.initial[:, :start]), "a prompt or pad token changed"
        last = run.steps[-1]
        assert not bool(last.masked.any()), "a mask survived decoding"
        assert not bool((last.canvas[:, start:] == ToyDiffusionLM.mask_token_id).any())
        finals += [row[start:].tolist() for row in last.canvas]
    for generated, ids, stats in zip(finals, out.token_ids, out.stats):
        assert generated[: len(ids)] == ids
        assert all(t == ToyDiffusionLM.fill_token_id for t in generated[len(ids) :]), "tail after EOS not filled"
        assert stats.generated_tokens == len(ids) and stats.nfe == len(stats.commits_per_step) >= 1


def llada_schedule(masks: int, steps: int) -> list[int]:
    """LLaDA's get_num_transfer_tokens for one row: the remainder goes to the first steps."""
    return [masks // steps + (1 if j < masks % steps else 0) for j in range(steps)]


@given(
    prompts=prompts_st,
    block=st.integers(1, 8),
    max_new=st.integers(1, 20),
    rule=st.one_of(
        st.integers(1, 5).map(lambda k: ("tokens_per_step", k)), st.integers(1, 6).map(lambda s: ("steps_per_block", s))
    ),
)
def test_topk_commits_follow_the_llada_schedule_per_row(prompts, block, max_new, rule):
    key, value = rule
    decoder = toy_decoder(
        "decoder.window=blocks",
        f"decoder.window.size={block}",
        f"decoder.verification.{key}={value}",
        f"generation.max_new_tokens={max_new}",
        model=ToyDiffusionLM(eos_bias=float("-inf")),
    )
    out = decoder.generate(prompts)
    expected = []
    for first in range(0, max_new, block):
        masks = min(block, max_new - first)
        steps = math.ceil(masks / value) if key == "tokens_per_step" else value
        expected += [k for k in llada_schedule(masks, steps) if k > 0]
    for stats in out.stats:
        assert stats.commits_per_step == expected


def test_topk_single_block_counts_match_llada_with_steps_not_dividing_masks():
    decoder = toy_decoder(
        "decoder.verification.steps_per_block=3",
        "generation.max_new_tokens=10",
        model=ToyDiffusionLM(eos_bias=float("-inf")),
    )
    assert decoder.generate(["abc", "a"]).stats[0].commits_per_step == [4, 3, 3]


def tiny_forward_logits(model, rows: list[list[int]], width: int) -> torch.Tensor:
    canvas = torch.zeros(len(rows), width, dtype=torch.long)
    attention = torch.zeros(len(rows), width, dtype=torch.bool)
    for i, ids in enumerate(rows):
        canvas[i, width - len(ids) :] = torch.tensor(ids)
        attention[i, width - len(ids) :] = True
    inputs = ModelInputs(canvas, position_ids_from_mask(attention), bidirectional_mask(attention), 0, width)
    return model.forward(inputs)


#: Relative logit tolerance between a row decoded alone and the same row left-padded in a batch (fp32 CPU SDPA).
BATCH_LOGIT_RTOL = 1e-4


@given(lengths=st.lists(st.integers(1, 12), min_size=2, max_size=5), seed=st.integers(0, 1000))
def test_padding_does_not_change_a_rows_logits_beyond_tolerance(make_decoder, lengths, seed):
    decoder = make_decoder()
    generator = torch.Generator().manual_seed(seed)
    rows = [torch.randint(4, 100, (n,), generator=generator).tolist() for n in lengths]
    width = max(lengths)
    batch = tiny_forward_logits(decoder.dllm, rows, width)
    for i, ids in enumerate(rows):
        alone = tiny_forward_logits(decoder.dllm, [ids], len(ids))[0]
        assert_logits_close(batch[i, width - len(ids) :], alone, rtol=BATCH_LOGIT_RTOL)


@pytest.mark.parametrize(
    "overrides",
    [
        ["decoder.window=blocks", "decoder.window.size=4"],
        ["decoder.verification.tokens_per_step=3"],
        ["decoder.verification=left_to_right", "decoder.verification.k=2"],
        ["decoder.verification.score=random", "decoder.verification.tokens_per_step=2"],
    ],
)
def test_batch_invariance_at_temperature_zero(make_decoder, overrides):
    """A row's tokens do not depend on the other rows (random orders draw from the row's own generator, seeded
    per prompt). Near-ties (top-2 gap within BATCH_LOGIT_RTOL) could flip legitimately; the fixed prompts and
    model here have none, so tokens must match exactly."""
    decoder = make_decoder(*overrides, "generation.max_new_tokens=12")
    seeds = list(range(len(PROMPTS)))
    together = decoder.generate(PROMPTS, batch_size=len(PROMPTS), seeds=seeds).token_ids
    alone = [decoder.generate([p], batch_size=1, seeds=[s]).token_ids[0] for p, s in zip(PROMPTS, seeds)]
    assert together == alone


@given(prompts=prompts_st, seed=st.integers(0, 10_000), temperature=st.floats(0.5, 2.0))
def test_sampling_is_seed_deterministic_and_independent_of_batch_composition(prompts, seed, temperature):
    overrides = [
        "decoder.proposal=sample",
        f"decoder.proposal.temperature={temperature}",
        f"generation.seed={seed}",
        "generation.max_new_tokens=8",
    ]
    decoder = toy_decoder(*overrides, model=ToyDiffusionLM(sharpness=1.0))
    first = decoder.generate(prompts).token_ids
    assert decoder.generate(prompts).token_ids == first
    seeds = [seed + i for i in range(len(prompts))]
    alone = [decoder.generate([p], seeds=[s]).token_ids[0] for p, s in zip(prompts, seeds)]
    assert alone == first


def test_different_seeds_give_different_samples():
    overrides = [
        "decoder.proposal=sample",
        "generation.max_new_tokens=16",
        "decoder.window=blocks",
        "decoder.window.size=4",
    ]
    model = ToyDiffusionLM(sharpness=0.5, eos_bias=float("-inf"))
    outputs = {
        tuple(toy_decoder(*overrides, f"generation.seed={s}", model=model).generate(["abc"]).token_ids[0])
        for s in range(6)
    }
    assert len(outputs) > 1


#: Samples per distribution; the frequency of each token must lie within 5 standard errors (+1e-3) of softmax.
GUMBEL_SAMPLES = 100_000


@given(
    logits=st.lists(st.floats(-4, 4), min_size=2, max_size=7),
    temperature=st.floats(0.3, 2.0),
    seed=st.integers(0, 2**31),
)
def test_gumbel_max_frequencies_match_tempered_softmax(logits, temperature, seed):
    scorer = Scorer()
    row = torch.tensor(logits, dtype=torch.float32)
    gumbel = (
        -torch.empty(GUMBEL_SAMPLES, len(logits), dtype=torch.float64)
        .exponential_(generator=torch.Generator().manual_seed(seed))
        .log()
    )
    tokens = scorer.gumbel_argmax(row.expand(GUMBEL_SAMPLES, -1), gumbel, temperature)
    freq = torch.bincount(tokens, minlength=len(logits)).double() / GUMBEL_SAMPLES
    target = torch.softmax(row.double() / temperature, -1)
    tolerance = 5 * (target * (1 - target) / GUMBEL_SAMPLES).sqrt() + 1e-3
    assert bool(((freq - target).abs() <= tolerance).all()), (freq, target)


def test_sample_proposal_matches_softmax_and_respects_top_k():
    """Through the real proposal plugin: frequencies of the first committed token over many seeds."""
    model = ToyDiffusionLM(vocab_size=8, sharpness=1.0, eos_bias=float("-inf"))
    decoder = toy_decoder(
        "decoder.proposal=sample",
        "decoder.proposal.temperature=1.0",
        "decoder.proposal.top_k=3",
        "decoder.verification=left_to_right",
        "generation.max_new_tokens=1",
        model=model,
    )
    n = 4000
    out = decoder.generate(["ab"] * n, seeds=list(range(n)), batch_size=n)
    tokens = torch.tensor([ids[0] for ids in out.token_ids])
    state_ids = model.encode(["ab"])[0]
    width = len(state_ids) + 1
    canvas = torch.tensor([state_ids + [model.mask_token_id]])
    attention = torch.ones(1, width, dtype=torch.bool)
    logits = model.forward(
        ModelInputs(canvas, position_ids_from_mask(attention), bidirectional_mask(attention), 0, width)
    )[0, -1]
    logits[model.mask_token_id] = float("-inf")
    top3 = logits.topk(3).indices
    assert set(tokens.unique().tolist()) <= set(top3.tolist())
    kept = torch.full_like(logits, float("-inf"))
    kept[top3] = logits[top3]
    target = torch.softmax(kept.double(), -1)
    freq = torch.bincount(tokens, minlength=model.vocab_size).double() / n
    assert bool(((freq - target).abs() <= 5 * (target * (1 - target) / n).sqrt() + 1e-3).all()), (freq, target)


def test_one_decoder_decodes_batches_of_different_layouts_like_fresh_decoders():
    """The block window keeps its tables between batches; a batch of another layout must not reuse them."""
    batches = [["ab"], ["abcdef", "a"], ["ab"], ["abcdef", "a"], ["xyz"]]
    overrides = ("decoder.window=blocks", "decoder.window.size=3", "generation.max_new_tokens=7")
    reused = toy_decoder(*overrides)
    for batch in batches:
        fresh = toy_decoder(*overrides).generate(batch)
        again = reused.generate(batch)
        assert again.token_ids == fresh.token_ids
        assert [s.commits_per_step for s in again.stats] == [s.commits_per_step for s in fresh.stats]


@given(
    prompts=prompts_st,
    window=windows_st,
    verification=verifications_st,
    block=st.integers(1, 6),
    anchor=st.sampled_from(["generation", "position"]),
    head_first=st.booleans(),
    max_new=st.integers(1, 14),
    batch=st.integers(1, 4),
)
def test_a_block_causal_model_is_decoded_one_model_block_at_a_time(
    prompts, window, verification, block, anchor, head_first, max_new, batch
):
    """Whatever the window and verification: a blocks window that would straddle the model's blocks is refused;
    otherwise every commit lies in its row's current model block (the one holding the row's first mask; block ids
    recomputed here from positions), a block's first column is committed alone when ``head_first``, and decoding
    ends with no mask left."""
    from dlm_decode.errors import ConfigError
    from dlm_decode.masks import AttentionPattern

    model = ToyDiffusionLM(attention=AttentionPattern(block, anchor, head_first=head_first))
    size = int(window[1].split("=")[1]) if window[0] == "decoder.window=blocks" else None
    overrides = [*window, *verification, f"generation.max_new_tokens={max_new}", f"generation.batch_size={batch}"]
    if size is not None and size % block and block % size:
        with pytest.raises(ConfigError, match="decoder.window.size"):
            toy_decoder(*overrides, model=model)
        return
    recorder = StepRecorder()
    toy_decoder(*overrides, model=model, observers=[recorder]).generate(prompts)
    for run in recorder.runs:
        real = run.initial != ToyDiffusionLM.pad_token_id
        columns = torch.arange(run.initial.shape[1])
        coordinate = (real.long().cumsum(-1) - 1) if anchor == "position" else (columns - run.gen_start).expand_as(real)
        ids = torch.div(coordinate, block, rounding_mode="floor")
        masked = run.initial == ToyDiffusionLM.mask_token_id
        for step in run.steps:
            for row in (~step.finished_before).nonzero().flatten().tolist():
                first = int(masked[row].int().argmax())
                current = ids[row] == ids[row, first]
                committed = step.commit[row]
                assert bool((committed <= current).all()), "a commit left the current model block"
                head = int(current.int().argmax())
                if head_first and bool(masked[row, head]):
                    assert committed.nonzero().flatten().tolist() == [head], "the block head was not decided alone"
            masked = step.masked
        assert not bool(run.steps[-1].masked.any())
