"""Tiny randomly initialised HF checkpoints with the project's tokenizer, built in seconds on a CPU."""

from __future__ import annotations

from pathlib import Path

import torch

from dlm_decode.models.tokenizer import build_char_tokenizer


def build_tiny_checkpoint(directory: str | Path, *, causal: bool = False, seed: int = 0, hidden: int = 32,
                          layers: int = 2, heads: int = 2, max_positions: int = 256) -> Path:
    """Save a random Llama (bidirectional unless ``causal``) and the char tokenizer into ``directory``.

    The result loads with plain ``AutoModelForCausalLM.from_pretrained(directory)``.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_char_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=max_positions,
        tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config.is_causal = causal
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    directory = Path(directory)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory
