"""WINO: the shadow block's leave-one-out probabilities, the draft/revoke rules against a transcription of the
official loop, step invariants, flip-flop and revocation counters, batch invariance, and the config."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from dlm_decode import ConfigError, PluginError, hookimpl, load_config
from dlm_decode.decoder import Decoder
from dlm_decode.plugins import build_registry
from dlm_decode.registry import StrategyRegistry
from dlm_decode.state import DecodeState, ForwardOutput, ForwardPlan, ModelInputs, Window
from dlm_decode.testing.models import build_tiny_checkpoint
from dlm_decode.testing.toy import ToyDiffusionLM

from helpers import PROMPTS16, assert_logits_close, decode_state

NEVER = float("-inf")
PRESET = Path(__file__).resolve().parents[1] / "configs" / "decoders" / "wino.yaml"
PROMPTS = ["abc", "d", "efgh", "hello world", "xy"]


@pytest.fixture(scope="module")
def registry() -> StrategyRegistry:
    return build_registry()


@pytest.fixture(scope="module")
def one_layer_dir(tmp_path_factory):
    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny-1-layer"), layers=1, seed=3)


def toy(sharpness: float = 6.0, context: bool = True) -> ToyDiffusionLM:
    return ToyDiffusionLM(12, sharpness=sharpness, eos_bias=NEVER, context=context)


def toy_decoder(registry, *overrides: str, model=None, observers=()) -> Decoder:
    config = load_config({}, ["decoder.verification=wino", *overrides], registry=registry)
    return Decoder(config, dllm=model or toy(), registry=registry, observers=observers)


class Recorder:
    """Observer keeping every step's canvas before and after, the decision, and the published counters."""

    def __init__(self):
        self.runs: list[dict] = []

    @hookimpl
    def dlm_generation_start(self, state):
        self.runs.append({"gen_start": state.gen_start, "steps": [], "initial": state.canvas.clone()})
        self._before = (state.canvas.clone(), state.finished.clone())

    @hookimpl
    def dlm_step_end(self, state, decision):
        before, finished = self._before
        revoke = torch.zeros_like(decision.commit) if decision.revoke is None else decision.revoke.clone()
        self.runs[-1]["steps"].append(
            {
                "before": before,
                "running": ~finished,
                "commit": decision.commit.clone(),
                "revoke": revoke,
                "after": state.canvas.clone(),
                "masked": state.masked.clone(),
            }
        )
        self._before = (state.canvas.clone(), state.finished.clone())

    @hookimpl
    def dlm_generation_end(self, state):
        self.runs[-1]["revocations"] = state.row_stats["wino.revocations"].clone()
        self.runs[-1]["flip_flops"] = state.row_stats["wino.flip_flops"].clone()


# --- the shadow block --------------------------------------------------------------------------------------


def partly_decoded(decoder: Decoder, prompts: list[str], new_tokens: int, seed: int = 0):
    """A state with random tokens committed at random generated columns, and a window whose blocks differ per
    row (row r < 3: block ``[g + 2r, g + 2r + 8 - 3r)`` clipped to the canvas), so the shadow block is ragged."""
    dllm = decoder.dllm
    state = decode_state(
        dllm.encode(prompts),
        new_tokens,
        mask=dllm.mask_token_id,
        pad=dllm.pad_token_id,
        eos=dllm.eos_token_ids,
        fill=dllm.fill_token_id,
        seeds=list(range(len(prompts))),
    )
    generator = torch.Generator().manual_seed(seed)
    generated = state.columns >= state.gen_start
    decided = generated & (torch.rand(state.canvas.shape, generator=generator) < 0.6)
    tokens = torch.randint(4, dllm.vocab_size, state.canvas.shape, generator=generator)
    state.canvas = torch.where(decided, tokens, state.canvas)
    state.masked = generated & ~decided
    rows = torch.arange(len(prompts))
    start = state.gen_start + 2 * rows
    end = (start + 8 - 3 * rows).clamp(max=state.width)
    block = (state.columns >= start[:, None]) & (state.columns < end[:, None])
    return state, Window(eligible=state.masked & block, input_end=state.width, block_start=start, block_end=end)


def shadow_forward(decoder: Decoder, state: DecodeState, window: Window) -> ForwardOutput:
    inputs = decoder.manager.hook.dlm_model_inputs(state=state, window=window, plan=ForwardPlan(0, state.width))
    logits = decoder.dllm.forward(inputs).clone()  # an inference tensor: clone it to write into it
    logits[..., state.mask_token_id] = NEVER
    return ForwardOutput(logits=logits, inputs=inputs)


