"""Structured schemas of a decoder config.

Top-level keys (a contract): ``model.dllm``, ``model.ar`` (optional), ``decoder.window``, ``decoder.cache``,
``decoder.proposal``, ``decoder.verification`` (each ``{name: ..., <its parameters>}``, validated against the
registered strategy's own dataclass), and ``generation.*``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from dlm_decode.config.family_table import FAMILIES
from dlm_decode.errors import check_field

SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1
"""The seeds ``torch.Generator.manual_seed`` accepts (a negative seed is read as its 64-bit two's complement)."""

#: ``model.dllm.family`` values: ``auto`` (detected from ``config.json``) or one of the known families.
FAMILY_NAMES = ("auto", *FAMILIES)

_DEVICE = re.compile(r"auto|(cpu|cuda|mps)(:[0-9]+)?")


@dataclass
class ModelSpec:
    """How to load one model."""

    path: str = "embedded:dllm"
    """A local directory, ``embedded:<name>`` for a model shipped with the package, or a hub id (read from the
    local HF cache only, unless ``allow_download`` is true)."""
    allow_download: bool = False
    """Let transformers download a hub id's files. Off by default: nothing is fetched unless asked for."""
    dtype: str = "float32"
    """``float32``, ``bfloat16`` or ``float16``."""
    device: str = "cpu"
    """``cpu``, ``cuda``, ``cuda:N``, ``mps`` or ``auto`` (CUDA when available)."""
    device_map: str | None = None
    """Passed to ``from_pretrained`` (e.g. ``auto`` to spread a large model over the GPUs; needs ``accelerate``);
    ``device`` is then ignored."""
    implementation: str = "native"
    """``native``: build the model with transformers' own classes and run none of the checkpoint's code (LLaDA and
    Dream checkpoints are mapped onto Llama and Qwen2, other checkpoints use their ``model_type``'s class);
    ``remote``: run the checkpoint's own modeling code (needs ``trust_remote_code``), for derivatives with no
    native implementation."""
    trust_remote_code: bool = False
    """Allow the checkpoint's own modeling code (``implementation: remote``). Off unless the user sets it."""
    family: str = "auto"
    """How the adapter reads the dLLM's logits and special ids: ``auto`` (from ``config.json``'s ``model_type``),
    ``bidirectional`` (HF Llama/Qwen2 with ``is_causal: false``), ``llada``, ``dream`` (shifted logits
    re-aligned), ``sdar``, ``fast_dllm_v2`` or ``llada2`` (block-causal). Ignored for ``model.ar``."""
    attention: str = "auto"
    """The dLLM's attention pattern: ``auto`` (as its ``config.json`` declares: block-causal for block-diffusion
    families such as SDAR and for configs with ``attention_pattern: block_causal``, bidirectional otherwise),
    ``bidirectional`` or ``block_causal``. Ignored for ``model.ar``."""
    block_size: int | None = None
    """The block size of a block-causal dLLM (null: from ``config.json``)."""
    chat_template: bool = True
    """Wrap each prompt as one user turn with the tokenizer's chat template, when it has one."""
    mask_token_id: int | None = None
    """Override the tokenizer's mask id."""
    eos_token_ids: list[int] | None = None
    """Override the ids that end a generation (default: the tokenizer's EOS)."""

    def __post_init__(self) -> None:
        check_field(
            self.dtype in ("float32", "bfloat16", "float16"),
            "dtype",
            f"must be float32, bfloat16 or float16, got {self.dtype!r}",
        )
        check_field(
            _DEVICE.fullmatch(self.device) is not None,
            "device",
            f"must be cpu, cuda, cuda:N (N a GPU index such as 0), mps or auto, got {self.device!r}",
            "e.g. device: cuda:0, or device: auto for CUDA when available",
        )
        check_field(
            self.implementation in ("native", "remote"),
            "implementation",
            f"must be native or remote, got {self.implementation!r}",
            "native runs none of the checkpoint's code; remote runs it (with trust_remote_code=true)",
        )
        check_field(
            self.family in FAMILY_NAMES,
            "family",
            f"must be one of {', '.join(FAMILY_NAMES)}, got {self.family!r}",
            "leave it at auto to detect the family from the checkpoint's config.json",
        )
        check_field(
            self.attention in ("auto", "bidirectional", "block_causal"),
            "attention",
            f"must be auto, bidirectional or block_causal, got {self.attention!r}",
            "leave it at auto to read the pattern from the checkpoint's config.json",
        )
        check_field(
            self.block_size is None or self.block_size >= 1,
            "block_size",
            f"must be at least 1 or null, got {self.block_size}",
        )


@dataclass
class ModelSection:
    dllm: ModelSpec = field(default_factory=ModelSpec)
    """The diffusion LM."""
    ar: ModelSpec | None = None
    """An autoregressive model sharing the dLLM's tokenizer (used by verifiers such as APD)."""


@dataclass
class GenerationSection:
    max_new_tokens: int = 32
    """Mask tokens appended to every prompt (the canvas length)."""
    batch_size: int = 8
    """Prompts decoded together."""
    seed: int = 0
    """Prompt ``i`` of a call is decoded with its own generator seeded ``seed + i`` (seeds lie in
    ``[-2**63, 2**64 - 1]``, the range ``torch.Generator.manual_seed`` accepts; a CPU generator uses only the low
    32 bits, so on the CPU seeds that differ by a multiple of 2**32 draw the same numbers)."""
    stop_at_eos: bool = True
    """After a row's first EOS, fill the rest of the row and stop decoding it (fewer forwards). false decodes every
    position, as the official LLaDA, Fast-dLLM, WINO and Dream decoders do; the text still ends at the first EOS."""
    max_steps: int | None = None
    """Abort when a batch takes more steps than this (default: 4 x max_new_tokens)."""
    kernels: str | None = None
    """Scoring backend: ``auto``, ``triton`` or ``native``; null: the ``DLM_DECODE_KERNELS`` variable, else auto."""

    def __post_init__(self) -> None:
        check_field(
            self.max_new_tokens >= 1,
            "max_new_tokens",
            f"must be at least 1, got {self.max_new_tokens}",
            "set generation.max_new_tokens to the longest answer you expect, in tokens",
        )
        check_field(self.batch_size >= 1, "batch_size", f"must be at least 1, got {self.batch_size}")
        check_field(
            SEED_MIN <= self.seed <= SEED_MAX,
            "seed",
            f"must lie in [-2**63, 2**64 - 1], the seeds torch.Generator.manual_seed accepts, got {self.seed}",
            "pick a smaller seed, e.g. generation.seed=0",
        )
        check_field(
            self.max_steps is None or self.max_steps >= 1,
            "max_steps",
            f"must be at least 1 or null, got {self.max_steps}",
        )
        check_field(
            self.kernels is None or self.kernels.strip().lower() in ("auto", "triton", "native"),
            "kernels",
            f"must be auto, triton, native or null, got {self.kernels!r}",
        )


def _strategy(name: str) -> Any:
    return field(default_factory=lambda: {"name": name})


@dataclass
class DecoderSection:
    window: Any = _strategy("full")
    cache: Any = _strategy("none")
    proposal: Any = _strategy("greedy")
    verification: Any = _strategy("topk")


@dataclass
class Config:
    """A whole decoder config (strategy sections are validated by :mod:`dlm_decode.config.compose`)."""

    model: ModelSection = field(default_factory=ModelSection)
    decoder: DecoderSection = field(default_factory=DecoderSection)
    generation: GenerationSection = field(default_factory=GenerationSection)
