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


#: transformers classes whose logits are their output embeddings applied to the base model's last hidden states,
#: with nothing in between (no scaling, no capping): :func:`run_hf` can run the head at some columns only.
SEPARABLE_HEADS = frozenset(
    {
        "LlamaForCausalLM",
        "MistralForCausalLM",
        "Qwen2ForCausalLM",
        "Qwen3ForCausalLM",
        "Qwen3MoeForCausalLM",
        "Glm4MoeForCausalLM",
    }
)


def separable_head(model) -> bool:
    """Whether ``model`` is exactly one of transformers' :data:`SEPARABLE_HEADS` (a subclass, or the checkpoint's
    own code, may change its logits in its ``forward``: it keeps computing them all)."""
    cls = type(model)
    return cls.__module__.startswith("transformers.models.") and cls.__name__ in SEPARABLE_HEADS


def run_hf(
    model,
    input_ids: torch.Tensor,
    position_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    cache: Any = None,
    outputs: torch.Tensor | None = None,
) -> torch.Tensor:
    """One HF forward with explicit positions and a 4-D boolean mask; returns ``[B, S, V]`` logits, or with
    ``outputs`` (``[B, W]`` long query indices; only for a :func:`separable_head` model) ``[B, W, V]``: the base
    model's hidden states at those queries through the output embeddings."""
    # the ignore below: mypy does not take a class for the Hashable argument of a functools.cache function
    runner = model if outputs is None else model.get_decoder()
    kwargs = {_cache_argument(type(runner)): cache} if cache is not None else {}  # type: ignore[arg-type]
    out = runner(
        input_ids=input_ids,
        position_ids=position_ids,
        attention_mask=attention_mask,
        use_cache=cache is not None,
        **kwargs,
    )
    if outputs is None:
        return out.logits
    hidden = out.last_hidden_state
    rows = torch.arange(hidden.shape[0], device=hidden.device)[:, None]
    return model.get_output_embeddings()(hidden[rows, outputs])
