"""Fast-dLLM's confidence-aware parallel decoding (Wu et al. 2025, arXiv 2505.22618, §3.3).

A step commits a *variable* number of tokens per row, decided by the proposals' confidences (the probability of
the proposed token under the untempered model distribution) over the row's eligible positions:

* ``threshold(threshold, min_tokens)``: every eligible position whose confidence is at least τ, and always the
  ``min_tokens`` most confident ones (1 by default), so each unfinished row progresses (Alg. 1; official
  ``get_transfer_index``). While confidences stay below 1, τ = 1 commits one token per step, the most confident:
  LLaDA's low-confidence remasking. ``min_tokens`` k > 1 is SDAR's dynamic low-confidence remasking (Cheng et al.
  2025, arXiv 2510.06303; its evaluation decoder): all positions above τ when there are at least k of them, else
  the k most confident.
* ``factor(factor)``: sort the eligible confidences of a row in descending order, ``c_(1) >= c_(2) >= ...``, and
  accept the n-th (1-based) while ``c_(n) >= 1 - f / (n + 1)``, stopping at the first failure; the first is
  always accepted (official ``get_transfer_index_dynamic``). With ``f = 1`` this is the condition
  ``(n + 1) ε <= 1`` of the paper's Theorem 1 with ``ε = 1 - c_(n)``, under which greedy parallel decoding of the
  n positions equals greedy decoding of their joint.

  Deliberate difference from the official code: there, when the loop breaks at the *last* candidate (or never
  breaks), the count is incremented, so a last candidate that fails its threshold is accepted anyway. Here a
  failing candidate is never accepted, the last one included.

Ties between equal confidences go to the leftmost position, as in ``topk``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dlm_decode.api import (
    Decision,
    Proposal,
    Window,
    check_field,
    check_probability,
    hookimpl,
    select_top,
    threshold_commit,
)


@dataclass
class ThresholdConfig:
    threshold: float = 0.9
    """τ: commit every eligible position whose confidence is at least this (and always the ``min_tokens`` most
    confident)."""
    min_tokens: int = 1
    """Commit at least this many of each row's most confident eligible positions (SDAR's per-step quota)."""

    def __post_init__(self) -> None:
        check_probability(
            self.threshold,
            "threshold",
            "confidences are probabilities; 1.0 commits one token per step, 0.9 is the paper's default",
        )
        check_field(
            self.min_tokens >= 1,
            "min_tokens",
            f"must be at least 1, got {self.min_tokens}",
            "every unfinished row commits at least one token per step",
        )


@dataclass
class FactorConfig:
    factor: float = 1.0
    """f: accept the n-th most confident position while its confidence is at least 1 - f / (n + 1)."""

    def __post_init__(self) -> None:
        check_field(
            self.factor > 0,
            "factor",
            f"must be > 0, got {self.factor}",
            "1.0 is Theorem 1's bound; larger values accept more tokens per step",
        )


def factor_counts(confidence: torch.Tensor, eligible: torch.Tensor, factor: float) -> torch.Tensor:
    """How many of each row's most confident eligible positions the factor rule accepts.

    :param confidence: ``[B, N]`` float.
    :param eligible: ``[B, N]`` bool.
    :return: ``[B]`` long, the length of the longest run ``n = 1, 2, ...`` of sorted confidences with
        ``c_(n) >= 1 - factor / (n + 1)`` (the first always counts); 0 for rows without an eligible position.
    """
    ranked = confidence.masked_fill(~eligible, float("-inf")).sort(dim=-1, descending=True).values
    n = torch.arange(1, confidence.shape[-1] + 1, device=confidence.device, dtype=ranked.dtype)
    passes = ranked >= 1 - factor / (n + 1)
    passes[:, 0] = True
    passes &= ranked > float("-inf")
    return passes.long().cumprod(dim=-1).sum(dim=-1)


class Threshold:
    """Commit every eligible proposal with confidence at least τ, at least ``min_tokens`` per row."""

    def __init__(self, config: ThresholdConfig):
        self.threshold, self.min_tokens = config.threshold, config.min_tokens

    @hookimpl
    def dlm_verify(self, proposal: Proposal, window: Window) -> Decision:
        commit = threshold_commit(proposal.confidence, window.eligible, self.threshold, self.min_tokens)
        return Decision(commit=commit, tokens=proposal.tokens)


class Factor:
    """Commit each row's most confident proposals while the factor rule holds (see the module docstring)."""

    def __init__(self, config: FactorConfig):
        self.factor = config.factor

    @hookimpl
    def dlm_verify(self, proposal: Proposal, window: Window) -> Decision:
        counts = factor_counts(proposal.confidence, window.eligible, self.factor)
        return Decision(commit=select_top(proposal.confidence, window.eligible, counts), tokens=proposal.tokens)


@hookimpl
def dlm_register(registry) -> None:
    registry.add("verification", "threshold", ThresholdConfig, lambda config, context: Threshold(config))
    registry.add("verification", "factor", FactorConfig, lambda config, context: Factor(config))
