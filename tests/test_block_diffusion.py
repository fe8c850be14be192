"""Block-causal dLLMs: the attention pattern as a model property, masks built from it, every step kept inside a
row's current model block, window alignment, and the exact prefix cache on the embedded block model."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dlm_decode import load_config
from dlm_decode.config.family_table import FAMILIES
from dlm_decode.config.schema import ModelSpec
from dlm_decode.decoder import Decoder
from dlm_decode.errors import ConfigError, ModelError
from dlm_decode.eval.tasks import TASKS, get_task
from dlm_decode.hookspecs import hookimpl
from dlm_decode.masks import BIDIRECTIONAL, AttentionPattern, bidirectional_mask, block_mask
from dlm_decode.models.adapter import DiffusionLM
from dlm_decode.models.families import attention_pattern
from dlm_decode.state import ModelInputs
from dlm_decode.testing.toy import ToyDiffusionLM

from helpers import ForwardRecorder, ModelWrapper, StepRecorder

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
    with pytest.raises(
        ModelError,
        match="attention_pattern: 'sliding', which this version does not know\n  fix: set model.dllm.attention",
    ):
        attention_pattern(bidirectional, {"attention_pattern": "sliding"})
    with pytest.raises(ModelError, match="(?s)block_size is 4, but the model is bidirectional.*fix"):
        attention_pattern(bidirectional, {}, block_size=4)
    with pytest.raises(ModelError, match="(?s)shifted.*anchored at position 0 only.*diffusion_block_anchor"):
        attention_pattern(FAMILIES["dream"], generic)


def test_declared_anchors_and_the_fast_dllm_v2_family():
    declared = {"attention_pattern": "block_causal", "diffusion_block_size": 8}
    bidirectional = FAMILIES["bidirectional"]
    assert attention_pattern(bidirectional, {**declared, "diffusion_block_anchor": "position"}) == AttentionPattern(
        8, "position"
    )
    with pytest.raises(ModelError, match="diffusion_block_anchor: 'middle'\n  fix: use one of generation, position"):
        attention_pattern(bidirectional, {**declared, "diffusion_block_anchor": "middle"})
    with pytest.raises(ModelError, match="block size is unknown"):
        attention_pattern(bidirectional, {**declared, "diffusion_block_size": 0})
    assert attention_pattern(FAMILIES["fast_dllm_v2"], {"bd_size": 8}) == AttentionPattern(8, "position", True)


@pytest.mark.parametrize(
    "edit, match",
    [
        ({"num_experts": 128, "num_experts_per_tok": 8, "moe_intermediate_size": 768}, "mixture of experts"),
        ({"use_sliding_window": True}, "use_sliding_window=True"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "rope_scaling="),
    ],
)
def test_sdar_layouts_the_native_mapping_cannot_reproduce_are_refused(tmp_path, edit, match):
    from helpers import REFERENCE, edited_copy

    path = edited_copy(REFERENCE / "sdar-tiny", tmp_path / "sdar", config=edit)
    with pytest.raises(ModelError, match=f"(?s){match}.*fix"):
        DiffusionLM.from_spec(ModelSpec(path=str(path)))


def test_the_embedded_block_model_declares_its_pattern():
    dllm = DiffusionLM.from_spec(ModelSpec(path="embedded:block"))
    assert dllm.attention == AttentionPattern(8, "generation")
    assert DiffusionLM.from_spec(ModelSpec(path="embedded:dllm")).attention == BIDIRECTIONAL


# --- the core keeps every step inside the model's block ------------------------------------------------------


def block_toy(anchor: str = "generation") -> ToyDiffusionLM:
    return ToyDiffusionLM(vocab_size=24, sharpness=1.0, attention=AttentionPattern(4, anchor))


PROMPTS = ["sort 3 1 2", "hi", "reverse abcdef", "7+5=", "a"]


def block_ids(initial: torch.Tensor, gen_start: int, size: int, anchor: str) -> torch.Tensor:
    """``[B, N]`` block ids written out from positions (independently of the code under test): the position // size
    under anchor ``position``; ``(column - gen_start) // size`` under ``generation``, the prompt one block (-1)."""
    if anchor == "position":
        return torch.div((initial != ToyDiffusionLM.pad_token_id).long().cumsum(-1) - 1, size, rounding_mode="floor")
    offsets = (torch.arange(initial.shape[1]) - gen_start).expand_as(initial)
    return torch.where(offsets < 0, -1, torch.div(offsets, size, rounding_mode="floor"))


