"""The adapter of a dLLM by its family: :class:`~dlm_decode.models.adapter.DiffusionLM`, or a family's own
(a uniform-noise family: :class:`~dlm_decode.models.diffusion_gemma.DiffusionGemmaLM`)."""

from __future__ import annotations

from typing import Any

from dlm_decode.config.schema import ModelSpec
from dlm_decode.models.adapter import DiffusionLM
from dlm_decode.models.diffusion_gemma import DiffusionGemmaLM
from dlm_decode.models.families import resolve_family
from dlm_decode.models.loading import load_hf


def adapt(model: Any, tokenizer: Any, spec: ModelSpec) -> DiffusionLM:
    """:meth:`DiffusionLM.from_loaded` with the adapter of the model's family (``spec.family``, or detected)."""
    noise = resolve_family(spec.family, getattr(model, "config", None)).noise
    return (DiffusionGemmaLM if noise else DiffusionLM).from_loaded(model, tokenizer, spec)


def load_dllm(spec: ModelSpec, key: str = "model.dllm") -> DiffusionLM:
    """Load the model ``spec`` names (:func:`~dlm_decode.models.loading.load_hf`) and :func:`adapt` it."""
    model, tokenizer = load_hf(spec, key)
    return adapt(model, tokenizer, spec)
