"""Every decoder preset on the embedded models: it decodes the bidirectional dLLM and the block-causal one, and a
batch of 16 prompts of mixed lengths gives each prompt the tokens (and forwards) it gets alone."""

from __future__ import annotations

from pathlib import Path

import pytest

from dlm_decode.decoder import Decoder
from dlm_decode.eval.tasks import load_examples

#: Presets of a uniform-noise model's own sampler, refused on the embedded (mask) models: tested with DiffusionGemma in
#: tests/test_diffusion_gemma_loop.py.
NOISE_ONLY = {"diffusion-gemma"}
PRESETS = sorted(
    path.stem
    for path in (Path(__file__).resolve().parent.parent / "configs" / "decoders").glob("*.yaml")
    if path.stem not in NOISE_ONLY
)
#: Two examples of each task of the suite's test split, then four short prompts: lengths 9 to 49 characters.
PROMPTS = [example.prompt for example in load_examples(None, "test", 2)] + ["sort 4 1", "reverse ab", "hi", "7+5="]


def test_the_presets_are_found():
    assert {
        "llada",
        "fast-dllm",
        "wino",
        "apd",
        "prophet",
        "klass",
        "hierarchy",
        "credit",
        "local-leap",
        "slow-fast",
        "dpad",
        "freedave",
        "dkv-cache",
    } <= set(PRESETS)
    assert len(PROMPTS) == 16 and len({len(prompt) for prompt in PROMPTS}) > 8


@pytest.mark.parametrize("model", ["embedded:dllm", "embedded:block"])
@pytest.mark.parametrize("preset", PRESETS)
def test_every_preset_decodes_a_batch_of_16_mixed_lengths_as_each_prompt_alone(preset, model):
    decoder = Decoder.from_config(f"configs/decoders/{preset}.yaml", [f"model.dllm.path={model}"])
    batched = decoder.generate(PROMPTS, batch_size=16)
    alone = decoder.generate(PROMPTS, batch_size=1)
    assert batched.token_ids == alone.token_ids
    assert [s.nfe for s in batched.stats] == [s.nfe for s in alone.stats]
    assert sum(s.generated_tokens for s in batched.stats) >= len(PROMPTS)