@pytest.mark.parametrize("stop_at_eos", [True, False])
@pytest.mark.parametrize("anchor", ["generation", "position"])
@pytest.mark.parametrize("window", ["full", "blocks", "lookahead"])
def test_commits_stay_in_the_current_model_block_and_no_forward_covers_later_columns(anchor, window, stop_at_eos):
    """Whatever the window, a step commits only inside each row's current model block (the one holding its first
    mask), and the forward's input ends at the batch's last current block end."""
    model, recorder = ForwardRecorder(block_toy(anchor)), StepRecorder()
    overrides = [
        f"decoder.window={window}",
        "decoder.verification=threshold",
        "decoder.verification.threshold=0.2",
        "generation.max_new_tokens=12",
        f"generation.stop_at_eos={str(stop_at_eos).lower()}",
    ]
    if window == "blocks":
        overrides.append("decoder.window.size=8")
    Decoder(load_config({}, overrides), dllm=model, observers=[recorder]).generate(PROMPTS)
    run = recorder.runs[0]
    blocks = block_ids(run.initial, run.gen_start, 4, anchor)
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


def test_sub_blocks_align_with_position_anchored_model_blocks():
    """Windows of 2 on a model with blocks of 4 from position 0: with threshold 0 a step commits exactly the masks
    of the row's current sub-block, which starts at an even position whatever the row's padding."""
    recorder = StepRecorder()
    Decoder(
        load_config(
            {},
            [
                "decoder.window=blocks",
                "decoder.window.size=2",
                "decoder.verification=threshold",
                "decoder.verification.threshold=0.0",
                "generation.max_new_tokens=12",
                "generation.stop_at_eos=false",
            ],
        ),
        dllm=block_toy("position"),
        observers=[recorder],
    ).generate(PROMPTS)
    run = recorder.runs[0]
    halves = block_ids(run.initial, run.gen_start, 2, "position")
    masked = run.initial == ToyDiffusionLM.mask_token_id
    odd_starts = 0
    for step in run.steps:
        for row in (~step.finished_before).nonzero().flatten().tolist():
            first = int(masked[row].int().argmax())
            expected = (halves[row] == halves[row, first]) & masked[row]
            assert step.commit[row].tolist() == expected.tolist(), f"row {row}"
            odd_starts += int(expected.sum()) == 1
        masked = step.masked
    assert odd_starts, "no prompt ended inside a sub-block: the alignment went untested"


def test_a_block_head_is_decided_alone_first():
    """``head_first``: with threshold 0 (which commits every eligible position) a step that starts a block commits
    its first column only, and the next step the rest of that block."""
    recorder = StepRecorder()
    model = ToyDiffusionLM(vocab_size=24, attention=AttentionPattern(4, "generation", head_first=True))
    Decoder(
        load_config(
            {},
            [
                "decoder.window=full",
                "decoder.verification=threshold",
                "decoder.verification.threshold=0.0",
                "generation.max_new_tokens=8",
                "generation.stop_at_eos=false",
            ],
        ),
        dllm=model,
        observers=[recorder],
    ).generate(["ab"])
    run = recorder.runs[0]
    commits = [step.commit[0].nonzero().flatten().tolist() for step in run.steps]
    g = run.gen_start
    assert commits == [[g], [g + 1, g + 2, g + 3], [g + 4], [g + 5, g + 6, g + 7]]


def test_a_block_causal_batch_decodes_each_row_as_alone():
    config = load_config(
        {},
        [
            "decoder.window=blocks",
            "decoder.window.size=4",
            "decoder.verification=threshold",
            "decoder.verification.threshold=0.2",
            "generation.max_new_tokens=12",
        ],
    )
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
    with pytest.raises(
        ConfigError,
        match=rf"(?s)decoder.window.size.*{size} neither divides nor is a multiple.*"
        r"block size 8.*fix: set decoder.window.size to a divisor or a multiple",
    ):
        Decoder(config, dllm=model)


# --- exact caches on the embedded block model ----------------------------------------------------------------


@pytest.fixture(scope="module")
def block_model():
    return DiffusionLM.from_spec(ModelSpec(path="embedded:block"))


def task_prompts(n_per_task: int) -> list[str]:
    return [example.prompt for name in TASKS for example in get_task(name).generate("test", n_per_task, seed=0)]