def plain_logits(decoder: Decoder, state: DecodeState, canvas: torch.Tensor) -> torch.Tensor:
    """``[B, N, V]`` logits of ``canvas`` without any shadow block, the mask token excluded."""
    logits = decoder.dllm.forward(ModelInputs(canvas, state.position_ids, state.full_attention, 0, state.width)).clone()
    logits[..., state.mask_token_id] = NEVER
    return logits


def test_shadow_probability_is_the_forward_with_that_position_masked(make_decoder, registry, one_layer_dir):
    """One layer and slots that see only themselves: slot j is exactly column j's masked prediction."""
    decoder = make_decoder(
        f"model.dllm.path={one_layer_dir}",
        "decoder.verification=wino",
        "decoder.verification.shadows_attend_each_other=false",
        registry=registry,
    )
    state, window = partly_decoded(decoder, ["sort: 3 1 2", "hi", "reverse: abc"], new_tokens=10)
    verifier = decoder.strategies["verification"][1]
    block = (state.columns >= window.block_start[:, None]) & (state.columns < window.block_end[:, None])
    candidates = block & ~state.masked & (state.columns >= state.gen_start)
    support = verifier.support(state, shadow_forward(decoder, state, window), window, candidates)
    checked = 0
    for column in candidates.any(0).nonzero().flatten().tolist():
        masked = state.canvas.clone()
        masked[:, column] = state.mask_token_id
        probs = torch.softmax(plain_logits(decoder, state, masked)[:, column].double(), -1)
        for row in candidates[:, column].nonzero().flatten().tolist():
            expected = float(probs[row, state.canvas[row, column]])
            assert abs(float(support[row, column]) - expected) < 1e-5, (row, column)
            checked += 1
    assert checked >= 6
    assert bool(torch.isinf(support[~candidates]).all())


def test_shadow_block_leaves_real_logits_unchanged(make_decoder, registry):
    decoder = make_decoder("decoder.verification=wino", registry=registry)
    state, window = partly_decoded(decoder, ["sort: 3 1 2", "hi", "reverse: abc"], new_tokens=10, seed=1)
    forward = shadow_forward(decoder, state, window)
    assert forward.logits.shape[1] == state.width + 8
    assert_logits_close(forward.logits[:, : state.width], plain_logits(decoder, state, state.canvas))


def test_shared_shadow_slots_never_see_their_own_token(make_decoder, registry, one_layer_dir):
    """Default layout (slots see each other): in one layer, slot j ignores column j but not its neighbours."""
    decoder = make_decoder(f"model.dllm.path={one_layer_dir}", "decoder.verification=wino", registry=registry)
    state, window = partly_decoded(decoder, ["sort: 3 1 2"], new_tokens=10, seed=2)
    column = int(window.block_start[0]) + 3
    state.canvas[0, column], state.masked[0, column] = 40, False
    before = shadow_forward(decoder, state, window).logits[0, state.width :]
    state.canvas[0, column] = 41
    after = shadow_forward(decoder, state, window).logits[0, state.width :]
    assert_logits_close(after[3], before[3])
    assert float((after[2] - before[2]).nan_to_num().abs().max()) > 1e-3


def test_ragged_shadow_blocks_give_each_row_its_own_shadow_logits(make_decoder, registry):
    decoder = make_decoder("decoder.verification=wino", registry=registry)
    prompts = ["sort: 3 1 2", "hi", "reverse: abc"]
    state, window = partly_decoded(decoder, prompts, new_tokens=10, seed=4)
    together = shadow_forward(decoder, state, window).logits[:, state.width :]
    for row, prompt in enumerate(prompts):
        alone, _ = partly_decoded(decoder, [prompt], new_tokens=10)
        width = alone.width
        alone.canvas = state.canvas[row : row + 1, -width:]
        alone.masked = state.masked[row : row + 1, -width:]
        shift = state.width - width
        own = Window(
            eligible=window.eligible[row : row + 1, -width:],
            input_end=width,
            block_start=window.block_start[row : row + 1] - shift,
            block_end=window.block_end[row : row + 1] - shift,
        )
        length = int(own.block_end - own.block_start)
        expected = shadow_forward(decoder, alone, own).logits[0, width:]
        assert_logits_close(together[row, :length], expected)


