"""The autoregressive model beside the dLLM (APD's verifier): :class:`CausalLM`, the check that it shares the
dLLM's tokenizer, and the appending HF key/value cache it decodes with (:func:`new_cache`, :func:`crop_cache`)."""

from __future__ import annotations

from typing import Any

import torch

from dlm_decode.config.schema import ModelSpec
from dlm_decode.errors import ModelError
from dlm_decode.models.forward import head_width, run_hf
from dlm_decode.models.loading import load_hf


def new_cache():
    """An empty HF key/value cache."""
    from transformers import DynamicCache

    return DynamicCache()


def crop_cache(cache, length: int) -> None:
    """Keep the keys/values of the first ``length`` columns of ``cache``."""
    extra = cache.get_seq_length() - length
    if extra > 0:
        cache.crop(-extra)


class CausalLM:
    """An autoregressive model sharing the dLLM's tokenizer (APD's verifier).

    :ivar vocab_size: width of its logits (may be narrower than the dLLM head).
    :ivar substitute_id: fed in place of ids the AR model does not have (a dLLM head wider than the AR one can
        draft them, e.g. Dream's padded ids >= 151,936 against Qwen2.5's head); the mixture already gives those
        ids no target probability, so such a draft is rejected unless it is the step's first (always committed)
        position, and the AR model then reads this id in its place.
    """

    def __init__(self, model, tokenizer):
        self.model = model
        self.tokenizer = tokenizer
        self.vocab_size = head_width(model)
        fallback = [tokenizer.unk_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id, 0]
        self.substitute_id = next(int(i) for i in fallback if i is not None and i < self.vocab_size)

    @classmethod
    def from_spec(cls, spec: ModelSpec, key: str = "model.ar", load=load_hf) -> CausalLM:
        """Load ``spec`` with ``load(spec, key) -> (model, tokenizer)`` and check it is causal (strategy factories
        call :meth:`~dlm_decode.context.BuildContext.load_causal_lm`, which records the model)."""
        model, tokenizer = load(spec, key)
        if getattr(model.config, "is_causal", True) is False:
            raise ModelError(
                f"`{key}.path` = {spec.path!r} is a bidirectional model (config.is_causal=False)",
                fix="give a causal LM as the AR model",
            )
        return cls(model, tokenizer)

    @torch.inference_mode()
    def forward(
        self, input_ids: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor, cache: Any
    ) -> torch.Tensor:
        """``[B, S, V_ar]`` logits; ``logits[:, i]`` predicts the column after input column ``i``.

        ``input_ids`` ``[B, S]`` may hold ids past the AR vocabulary; they are read as ``substitute_id``.
        """
        input_ids = input_ids.masked_fill(input_ids >= self.vocab_size, self.substitute_id)
        return run_hf(self.model, input_ids, position_ids, attention_mask, cache)


def tokenizer_mismatches(dllm_tokenizer, ar_tokenizer) -> list[tuple[str, int, int | None]]:
    """``(token, AR id, dLLM id)`` for every AR token whose id differs in the dLLM's tokenizer (sorted by AR id)."""
    dllm_ids = dllm_tokenizer.get_vocab()
    return sorted(
        (
            (token, index, dllm_ids.get(token))
            for token, index in ar_tokenizer.get_vocab().items()
            if dllm_ids.get(token) != index
        ),
        key=lambda m: m[1],
    )


def check_shared_tokenizer(dllm_tokenizer, ar_tokenizer, dllm_vocab: int, ar_vocab: int) -> None:
    """Raise :class:`ModelError` unless every AR token has the same id in the dLLM's tokenizer.

    A dLLM head wider than the AR vocabulary is allowed (its extra ids are masked out of mixtures).
    """
    mismatched = tokenizer_mismatches(dllm_tokenizer, ar_tokenizer)
    if mismatched:
        shown = ", ".join(f"{t!r}: AR {a} vs dLLM {'absent' if d is None else d}" for t, a, d in mismatched[:3])
        raise ModelError(
            f"the AR model's tokenizer differs from the dLLM's ({len(mismatched)} tokens disagree, e.g. {shown}); "
            "APD compares token ids and adds logits per id",
            fix="pick an AR model trained with the dLLM's tokenizer (e.g. Qwen2.5 for Dream)",
        )
    if ar_vocab > dllm_vocab:
        raise ModelError(
            f"the AR head has {ar_vocab} logits but the dLLM head only {dllm_vocab}",
            fix="pick an AR model whose vocabulary the dLLM covers",
        )
