"""Record what transformers' own ``DiffusionGemmaForBlockDiffusion.generate`` returns on a tiny random checkpoint.

DiffusionGemma is transformers' own code (no hub modeling file): the official reference is the installed
transformers, which the project depends on, so this recorder runs in the project's environment::

    OMP_NUM_THREADS=1 python tests/reference/record_diffusion_gemma.py --out tests/reference

It writes (rerunning writes the same bytes):

* ``diffusion-gemma-tiny/``: a checkpoint in transformers' layout (``config.json`` with ``model_type:
  diffusion_gemma`` and ``canvas_length`` 4, ``model.safetensors``, a word-level tokenizer of the model's 64 ids
  with Gemma's special tokens ``<pad>`` 0, ``<eos>`` 1, ``<bos>`` 2, ``<unk>`` 3, ``<mask>`` 4). Three text layers
  (two sliding, window 6, then one full), four experts, a one-layer vision tower (``vision_config=None`` would build
  the full default one). Weights from ``torch.manual_seed(0)``; the decoder's final norm is drawn around 16 so that
  the logits are peaked enough for the stop rule to end some blocks early.
* ``official_diffusion_gemma.json``: transformers' version and the SHA-256 of its DiffusionGemma files, and per
  case the prompt ids, the seed, ``generate``'s arguments, the new tokens up to the first EOS (``generate`` pads
  after it) and the number of decoder forwards (counted with a forward hook). Cases, each of two blocks
  (``max_new_tokens`` 8) after prompts of 3, 5 and 11 tokens (shorter and longer than the sliding window), then
  (appended) after prompts of exactly one and two blocks (4 and 8 tokens): the default sampler, and stop-rule
  settings (a mean-entropy confidence of 0.5 with stability 1, of 1.0 with stability 0; other EOS ids)
  under which blocks stop before 48 steps and rows end at an EOS.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import torch

VOCAB = 64
SPECIALS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
PROMPTS = [[2, 5, 9, 11, 7], [2, 40, 33], [2, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21]]
#: Prompts of exactly one and two blocks (recorded after the cases of ``PROMPTS``, which stay first and unchanged).
WHOLE_BLOCK_PROMPTS = [[2, 6, 30, 58], [2, 44, 23, 9, 51, 36, 14, 27]]
SETTINGS = [
    {"max_new_tokens": 8, "eos_token_id": 1},
    {"max_new_tokens": 8, "eos_token_id": 47, "confidence_threshold": 0.5, "stability_threshold": 1},
    {"max_new_tokens": 8, "eos_token_id": 3, "confidence_threshold": 1.0, "stability_threshold": 0},
]
SEEDS = [0, 1]


def build(directory: Path):
    """The tiny model and tokenizer, saved into ``directory``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import DiffusionGemmaConfig, DiffusionGemmaForBlockDiffusion, PreTrainedTokenizerFast

    layers = ["sliding_attention", "sliding_attention", "full_attention"]
    config = DiffusionGemmaConfig(
        text_config={
            "vocab_size": VOCAB,
            "hidden_size": 32,
            "intermediate_size": 48,
            "num_hidden_layers": len(layers),
            "layer_types": layers,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "head_dim": 16,
            "global_head_dim": 16,
            "num_global_key_value_heads": 1,
            "sliding_window": 6,
            "num_experts": 4,
            "top_k_experts": 2,
            "moe_intermediate_size": 16,
            "max_position_embeddings": 256,
            "pad_token_id": 0,
            "eos_token_id": 1,
            "bos_token_id": 2,
        },
        vision_config={
            "model_type": "gemma4_vision",
            "hidden_size": 16,
            "intermediate_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
            "head_dim": 8,
            "position_embedding_size": 16,
            "patch_size": 2,
        },
        canvas_length=4,
    )
    torch.manual_seed(0)
    model = DiffusionGemmaForBlockDiffusion(config).eval()
    with torch.no_grad():
        norm = model.model.decoder.norm.weight
        norm.copy_(16 * (1 + 0.25 * torch.randn(norm.shape)))
    vocab = {token: i for i, token in enumerate(SPECIALS + [f"t{i}" for i in range(len(SPECIALS), VOCAB)])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        pad_token="<pad>",
        eos_token="<eos>",
        bos_token="<bos>",
        unk_token="<unk>",
        mask_token="<mask>",
    )
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return model


def record(model, prompt: list[int], seed: int, setting: dict) -> dict:
    """One ``generate`` call at batch 1 after ``torch.manual_seed(seed)``."""
    forwards = []
    hook = model.model.decoder.register_forward_pre_hook(lambda module, args: forwards.append(1))
    try:
        with torch.no_grad():
            torch.manual_seed(seed)
            out = model.generate(torch.tensor([prompt]), **setting).sequences[0, len(prompt) :].tolist()
    finally:
        hook.remove()
    eos = setting["eos_token_id"]
    tokens = out[: out.index(eos) + 1] if eos in out else out
    return {"prompt_ids": prompt, "seed": seed, "generate": setting, "tokens": tokens, "forwards": len(forwards)}


def main() -> None:
    import transformers
    from transformers.models.diffusion_gemma import generation_diffusion_gemma, modeling_diffusion_gemma

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    out = parser.parse_args().out
    torch.set_num_threads(1)
    model = build(out / "diffusion-gemma-tiny")
    files = {
        f"transformers/models/diffusion_gemma/{Path(module.__file__).name}": hashlib.sha256(
            Path(module.__file__).read_bytes()
        ).hexdigest()
        for module in (modeling_diffusion_gemma, generation_diffusion_gemma)
    }
    cases = [
        record(model, prompt, seed, setting)
        for prompts in (PROMPTS, WHOLE_BLOCK_PROMPTS)
        for setting in SETTINGS
        for prompt in prompts
        for seed in SEEDS
    ]
    fixture = {
        "official": f"huggingface/transformers {transformers.__version__} (the installed package)",
        "transformers_version": transformers.__version__,
        "torch_version": torch.__version__.split("+")[0],
        "files_sha256": files,
        "cases": cases,
    }
    text = json.dumps(fixture, indent=1) + "\n"
    (out / "official_diffusion_gemma.json").write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