def test_a_cache_is_rejected_by_name(registry):
    decoder = toy_decoder(
        registry,
        "decoder.cache=kv_window",
        "decoder.window=blocks",
        "decoder.window.size=4",
        "generation.max_new_tokens=8",
    )
    with pytest.raises(PluginError, match="(?s)wino.*cache.*fix: set decoder.cache=none"):
        decoder.generate(["abc"])


# --- the algorithm -----------------------------------------------------------------------------------------


def reference_wino(
    model: ToyDiffusionLM,
    prompt: list[int],
    gen_length: int,
    block_length: int,
    tau1: float,
    tau2: float,
    ratio: float = 0.7,
    low: int = 5,
    high: int = 20,
) -> tuple[list[int], int]:
    """Batch-1 transcription of the official ``decoding_wino`` (canvas ``[prompt | gen | shadow]``), with the
    two documented differences: the mask token is excluded from the softmax, and a step revokes at most
    ``min(last_accept, accepted) - 1`` tokens (the official bound is ``last_accept - 1``)."""
    mask_id, length = model.mask_token_id, len(prompt)
    total = length + gen_length + block_length
    x = torch.full((total,), mask_id)
    x[:length] = torch.tensor(prompt)
    shadow = slice(length + gen_length, total)
    steps = 0
    for first in range(length, length + gen_length, block_length):
        block = slice(first, first + block_length)
        positions = torch.cat([torch.arange(length + gen_length), torch.arange(first, first + block_length)])
        attention = torch.ones(total, total, dtype=torch.bool)
        attention[:, shadow] = False
        attention[shadow, shadow] = True
        attention[shadow, block] = ~torch.eye(block_length, dtype=torch.bool)
        last_accept = 30
        while bool((x[block] == mask_id).any()):
            masked = x[block] == mask_id
            logits = model.forward(ModelInputs(x[None], positions[None], attention[None, None], 0, total))[0]
            logits[:, mask_id] = NEVER
            probs = torch.softmax(logits.double(), -1)
            confidence, x0 = probs[block].max(-1)
            confidence = torch.where(masked, confidence, NEVER)
            back = torch.where(masked, float("inf"), probs[shadow].gather(-1, x[block][:, None])[:, 0])
            max_accept = min(max(int(masked.sum() * ratio), low), high)
            transfer = confidence > tau1
            if transfer.sum() > max_accept:
                transfer = torch.zeros_like(transfer)
                transfer[confidence.topk(max_accept).indices] = True
            elif not transfer.any():
                transfer[confidence.argmax()] = True
            accepted = int(transfer.sum())
            remask = torch.zeros_like(transfer)
            if accepted > 1:
                remask = back < tau2
                limit = min(last_accept, accepted) - 1
                if remask.sum() > limit:
                    remask = torch.zeros_like(transfer)
                    remask[back.topk(limit, largest=False).indices] = True
            x[block] = torch.where(transfer, x0, x[block]).masked_fill(remask, mask_id)
            last_accept = accepted
            steps += 1
    return x[length : length + gen_length].tolist(), steps


@pytest.mark.parametrize(
    "window, block", [(["decoder.window=blocks", "decoder.window.size=8"], 8), (["decoder.window=full"], 16)]
)
@pytest.mark.parametrize("tau1, tau2", [(0.6, 0.9), (0.3, 0.95), (0.0, 0.99)])
def test_batched_decoding_equals_the_official_loop_per_prompt(registry, window, block, tau1, tau2):
    recorder = Recorder()
    model = toy()
    decoder = toy_decoder(
        registry,
        *window,
        f"decoder.verification.draft_threshold={tau1}",
        f"decoder.verification.verify_threshold={tau2}",
        "generation.max_new_tokens=16",
        model=model,
        observers=[recorder],
    )
    out = decoder.generate(PROMPTS)
    for prompt, ids, stats in zip(model.encode(PROMPTS), out.token_ids, out.stats):
        assert (ids, stats.nfe) == reference_wino(model, prompt, 16, block, tau1, tau2)
    assert int(recorder.runs[0]["revocations"].sum()) > 0, "the case exercises revocation"


