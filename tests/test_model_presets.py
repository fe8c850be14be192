"""Every dLLM preset of ``configs/models`` passes ``--dry-run`` against a tiny checkpoint in its published layout
(``tests/reference``; the test overrides ``model.dllm.path``, since the hub ids are not cached here), and the report
states the family, the attention pattern with its block size, and the memory of one step's logits at batch 16:
16 rows x the canvas (prompt budget + max_new_tokens) x the head's logits x the dtype's bytes, computed here by hand.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from dlm_decode.config.compose import load_config
from dlm_decode.models.dry_run import dry_run

from helpers import REFERENCE

MODELS = Path(__file__).resolve().parent.parent / "configs" / "models"
SDAR = ("sdar-tiny", "sdar", "block_causal(block_size=4, anchor=position)", 320)
FAST_DLLM_V2 = ("fastdllm-v2-tiny", "fast_dllm_v2", "block_causal(block_size=8, anchor=position, head_first)", 320)
LLADA2 = ("llada2-tiny", "llada2", "block_causal(block_size=32, anchor=position)", 112)  # 32: the family's default
#: preset -> (tiny checkpoint in its layout, family, attention pattern, logits of that checkpoint's head)
CHECKED = {
    "llada-8b-instruct": ("llada-tiny", "llada", "bidirectional", 104),
    "dream-7b-instruct": ("dream-tiny", "dream", "bidirectional", 280),
    "llada-moe-7b-a1b-instruct": ("lladamoe-tiny", "llada_moe", "bidirectional", 104),
    **dict.fromkeys(("sdar-1.7b-chat", "sdar-4b-chat", "sdar-8b-chat"), SDAR),
    "sdar-30b-a3b-chat": ("sdar-moe-tiny", *SDAR[1:]),
    **dict.fromkeys(("fast-dllm-v2-7b", "fast-dllm-v2-1.5b"), FAST_DLLM_V2),
    **dict.fromkeys(("llada2.0-mini", "llada2.0-flash", "llada2.1-mini", "llada2.1-flash"), LLADA2),
    "diffusion-gemma-26b-a4b-it": (
        "diffusion-gemma-tiny",
        "diffusion_gemma",
        "block_causal(block_size=4, anchor=generation)",  # canvas_length 4 (the published checkpoint's: 256)
        64,
    ),
}
#: Presets of autoregressive models (``model.ar``), which have no diffusion step to size.
AR_ONLY = {"embedded-ar", "qwen2.5-0.5b"}


def test_every_model_preset_is_checked_or_autoregressive():
    presets = {path.stem for path in MODELS.glob("*.yaml")}
    assert presets == set(CHECKED) | set(AR_ONLY)
    for name in AR_ONLY:
        assert load_config(MODELS / f"{name}.yaml").config.model.ar is not None


@pytest.mark.parametrize("preset", sorted(CHECKED))
def test_the_preset_dry_runs_on_a_tiny_checkpoint_of_its_layout(preset):
    checkpoint, family, pattern, head = CHECKED[preset]
    path = REFERENCE / checkpoint
    spec = load_config(MODELS / f"{preset}.yaml").config.model.dllm
    assert (spec.family, spec.dtype, spec.path.count("/")) == (family, "bfloat16", 1)  # a hub id
    report = dry_run([MODELS / f"{preset}.yaml"], [f"model.dllm.path={path}"], prompt_budget=16, max_new_tokens=32)
    assert report.ok, report.format()
    assert report.facts["dllm"].startswith(f"family {family} (set; ")
    assert report.facts["attention"] == pattern
    size = 16 * (16 + 32) * head * 2
    assert report.facts["logits_step"] == (
        f"{size / 2**30:.2f} GiB at batch 16 (16 rows x 48 canvas columns x {head} logits x 2 bytes (bfloat16) = "
        f"{size:,} bytes; the canvas is what a step without a cache reads)"
    )
