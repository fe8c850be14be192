"""Block-causal dLLMs: the attention pattern as a model property, masks built from it, every step kept inside a
row's current model block, window alignment, and the exact prefix cache on the embedded block model."""

from __future__ import annotations

import pytest
import torch

from dlm_decode import load_config
from dlm_decode.config.schema import ModelSpec
from dlm_decode.decoder import Decoder
from dlm_decode.errors import ConfigError, ModelError
from dlm_decode.eval.tasks import TASKS, get_task
from dlm_decode.masks import BIDIRECTIONAL, AttentionPattern, bidirectional_mask, block_mask
from dlm_decode.models.families import FAMILIES, attention_pattern
from dlm_decode.models.hf import DiffusionLM
from dlm_decode.testing.toy import ToyDiffusionLM
from helpers import StepRecorder


# --- masks -------------------------------------------------------------------------------------------------


def test_block_mask_generalises_the_bidirectional_and_causal_masks():
    real = torch.tensor([[False, True, True, True, True], [True, True, True, True, True]])
    assert torch.equal(block_mask(real, torch.zeros(5, dtype=torch.long)), bidirectional_mask(real))
    assert torch.equal(block_mask(real, torch.arange(5)), bidirectional_mask(real, causal=True))


def test_generation_anchored_blocks_make_the_prompt_one_block():
    """Canvas of 2 padding + 3 prompt columns (gen_start 5) and 6 generated columns, blocks of 4: query rows list
    the keys each column attends to, written out by hand."""
    real = torch.tensor([[False, False, True, True, True] + [True] * 6])
    pattern = AttentionPattern(block_size=4)
    assert pattern.blocks(real, 5).tolist() == [-1, -1, -1, -1, -1, 0, 0, 0, 0, 1, 1]
    mask = pattern.mask(real, 5)[0, 0]
    prompt, first, second = [2, 3, 4], [5, 6, 7, 8], [9, 10]
    assert not mask[2:, :2].any(), "no real query sees the padding"
    assert mask[3].nonzero().flatten().tolist() == prompt
    assert mask[6].nonzero().flatten().tolist() == prompt + first
    assert mask[10].nonzero().flatten().tolist() == prompt + first + second


def test_position_anchored_blocks_follow_each_rows_positions():
    """SDAR's blocks start at position 0: a left-padded row's boundaries move with its padding, and the first
    generated block holds the prompt's tail."""
    real = torch.tensor([[True] * 8, [False, False] + [True] * 6])
    pattern = AttentionPattern(block_size=4, anchor="position")
    assert pattern.blocks(real, 5).tolist() == [[0, 0, 0, 0, 1, 1, 1, 1], [-1, -1, 0, 0, 0, 0, 1, 1]]
    mask = pattern.mask(real, 5)[:, 0]
    assert mask[1, 3].nonzero().flatten().tolist() == [2, 3, 4, 5]
    assert mask[1, 6].nonzero().flatten().tolist() == [2, 3, 4, 5, 6, 7]


# --- the pattern as a model property -----------------------------------------------------------------------


def test_the_pattern_is_read_from_config_json_and_can_be_overridden():
    generic = {"attention_pattern": "block_causal", "diffusion_block_size": 8}
    bidirectional = FAMILIES["bidirectional"]
    assert attention_pattern(bidirectional, generic) == AttentionPattern(8, "generation")
    assert attention_pattern(bidirectional, {}) == BIDIRECTIONAL
    assert attention_pattern(bidirectional, generic, attention="bidirectional") == BIDIRECTIONAL
    assert attention_pattern(bidirectional, {}, attention="block_causal", block_size=4) == AttentionPattern(4)
    assert attention_pattern(FAMILIES["sdar"], {"block_size": 4}) == AttentionPattern(4, "position")
    with pytest.raises(ModelError, match="(?s)block size is unknown.*fix: set model.dllm.block_size"):
        attention_pattern(bidirectional, {}, attention="block_causal")
    with pytest.raises(ModelError, match="attention_pattern: 'sliding'.*fix: set model.dllm.attention"):
        attention_pattern(bidirectional, {"attention_pattern": "sliding"})
    with pytest.raises(ModelError, match="(?s)block_size is 4, but the model is bidirectional.*fix"):
        attention_pattern(bidirectional, {}, block_size=4)
    with pytest.raises(ModelError, match="(?s)shifted.*anchored at position 0 only.*diffusion_block_anchor"):
        attention_pattern(FAMILIES["dream"], generic)