class ExactForward(ModelWrapper):
    """A dLLM wrapper and observer: at every forward through a cache, compares the logits of the masked columns of
    each unfinished row's current model block with those of a full forward without cache over the same canvas,
    and counts the steps where they differ beyond float reordering (``rtol`` 1e-4 of the logit scale). It reads
    the logits of every column (the head is not restricted to the columns the step reads)."""

    selects_outputs = False

    def __init__(self, dllm):
        super().__init__(dllm)
        self.state, self.cached, self.inexact, self.columns = None, 0, 0, 0

    @hookimpl
    def dlm_generation_start(self, state):
        self.state = state

    def forward(self, inputs, cache=None):
        logits = self.dllm.forward(inputs.reading_all(), cache)
        self.columns += inputs.input_ids.numel()
        if cache is not None:
            state, start, end = self.state, inputs.start, inputs.end
            full = self.dllm.forward(
                ModelInputs(
                    state.canvas[:, :end], state.position_ids[:, :end], state.full_attention[:, :, :end, :end], 0, end
                )
            )
            first, last = state.model_block()
            columns = state.columns[start:end]
            compared = (
                state.masked[:, start:end]
                & ~state.finished[:, None]
                & (columns >= first[:, None])
                & (columns < last[:, None])
            )
            got, want = logits[:, : end - start][compared], full[:, start:end][compared]
            scale = want.abs().max()
            self.cached += 1
            self.inexact += int(not torch.allclose(got, want, rtol=1e-4, atol=float(1e-4 * scale)))
        return logits


def cached_run(dllm, prompts, *overrides):
    checker = ExactForward(dllm)
    config = load_config(
        {},
        [
            "decoder.window=blocks",
            "decoder.verification=threshold",
            "generation.max_new_tokens=64",
            "generation.batch_size=16",
            *overrides,
        ],
    )
    return Decoder(config, dllm=checker, observers=[checker]).generate(prompts), checker


@pytest.mark.parametrize("stop_at_eos", [True, False])
def test_prefix_decodes_exactly_like_none_at_batch_16(block_model, stop_at_eos):
    """Batch 16, prompts of 6 to 44 characters: every forward of the exact prefix cache gives the logits of a full
    forward over the same canvas (so the tokens of no cache), with fewer columns."""
    prompts = task_prompts(3)[:16]
    assert len({len(p) for p in prompts}) > 5, "prompt lengths too alike"
    eos = f"generation.stop_at_eos={str(stop_at_eos).lower()}"
    plain, plain_run = cached_run(block_model, prompts, "decoder.window.size=8", "decoder.cache=none", eos)
    cached, cached_run_ = cached_run(block_model, prompts, "decoder.window.size=8", "decoder.cache=prefix", eos)
    assert cached_run_.cached > 5 and cached_run_.inexact == 0
    assert cached.token_ids == plain.token_ids
    assert [s.nfe for s in cached.stats] == [s.nfe for s in plain.stats]
    assert sum(max(s.commits_per_step) > 1 for s in plain.stats) > 8, "too few parallel steps"
    assert cached_run_.columns < plain_run.columns / 2


def test_dual_is_exact_with_the_model_blocks_and_an_approximation_with_sub_blocks(block_model):
    """With windows as large as the model's blocks ``dual`` reuses nothing unfinished: exact, the tokens of
    ``none``. With sub-blocks of 4 it reuses keys/values of the block's other sub-block computed at the sub-block's
    start: some forwards differ from a full one (the approximation its docs state), while ``prefix`` stays exact."""
    prompts = task_prompts(3)[:16]
    plain, _ = cached_run(block_model, prompts, "decoder.window.size=8", "decoder.cache=none")
    whole, whole_run = cached_run(block_model, prompts, "decoder.window.size=8", "decoder.cache=dual")
    assert whole_run.inexact == 0 and whole.token_ids == plain.token_ids
    _, sub_run = cached_run(block_model, prompts, "decoder.window.size=4", "decoder.cache=dual")
    _, prefix_run = cached_run(block_model, prompts, "decoder.window.size=4", "decoder.cache=prefix")
    assert sub_run.inexact > 0 and prefix_run.inexact == 0


