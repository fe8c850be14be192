"""Model families: special ids found by token string, then the tokenizer, then the family's documented ids; ids
outside the head refused (on the remote-code stand-ins, whose tokenizers have the families' layouts)."""

from __future__ import annotations

import pytest

from dlm_decode import ModelError
from dlm_decode.testing.models import dream_like_tokenizer, llada_like_tokenizer

from stand_ins import load


def test_dream_like_ids_come_from_dreams_special_tokens(stand_ins):
    dllm = load(stand_ins["dream"])
    tok = dream_like_tokenizer()
    assert dllm.family.name == "dream" and dllm.family.shifted_logits
    assert type(dllm.model).__name__ == "DreamModel", "AutoModel fallback: Dream's auto_map has no causal-LM entry"
    assert dllm.mask_token_id == tok.convert_tokens_to_ids("<|mask|>")
    assert dllm.eos_token_ids == [tok.convert_tokens_to_ids("<|endoftext|>"), tok.convert_tokens_to_ids("<|im_end|>")]
    assert dllm.pad_token_id == dllm.fill_token_id == tok.convert_tokens_to_ids("<|endoftext|>")
    assert dllm.vocab_size == 112 > len(tok), "the head is wider than the tokenizer, as Dream's"


def test_llada_like_mask_id_comes_from_the_family_table(stand_ins):
    tok = llada_like_tokenizer()
    assert tok.mask_token_id is None, "LLaDA's tokenizer names no mask token"
    dllm = load(stand_ins["llada"])
    assert dllm.family.name == "llada" and not dllm.family.shifted_logits
    assert dllm.mask_token_id == tok.convert_tokens_to_ids("<|mdm_mask|>")
    assert dllm.eos_token_ids == [tok.convert_tokens_to_ids("<|endoftext|>"), tok.convert_tokens_to_ids("<|eot_id|>")]
    assert load(stand_ins["llada"], mask_token_id=5).mask_token_id == 5, "an explicit id wins"


def test_special_ids_outside_the_head_are_refused(stand_ins):
    with pytest.raises(ModelError, match="outside the dLLM's 104 logits"):
        load(stand_ins["llada"], mask_token_id=126336)


def test_the_config_schema_accepts_exactly_the_known_families():
    """The schema's names are the family table's (config/family_table.py), not a copy of them."""
    from dlm_decode.config.family_table import FAMILIES
    from dlm_decode.config.schema import FAMILY_NAMES, ModelSpec
    from dlm_decode.errors import FieldError

    assert (
        FAMILY_NAMES
        == ("auto", *FAMILIES)
        == ("auto", "bidirectional", "llada", "dream", "sdar", "fast_dllm_v2", "llada2", "llada_moe", "diffusion_gemma")
    )
    assert [ModelSpec(family=name).family for name in FAMILY_NAMES] == list(FAMILY_NAMES)
    with pytest.raises(
        FieldError,
        match="must be one of auto, bidirectional, llada, dream, sdar, fast_dllm_v2, llada2, llada_moe, "
        "diffusion_gemma, got 'gpt'",
    ):
        ModelSpec(family="gpt")
