"""Scoring over the vocabulary: the single entry point proposal and verification plugins use.

:class:`Scorer` is chosen once, when a decoder is built. The native torch functions in
:mod:`dlm_decode.ops.native` are the reference and the CPU path.
"""

from __future__ import annotations

import torch

from dlm_decode.ops import native


class Scorer:
    """Per-position reductions over ``[K, V]`` logits (see :mod:`dlm_decode.ops.native` for the contracts)."""

    name = "native"

    def max_prob(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return native.max_prob_native(logits)

    def token_prob(self, logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return native.token_prob_native(logits, tokens)

    def margin(self, logits: torch.Tensor) -> torch.Tensor:
        return native.margin_native(logits)

    def entropy(self, logits: torch.Tensor) -> torch.Tensor:
        return native.entropy_native(logits)

    def gumbel_argmax(self, logits: torch.Tensor, gumbel: torch.Tensor, temperature: float) -> torch.Tensor:
        return native.gumbel_argmax_native(logits, gumbel, temperature)

    def mixture_logits(self, draft_logits: torch.Tensor, ar_logits: torch.Tensor, weight: float) -> torch.Tensor:
        return native.mixture_logits_native(draft_logits, ar_logits, weight)

    def coupled_sample(self, draft_logits: torch.Tensor, ar_logits: torch.Tensor, weight: float,
                       gumbel: torch.Tensor | None, temperature: float) -> torch.Tensor:
        return native.coupled_sample_native(draft_logits, ar_logits, weight, gumbel, temperature)


def get_scorer() -> Scorer:
    """The scoring backend for a new decoder."""
    return Scorer()