@pytest.mark.parametrize("anchor", ["generation", "position"])
@pytest.mark.parametrize("window", ["full", "blocks"])
def test_wino_decodes_a_block_causal_model_inside_its_blocks(anchor, window):
    """WINO's shadow block and revocations follow the window cut to the model block: commits and revocations stay
    in the current model block, and a batch decodes each row as alone."""
    overrides = [
        f"decoder.window={window}",
        "decoder.verification=wino",
        "decoder.verification.draft_threshold=0.0",
        "decoder.verification.verify_threshold=0.99",
        "generation.max_new_tokens=16",
    ]
    if window == "blocks":
        overrides.append("decoder.window.size=16")
    recorder = StepRecorder()
    model = ToyDiffusionLM(12, sharpness=3.0, eos_bias=float("-inf"), attention=AttentionPattern(8, anchor))
    decoder = Decoder(load_config({}, overrides), dllm=model, observers=[recorder])
    together = decoder.generate(PROMPTS, batch_size=len(PROMPTS))
    run = recorder.runs[0]
    blocks = block_ids(run.initial, run.gen_start, 8, anchor)
    before = run.initial
    revoked = 0
    for step in run.steps:
        masked = before == ToyDiffusionLM.mask_token_id
        current = blocks.gather(1, masked.int().argmax(-1, keepdim=True))
        live = ~step.finished_before
        changed = (step.canvas != before) & live[:, None]
        assert bool((changed <= (blocks == current)).all()), "a change left the current model block"
        revoked += int((step.masked & ~masked).sum())
        before = step.canvas
    assert together.token_ids == [decoder.generate([p], batch_size=1).token_ids[0] for p in PROMPTS]
    assert revoked, "nothing was revoked: the revocation path went untested"


def test_apd_decodes_the_embedded_block_model(block_model):
    """APD's lookahead and windowed cache on the block model with the embedded AR model: every row ends, most
    answers are right, several tokens per forward."""
    config = load_config("configs/decoders/apd.yaml", ["model.dllm.path=embedded:block"])
    examples = [example for name in TASKS for example in get_task(name).generate("test", 2, seed=0)]
    out = Decoder(config, dllm=block_model).generate([e.prompt for e in examples])
    right = sum(TASKS[e.task].check(e, text) for e, text in zip(examples, out.texts))
    assert right >= 0.8 * len(examples)
    assert sum(s.generated_tokens for s in out.stats) / sum(s.nfe for s in out.stats) > 2


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


# --- exactness of the prefix cache, as a property ------------------------------------------------------------


class WithPattern(ModelWrapper):
    """A dLLM seen with another attention pattern (the model's weights and forward unchanged)."""

    def __init__(self, dllm, attention: AttentionPattern):
        super().__init__(dllm)
        self.attention = attention


@settings(max_examples=12, deadline=None)
@given(
    prompts=st.lists(st.text(alphabet="abcdefgh 1234", min_size=1, max_size=12), min_size=1, max_size=6),
    block=st.integers(1, 6),
    anchor=st.sampled_from(["generation", "position"]),
    window=st.sampled_from(["full", "lookahead", "same", "half", "double"]),
    threshold=st.floats(0.0, 1.0),
    max_new=st.integers(4, 20),
    stop_at_eos=st.booleans(),
)
def test_the_prefix_cache_is_exact_on_any_block_causal_model(
    sharp, prompts, block, anchor, window, threshold, max_new, stop_at_eos
):
    """A random two-layer model (weights scaled so that its predictions depend on the context) read as
    block-causal with random blocks and anchors, any window that nests, batches of prompts of different lengths:
    ``prefix`` gives exactly the tokens of ``none``."""
    model = WithPattern(sharp, AttentionPattern(block, anchor))
    sizes = {"same": block, "half": max(1, block // 2) if block % 2 == 0 else block, "double": 2 * block}
    window_overrides = (
        ["decoder.window=blocks", f"decoder.window.size={sizes[window]}"]
        if window in sizes
        else [f"decoder.window={window}"]
    )
    common = [
        *window_overrides,
        "decoder.verification=threshold",
        f"decoder.verification.threshold={threshold}",
        f"generation.max_new_tokens={max_new}",
        f"generation.stop_at_eos={str(stop_at_eos).lower()}",
        f"generation.batch_size={len(prompts)}",
    ]
    plain = Decoder(load_config({}, [*common, "decoder.cache=none"]), dllm=model).generate(prompts)
    cached = Decoder(load_config({}, [*common, "decoder.cache=prefix"]), dllm=model).generate(prompts)
    assert cached.token_ids == plain.token_ids