@pytest.mark.parametrize(
    "window",
    [
        ["decoder.window=blocks", "decoder.window.size=4"],
        ["decoder.window=blocks", "decoder.window.size=7"],
        ["decoder.window=full"],
        ["decoder.window=lookahead", "decoder.window.max_lookahead=6"],
    ],
)
@pytest.mark.parametrize("context", [True, False])
def test_every_step_keeps_the_prompt_revokes_into_masks_and_makes_net_progress(registry, window, context):
    recorder = Recorder()
    decoder = toy_decoder(
        registry,
        *window,
        "decoder.verification.draft_threshold=0.2",
        "decoder.verification.verify_threshold=0.99",
        "decoder.verification.min_accept=2",
        "generation.max_new_tokens=14",
        model=toy(context=context),
        observers=[recorder],
    )
    decoder.generate(PROMPTS)
    run = recorder.runs[0]
    gen = run["gen_start"]
    previous = torch.full((len(PROMPTS),), 30)
    revoked_somewhere = False
    for index, step in enumerate(run["steps"]):
        commits, revokes = step["commit"].sum(-1), step["revoke"].sum(-1)
        running = step["running"]
        assert torch.equal(step["after"][:, :gen], run["initial"][:, :gen]), "the prompt never changes"
        assert bool((step["revoke"][:, :gen] == 0).all())
        assert bool((step["before"][step["revoke"]] != decoder.dllm.mask_token_id).all()), "only decided tokens"
        assert bool(step["masked"][step["revoke"]].all()), "revoked positions become masks"
        assert bool((commits - revokes)[running].min() >= 1), f"no net progress at step {index}"
        bound = (torch.minimum(previous, commits) - 1).clamp(min=0)
        assert bool((revokes <= bound).all()), "at most min(last accept, accepted) - 1 revocations"
        previous = torch.where(running, commits, previous)
        for row, column in step["revoke"].nonzero().tolist():
            revoked_somewhere = True
            later = [s["commit"][row, column] for s in run["steps"][index + 1 :]]
            assert any(later), f"revoked ({row}, {column}) is decided again"
    assert revoked_somewhere
    assert not bool(run["steps"][-1]["masked"].any())


def test_a_rows_eos_is_never_revoked_so_its_masks_shrink_every_step(registry):
    """Revoking an EOS would reopen the filled tail after it (more masks than the step committed). With an EOS the
    toy proposes often and tau2 = 1 (everything unsupported), masks must still shrink at every step."""
    recorder = Recorder()
    decoder = toy_decoder(
        registry,
        "decoder.window=full",
        "decoder.verification.draft_threshold=0.0",
        "decoder.verification.verify_threshold=1.0",
        "decoder.verification.min_accept=3",
        "decoder.verification.max_accept=3",
        "generation.max_new_tokens=12",
        model=ToyDiffusionLM(12, sharpness=1.0, eos_bias=1.5, context=True),
        observers=[recorder],
    )
    decoder.generate(PROMPTS, seeds=list(range(len(PROMPTS))))
    eos = decoder.dllm.eos_token_ids[0]
    run = recorder.runs[0]
    masks = run["initial"].eq(decoder.dllm.mask_token_id).sum(-1)
    open_eos = 0  # steps at which an unfinished row held an EOS (the case this test is about)
    for step in run["steps"]:
        after = step["masked"].sum(-1)
        assert bool((after[step["running"]] < masks[step["running"]]).all()), "masks shrink for every running row"
        assert not bool((step["revoke"] & (step["before"] == eos)).any()), "an EOS is never revoked"
        open_eos += int(((step["after"] == eos).any(-1) & step["masked"].any(-1)).sum())
        masks = after
    assert open_eos > 0 and int(run["revocations"].sum()) > 0, "the case has unfinished rows with an EOS, and revokes"


def test_one_draft_per_step_never_revokes(registry):
    recorder = Recorder()
    decoder = toy_decoder(
        registry,
        "decoder.window=blocks",
        "decoder.window.size=8",
        "decoder.verification.draft_threshold=1.0",
        "decoder.verification.verify_threshold=1.0",
        "generation.max_new_tokens=8",
        observers=[recorder],
    )
    out = decoder.generate(PROMPTS)
    assert all(s.commits_per_step == [1] * 8 for s in out.stats)
    assert int(recorder.runs[0]["revocations"].sum()) == 0


# --- counters --------------------------------------------------------------------------------------------


