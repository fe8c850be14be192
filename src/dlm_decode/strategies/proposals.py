"""Proposal strategies: a candidate token per eligible position.

* ``greedy``: the argmax of the model distribution.
* ``sample(temperature, top_k, top_p)``: a Gumbel-max sample of the tempered, filtered distribution, drawn in
  float64 (low-precision Gumbel-max is biased, arXiv 2409.02908) from each row's own generator. The noise is
  kept on the proposal so a verifier can couple another distribution to the same draw (APD).

Confidence is the probability of the proposed token under the *untempered* distribution, as in LLaDA.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from dlm_decode.api import DecodeState, ForwardOutput, Proposal, Window, check_field, hookimpl


@dataclass
class GreedyConfig:
    """``greedy`` has no parameters."""


@dataclass
class SampleConfig:
    temperature: float = 1.0
    """Divides the logits; 0 means argmax (then ``greedy`` is the clearer name)."""
    top_k: int | None = None
    """Keep only the k most likely tokens (null: all)."""
    top_p: float | None = None
    """Keep the smallest set of most likely tokens whose probability reaches top_p (null: all)."""

    def __post_init__(self) -> None:
        check_field(
            0 <= self.temperature < math.inf,
            "temperature",
            f"must be finite and >= 0, got {self.temperature}",
            "use a finite temperature (large values approach uniform sampling; 0 means argmax)",
        )
        check_field(self.top_k is None or self.top_k >= 1, "top_k", f"must be >= 1 or null, got {self.top_k}")
        check_field(self.top_p is None or 0 < self.top_p <= 1, "top_p", f"must be in (0, 1] or null, got {self.top_p}")


def filter_logits(logits: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """Set the logits outside the top-k / top-p set to ``-inf``.

    :param logits: ``[K, V]``, already divided by the temperature.
    :return: ``[K, V]``; the most likely token always survives.
    """
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop_sorted = (cumulative - sorted_logits.softmax(-1)) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


class TokenProposal:
    """Propose ``argmax`` (temperature 0) or a Gumbel-max sample of ``softmax(filter(logits / T))``."""

    def __init__(self, temperature: float, top_k: int | None = None, top_p: float | None = None, scorer=None):
        self.temperature, self.top_k, self.top_p = temperature, top_k, top_p
        self.scorer = scorer

    @hookimpl
    def dlm_propose(self, state: DecodeState, forward: ForwardOutput, window: Window) -> Proposal:
        rows, cols = window.eligible.nonzero(as_tuple=True)
        logits = forward.at(rows, cols)
        noise = filtered = None
        if self.temperature == 0:
            confidence, tokens = self.scorer.max_prob(logits)
        else:
            counts = window.eligible.sum(-1).tolist()
            noise = state.gumbel_noise(counts, logits.shape[-1])
            filtered = filter_logits(logits.float() / self.temperature, self.top_k, self.top_p)
            tokens = self.scorer.gumbel_argmax(filtered, noise, 1.0)
            confidence = self.scorer.token_prob(logits, tokens)
        scores = torch.zeros_like(state.canvas, dtype=torch.float32)
        return Proposal(  # masked_scatter fills in row-major order, the order of nonzero's positions
            tokens=state.canvas.masked_scatter(window.eligible, tokens),
            confidence=scores.masked_scatter_(window.eligible, confidence),
            rows=rows,
            cols=cols,
            logits=logits,
            temperature=self.temperature,
            noise=noise,
            sampling_logits=filtered,
            scorer=self.scorer,
        )


@hookimpl
def dlm_register(registry) -> None:
    registry.add("proposal", "greedy", GreedyConfig, lambda config, context: TokenProposal(0.0, scorer=context.scorer))
    registry.add(
        "proposal",
        "sample",
        SampleConfig,
        lambda config, context: TokenProposal(config.temperature, config.top_k, config.top_p, scorer=context.scorer),
    )
