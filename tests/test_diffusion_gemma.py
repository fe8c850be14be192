"""Checkable facts behind the account of why transformers' ``DiffusionGemmaForBlockDiffusion.generate`` cannot be
matched token for token "at temperature 0": its validation, its randomness, its revisions and its self-conditioning.

The tests share one tiny random-weight model built in code (vocab 64, canvas_length 4, hidden 32, one sliding and
one full layer, 4 experts; a one-layer vision tower, because ``vision_config=None`` builds the full default one) and
calls transformers' own ``generate`` (default sampler: ``EntropyBoundSampler``, linear temperature schedule,
stable-and-confident stop) or ``forward``. Seeds go to torch's global RNG inside ``torch.random.fork_rng``, so the
rest of the suite sees the RNG untouched."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip(
    "transformers.models.diffusion_gemma",
    reason="the installed transformers has no DiffusionGemma (transformers.models.diffusion_gemma)",
)

from transformers import DiffusionGemmaConfig, DiffusionGemmaForBlockDiffusion, DynamicCache  # noqa: E402
from transformers.models.diffusion_gemma import generation_diffusion_gemma as dg_generation  # noqa: E402

from helpers import assert_logits_close  # noqa: E402

VOCAB, CANVAS = 64, 4
PROMPT = [2, 5, 9, 11, 7]  # 5 tokens; 2 = bos
NEAR_GREEDY = {"t_min": 0.0, "t_max": 1e-3}


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one intra-op thread while this module runs


@pytest.fixture(scope="module")
def model(one_thread):
    """The tiny model, weights from ``torch.manual_seed(0)``, SDPA attention, eval mode, CPU (43,160 parameters)."""
    text = dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        global_head_dim=16,
        num_global_key_value_heads=1,
        layer_types=["sliding_attention", "full_attention"],
        sliding_window=8,
        num_experts=4,
        top_k_experts=2,
        moe_intermediate_size=16,
        max_position_embeddings=512,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    vision = dict(
        model_type="gemma4_vision",
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=8,
        position_embedding_size=16,
        patch_size=2,
    )
    config = DiffusionGemmaConfig(text_config=text, vision_config=vision, canvas_length=CANVAS)
    config._attn_implementation = "sdpa"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return DiffusionGemmaForBlockDiffusion(config).eval()


def generate(model, prompts, seed, **kwargs):
    """``model.generate`` on unpadded ``prompts`` (a list of equal-length id lists) after ``torch.manual_seed(seed)``;
    returns the new tokens only, (B, n_blocks * CANVAS) (max_new_tokens is rounded up to whole blocks)."""
    ids = torch.tensor(prompts)
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        return model.generate(ids, **kwargs).sequences[:, ids.shape[1] :]


def test_there_is_no_temperature_zero(model, monkeypatch):
    """t_min = t_max = 0 is refused with a ValueError: the generation config requires t_max > t_min >= 0 (strictly,
    although the message says ">="; t_min = t_max = 0.5 is refused too). With t_min = 0 the last step's temperature
    is t_max / max_denoising_steps, still > 0: the schedule divides the logits, it never takes an argmax. And None is
    not 0: ``t_min=None, t_max=None`` passed to ``generate`` drops the schedule altogether (its processor is never
    called, so the sampler sees the raw logits: temperature 1)."""
    for t in (0.0, 0.5):
        with pytest.raises(ValueError, match=r"`t_max` must be >= t_min"):
            generate(model, [PROMPT], seed=0, max_new_tokens=4, t_min=t, t_max=t)
    schedule = dg_generation.LinearTemperatureScheduleLogitsProcessor(t_min=0.0, t_max=1e-3, max_denoising_steps=48)
    scores = torch.randn(1, CANVAS, VOCAB, generator=torch.Generator().manual_seed(0))
    last = schedule(None, scores.clone(), cur_step=torch.tensor(1, dtype=torch.int32))
    torch.testing.assert_close(last, scores / (1e-3 / 48), rtol=1e-5, atol=0.0)

    calls = []
    original = dg_generation.LinearTemperatureScheduleLogitsProcessor.__call__

    def counting_call(self, input_ids, scores, cur_step):  # LogitsProcessorList passes cur_step by signature
        calls.append(self.t_min)
        return original(self, input_ids, scores, cur_step)

    monkeypatch.setattr(dg_generation.LinearTemperatureScheduleLogitsProcessor, "__call__", counting_call)
    generate(model, [PROMPT], seed=0, max_new_tokens=4, max_denoising_steps=2)
    assert calls == [0.4, 0.4]  # the defaults t_min = 0.4, t_max = 0.8, one call per step
    generate(model, [PROMPT], seed=0, max_new_tokens=4, max_denoising_steps=2, t_min=None, t_max=None)
    assert calls == [0.4, 0.4]


def test_near_zero_temperature_still_depends_on_the_seed(model):
    """At t_min = 0, t_max = 1e-3 (near-greedy: here every position is accepted at every step and the sample is
    almost always the argmax) the output still depends on the seed: seeds 1 and 2 give different blocks for the same
    prompt. The seed enters through the starting canvas, ``torch.randint(0, V, (B, L))`` from the global RNG at each
    block (and, at higher temperatures, the re-randomised non-accepted positions): fixing the first block's starting
    canvas with ``decoder_input_ids`` (B, L) makes seeds 1 and 2 agree."""
    first = generate(model, [PROMPT], seed=1, max_new_tokens=4, **NEAR_GREEDY)
    second = generate(model, [PROMPT], seed=2, max_new_tokens=4, **NEAR_GREEDY)
    assert first.shape == second.shape == (1, CANVAS)
    assert not torch.equal(first, second), (first.tolist(), second.tolist())
    start = torch.tensor([[44, 47, 53, 0]])
    fixed = [
        generate(model, [PROMPT], seed, max_new_tokens=4, decoder_input_ids=start, **NEAR_GREEDY) for seed in (1, 2)
    ]
    assert torch.equal(*fixed), [f.tolist() for f in fixed]


def test_a_seed_reproduces_generate_only_through_the_whole_batchs_global_rng(model):
    """With the same ``torch.manual_seed`` ``generate`` is deterministic, so a seeded comparison is well defined, but
    only through the global RNG in the order ``generate`` draws for the whole batch (per block randint (B, L); per step
    multinomial over B*L rows, then randint (B, L)); there is no ``generator`` argument. At the default sampler the
    same prompt gives a different block as row 0 of a batch of two than alone, and rows 0 and 1 of [prompt, prompt]
    differ: a row's tokens are not a function of (prompt, seed), so per-row generators (batch invariance) cannot
    reproduce them; only B = 1 is comparable."""
    alone = generate(model, [PROMPT], seed=0, max_new_tokens=4)
    assert torch.equal(alone, generate(model, [PROMPT], seed=0, max_new_tokens=4))
    batch = generate(model, [PROMPT, PROMPT], seed=0, max_new_tokens=4)
    assert torch.equal(batch, generate(model, [PROMPT, PROMPT], seed=0, max_new_tokens=4))
    assert not torch.equal(batch[0], alone[0]), (batch.tolist(), alone.tolist())
    assert not torch.equal(batch[0], batch[1]), batch.tolist()


def test_accepted_tokens_are_revised_within_a_block(model, monkeypatch):
    """Acceptance is not monotone. A forward pre-hook on the decoder records the canvas fed at each step (B, L), and a
    wrapper around ``EntropyBoundSampler.accept_canvas`` records its accepted mask (B, L). A token accepted at step t
    is in the canvas fed at step t+1 (that is what accepting means) and is replaced in the canvas fed at step t+2
    (by a new sample when accepted again, by uniform noise when not). One block, default sampler, seed 0."""
    canvases, accepted = [], []
    original = dg_generation.EntropyBoundSampler.accept_canvas

    def recording_accept(sampler, current, denoised, logits, cur_step):
        out = original(sampler, current, denoised, logits, cur_step)
        accepted.append(sampler.accepted_token_mask.clone())
        return out

    monkeypatch.setattr(dg_generation.EntropyBoundSampler, "accept_canvas", recording_accept)
    hook = model.model.decoder.register_forward_pre_hook(
        lambda module, args, kwargs: canvases.append(kwargs["decoder_input_ids"].clone()), with_kwargs=True
    )
    try:
        generate(model, [PROMPT], seed=0, max_new_tokens=4)
    finally:
        hook.remove()
    assert len(canvases) == len(accepted) >= 3
    revised = 0
    for t in range(len(canvases) - 2):
        mask = accepted[t]
        assert mask.any()  # the lowest-entropy position is always accepted
        kept, next_fed = canvases[t + 1][mask], canvases[t + 2][mask]
        revised += int((kept != next_fed).sum())
    assert revised > 0


def test_forward_takes_self_conditioning_logits_that_change_its_logits(model):
    """``forward`` takes ``self_conditioning_logits`` of shape (B, L, V) (the previous step's temperature-scaled
    logits; ``None`` on a block's first step) and returns logits (B, L, V) for the canvas only. Passing them changes
    the logits, so a step needs state beyond the token ids; ``self_conditioning_mask=False`` for a row is the same
    as passing none. ``input_ids`` (prompt, (B, P)) are encoded into a fresh cache by the same call."""
    canvas = torch.randint(0, VOCAB, (1, CANVAS), generator=torch.Generator().manual_seed(5))
    self_conditioning = torch.randn(1, CANVAS, VOCAB, generator=torch.Generator().manual_seed(6))

    def logits(**kwargs):
        cache = DynamicCache(config=model.config.get_text_config(decoder=True))
        with torch.no_grad():
            return model(input_ids=torch.tensor([PROMPT]), cache=cache, decoder_input_ids=canvas, **kwargs).logits

    without = logits()
    with_sc = logits(self_conditioning_logits=self_conditioning)
    masked = logits(self_conditioning_logits=self_conditioning, self_conditioning_mask=torch.tensor([False]))
    assert without.shape == with_sc.shape == (1, CANVAS, VOCAB)
    assert not torch.allclose(with_sc, without, rtol=1e-3, atol=1e-3)
    assert_logits_close(masked, without)