def recount(run: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """From the recorded steps alone: revocations per position, revocations and flip-flops per row."""
    per_position = torch.zeros_like(run["initial"])
    flip_flops = torch.zeros(run["initial"].shape[0], dtype=torch.long)
    held: dict[tuple[int, int], int] = {}
    for step in run["steps"]:
        for row, column in step["commit"].nonzero().tolist():
            if held.pop((row, column), None) == int(step["after"][row, column]):
                flip_flops[row] += 1
        for row, column in step["revoke"].nonzero().tolist():
            held[(row, column)] = int(step["before"][row, column])
            per_position[row, column] += 1
    return per_position, per_position.sum(-1), flip_flops


#: Draft everything allowed, doubt almost everything: positions get revoked up to three times.
FLIPPY = [
    "decoder.window=blocks",
    "decoder.window.size=16",
    "decoder.verification.draft_threshold=0.0",
    "decoder.verification.verify_threshold=0.99",
    "decoder.verification.min_accept=2",
    "decoder.verification.max_accept=4",
    "generation.max_new_tokens=16",
]


@pytest.mark.parametrize("context", [True, False])
def test_published_counters_match_a_recount(registry, context):
    recorder = Recorder()
    toy_decoder(registry, *FLIPPY, model=toy(3.0, context), observers=[recorder]).generate(PROMPTS)
    run = recorder.runs[0]
    _, revocations, flip_flops = recount(run)
    assert torch.equal(run["revocations"], revocations) and torch.equal(run["flip_flops"], flip_flops)
    assert int(revocations.sum()) > 0
    if not context:  # fixed per-position distributions: a revoked token always comes back unchanged
        assert torch.equal(flip_flops, revocations)


@pytest.mark.parametrize("cap", [0, 1, 2])
def test_revocations_per_position_are_capped(registry, cap):
    uncapped, capped = Recorder(), Recorder()
    toy_decoder(registry, *FLIPPY, model=toy(3.0, context=False), observers=[uncapped]).generate(PROMPTS)
    toy_decoder(
        registry,
        *FLIPPY,
        f"decoder.verification.max_revocations_per_position={cap}",
        model=toy(3.0, context=False),
        observers=[capped],
    ).generate(PROMPTS)
    assert int(recount(uncapped.runs[0])[0].max()) > cap, "without the cap some position is revoked more often"
    assert int(recount(capped.runs[0])[0].max()) <= cap


# --- batches, config, preset -------------------------------------------------------------------------------


def test_batch_of_16_equals_one_by_one_on_an_hf_model(make_decoder, registry):
    recorder = Recorder()
    decoder = make_decoder(
        "decoder.verification=wino",
        "decoder.verification.draft_threshold=0.0",
        "decoder.verification.verify_threshold=0.5",
        "decoder.verification.min_accept=2",
        "decoder.verification.max_accept=4",
        "decoder.window=blocks",
        "decoder.window.size=6",
        "generation.max_new_tokens=12",
        registry=registry,
        observers=[recorder],
    )
    together = decoder.generate(PROMPTS16, batch_size=16)
    assert int(recorder.runs[0]["revocations"].sum()) > 0
    for index, prompt in enumerate(PROMPTS16):
        alone = decoder.generate([prompt], seeds=[index])
        assert alone.token_ids[0] == together.token_ids[index], prompt
        assert alone.stats[0].commits_per_step == together.stats[index].commits_per_step


@pytest.mark.parametrize(
    "key, value",
    [
        ("draft_threshold", 1.5),
        ("verify_threshold", -0.1),
        ("max_accept_ratio", 0.0),
        ("min_accept", 0),
        ("max_accept", 3),
        ("initial_last_accept", 0),
        ("max_revocations_per_position", -1),
    ],
)
def test_invalid_parameters_name_their_key(registry, key, value):
    with pytest.raises(ConfigError, match=f"`decoder.verification.{key}`"):
        load_config({}, ["decoder.verification=wino", f"decoder.verification.{key}={value}"], registry=registry)


def test_preset_loads_and_decodes(registry):
    config = load_config(PRESET, registry=registry)
    name, params = config.strategies["verification"]
    assert name == "wino" and (params.draft_threshold, params.verify_threshold) == (0.8, 0.9)
    assert config.strategies["window"][0] == "blocks" and config.strategies["window"][1].size == 16
    assert config.strategies["cache"][0] == "none"
    out = Decoder(config, dllm=toy(), registry=registry).generate(PROMPTS)
    assert all(len(ids) == 32 for ids in out.token_ids)
    assert sum(len(ids) for ids in out.token_ids) / sum(s.nfe for s in out.stats) > 1