def test_the_embedded_block_model_declares_its_pattern():
    dllm = DiffusionLM.from_spec(ModelSpec(path="embedded:block"))
    assert dllm.attention == AttentionPattern(8, "generation")
    assert DiffusionLM.from_spec(ModelSpec(path="embedded:dllm")).attention == BIDIRECTIONAL


# --- the core keeps every step inside the model's block ------------------------------------------------------


class InputRecorder:
    """Wraps a dLLM and records every forward's inputs."""

    def __init__(self, dllm):
        self.dllm, self.inputs = dllm, []

    def __getattr__(self, name):
        return getattr(self.dllm, name)

    def forward(self, inputs, cache=None):
        self.inputs.append(inputs)
        return self.dllm.forward(inputs, cache)


def block_toy(anchor: str = "generation") -> ToyDiffusionLM:
    return ToyDiffusionLM(vocab_size=24, sharpness=1.0, attention=AttentionPattern(4, anchor))


PROMPTS = ["sort 3 1 2", "hi", "reverse abcdef", "7+5=", "a"]


@pytest.mark.parametrize("anchor", ["generation", "position"])
@pytest.mark.parametrize("window", ["full", "blocks", "lookahead"])
def test_commits_stay_in_the_current_model_block_and_no_forward_covers_later_columns(anchor, window):
    """Whatever the window, a step commits only inside each row's current model block (the one holding its first
    mask), and the forward's input ends at the batch's last current block end."""
    model, recorder = InputRecorder(block_toy(anchor)), StepRecorder()
    overrides = [f"decoder.window={window}", "decoder.verification=threshold", "decoder.verification.threshold=0.2",
                 "generation.max_new_tokens=12", "generation.stop_at_eos=false"]
    if window == "blocks":
        overrides.append("decoder.window.size=8")
    Decoder(load_config({}, overrides), dllm=model, observers=[recorder]).generate(PROMPTS)
    run = recorder.runs[0]
    pattern = model.attention
    real = run.initial != model.pad_token_id
    blocks = pattern.blocks(real, run.gen_start).expand_as(run.initial)
    masked = run.initial == model.mask_token_id
    parallel = 0
    for step, inputs in zip(run.steps, model.inputs, strict=True):
        first = masked.int().argmax(-1, keepdim=True)  # [B, 1] first mask
        current = blocks.gather(1, first)
        live = ~step.finished_before
        assert bool((step.commit[live] <= (blocks[live] == current[live])).all()), "a commit left the model block"
        ends = [int((blocks[row] <= current[row]).nonzero().max()) + 1 for row in range(len(PROMPTS)) if live[row]]
        assert inputs.end == max(ends), "the forward does not end at the last current block"
        parallel += int(step.commit.sum(-1).max() > 1)
        masked = step.masked
    assert parallel, "no step committed in parallel: the block limit went untested"


def test_a_block_causal_batch_decodes_each_row_as_alone():
    config = load_config({}, ["decoder.window=blocks", "decoder.window.size=4", "decoder.verification=threshold",
                              "decoder.verification.threshold=0.2", "generation.max_new_tokens=12"])
    decoder = Decoder(config, dllm=block_toy("position"))
    together = decoder.generate(PROMPTS, batch_size=len(PROMPTS))
    assert together.token_ids == [decoder.generate([p], batch_size=1).token_ids[0] for p in PROMPTS]


