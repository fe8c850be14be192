"""Calling a transformers model as both adapters do (:class:`~dlm_decode.models.adapter.DiffusionLM`,
:class:`~dlm_decode.models.causal.CausalLM`): one forward with explicit positions, a 4-D boolean mask and an
optional HF cache, the parameters its ``forward`` takes, and the width of its logits."""

from __future__ import annotations

import functools
import inspect
from typing import Any

import torch


def head_width(model) -> int:
    """Width of the model's logits: its output embedding rows (may exceed the tokenizer's vocabulary)."""
    try:
        output = model.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        output = None
    if output is not None and getattr(output, "weight", None) is not None:
        return int(output.weight.shape[0])
    config = model.config
    return int(getattr(config, "embedding_size", None) or config.vocab_size)


@functools.cache
def forward_parameters(model_cls: type[torch.nn.Module]) -> frozenset[str]:
    """Names of the explicit parameters of ``model_cls.forward``."""
    return frozenset(
        name
        for name, p in inspect.signature(model_cls.forward).parameters.items()
        if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
    )


@functools.cache
def _cache_argument(model_cls: type[torch.nn.Module]) -> str:
    """The forward keyword of the HF cache: ``cache`` (transformers >= 5.24) or ``past_key_values``."""
    parameters = inspect.signature(model_cls.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def run_hf(
    model, input_ids: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor, cache: Any = None
) -> torch.Tensor:
    """One HF forward with explicit positions and a 4-D boolean mask; returns ``[B, S, V]`` logits."""
    # the ignore below: mypy does not take a class for the Hashable argument of a functools.cache function
    kwargs = {_cache_argument(type(model)): cache} if cache is not None else {}  # type: ignore[arg-type]
    out = model(
        input_ids=input_ids,
        position_ids=position_ids,
        attention_mask=attention_mask,
        use_cache=cache is not None,
        **kwargs,
    )
    return out.logits