@pytest.mark.parametrize("size, accepted", [(2, True), (8, True), (16, True), (3, False), (6, False)])
def test_a_block_window_must_nest_with_the_model_blocks(size, accepted):
    config = load_config({}, ["decoder.window=blocks", f"decoder.window.size={size}"])
    model = ToyDiffusionLM(attention=AttentionPattern(8))
    if accepted:
        Decoder(config, dllm=model)
        return
    with pytest.raises(ConfigError, match=rf"(?s)decoder.window.size.*{size} neither divides nor is a multiple.*"
                                          r"block size 8.*fix: set decoder.window.size to a divisor or a multiple"):
        Decoder(config, dllm=model)


# --- exact caches on the embedded block model ----------------------------------------------------------------


@pytest.fixture(scope="module")
def block_model():
    return DiffusionLM.from_spec(ModelSpec(path="embedded:block"))


def task_prompts(n_per_task: int) -> list[str]:
    return [example.prompt for name in TASKS for example in get_task(name).generate("test", n_per_task, seed=0)]


@pytest.mark.parametrize("stop_at_eos", [True, False])
def test_prefix_decodes_exactly_like_none_at_batch_16(block_model, stop_at_eos):
    """Batch 16, prompts of 6 to 44 characters: the exact prefix cache gives the tokens of no cache, with fewer
    columns per forward."""
    prompts = task_prompts(3)[:16]
    assert len({len(p) for p in prompts}) > 5, "prompt lengths too alike"
    runs = {}
    for cache in ("none", "prefix"):
        model = InputRecorder(block_model)
        overrides = ["decoder.window=blocks", "decoder.window.size=8", "decoder.verification=threshold",
                     f"decoder.cache={cache}", "generation.max_new_tokens=64", "generation.batch_size=16",
                     f"generation.stop_at_eos={str(stop_at_eos).lower()}"]
        out = Decoder(load_config({}, overrides), dllm=model).generate(prompts)
        runs[cache] = (out, sum(i.input_ids.numel() for i in model.inputs))
    (plain, plain_columns), (cached, cached_columns) = runs["none"], runs["prefix"]
    assert cached.token_ids == plain.token_ids
    assert [s.nfe for s in cached.stats] == [s.nfe for s in plain.stats]
    assert sum(any(s.commits_per_step[i] > 1 for i in range(len(s.commits_per_step))) for s in plain.stats) > 8
    assert cached_columns < plain_columns / 2


def test_dual_with_sub_blocks_is_an_approximation_that_says_so(block_model):
    """Sub-blocks of 4 in the model's blocks of 8: ``dual`` reuses keys/values of the model block's other
    (unfinished) sub-block, computed before its last commits, so it may differ from ``none``; its docs say so. It
    still decodes: every row finishes and most answers agree."""
    from dlm_decode.strategies import block_caches

    assert "approximation" in block_caches.__doc__ and "exact" in block_caches.__doc__
    prompts = task_prompts(2)
    outs = {cache: Decoder(load_config({}, ["decoder.window=blocks", "decoder.window.size=4",
                                            "decoder.verification=threshold", f"decoder.cache={cache}"]),
                           dllm=block_model).generate(prompts) for cache in ("none", "dual")}
    agree = sum(a == b for a, b in zip(outs["none"].token_ids, outs["dual"].token_ids))
    assert agree >= len(prompts) // 2


# --- the dry run reads the pattern --------------------------------------------------------------------------


def test_the_dry_run_reports_the_pattern_and_refuses_a_straddling_window():
    from dlm_decode.models.dry_run import dry_run
    from helpers import REFERENCE

    sdar = [f"model.dllm.path={REFERENCE / 'sdar-tiny'}", "decoder.window=blocks"]
    report = dry_run({}, [*sdar, "decoder.window.size=2"])
    assert report.ok and report.facts["attention"] == "block_causal(block_size=4, anchor=position)"
    report = dry_run({}, [*sdar, "decoder.window.size=6"])
    assert report.checks() == {"window"}
    assert "decoder.window.size" in report.format() and "block size 4" in report.format()
    report = dry_run({}, ["model.dllm.attention=block_causal"], prompt_budget=16)
    assert report.checks() == {"attention"}
    assert "model.dllm.block_size" in report.format()
