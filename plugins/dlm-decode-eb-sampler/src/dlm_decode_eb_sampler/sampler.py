"""The EB-Sampler selection rule and the ``entropy_bound`` verification strategy.

EB-Sampler: Ben-Hamu, Gat, Severo, Nolte and Karrer, "Accelerated Sampling from Masked Diffusion Models via
Entropy Bounded Unmasking" (arXiv 2505.24857, 2025).

A step of a masked diffusion LM proposes a token for every eligible position. Committing several of them at once
is only safe while the tokens are close to independent given the canvas; the EB-Sampler bounds the error of doing
so by the positions' uncertainty. Per row it sorts the eligible positions by an *error proxy* ``e`` (entropy by
default), most certain first, and commits the largest prefix ``U`` of that order with

    sum_{i in U} e_i - max_{i in U} e_i <= gamma

and always at least one position. Because the order is ascending, ``max_{i in U} e_i`` is the last element of
the prefix, so the ``j``-th sorted position (0-based) belongs to ``U`` exactly when the sum of the ``j``
positions before it is ``<= gamma``. The prefix sums are non-decreasing, so the positions passing this test are
indeed a prefix, and the first one always passes (its sum is 0). That turns the rule into one sort and one
cumulative sum over the whole batch.

Shapes: ``B`` rows, ``N`` canvas columns.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch

from dlm_decode.api import Decision, Proposal, Window, check_field, hookimpl


class ErrorProxy(enum.Enum):
    """The per-position error proxy the entropy budget is spent on."""

    entropy = "entropy"
    """Entropy (nats) of the model's untempered distribution at the position."""
    confidence = "confidence"
    """``1 - p(proposed token)``."""
    margin = "margin"
    """``1 - (p_top1 - p_top2)``."""


@dataclass
class EntropyBoundConfig:
    """Parameters of ``entropy_bound`` (the ``decoder.verification`` section)."""

    gamma: float = 0.1
    """Error budget per step: commit the largest certainty-ordered prefix whose proxies, minus the largest of
    them, sum to at most gamma. 0 commits exactly one token per row and step."""
    score: ErrorProxy = ErrorProxy.entropy
    """Error proxy: entropy, confidence (uses 1 - confidence) or margin (uses 1 - margin)."""
    max_tokens: int | None = None
    """Commit at most this many tokens per row and step (null: no cap)."""

    def __post_init__(self) -> None:
        check_field(
            self.gamma >= 0,
            "gamma",
            f"must be >= 0, got {self.gamma}",
            "use 0 for one token per step; larger budgets commit more tokens per step",
        )
        check_field(
            self.max_tokens is None or self.max_tokens >= 1,
            "max_tokens",
            f"must be >= 1 or null, got {self.max_tokens}",
        )


def entropy_bounded_commit(
    errors: torch.Tensor, eligible: torch.Tensor, gamma: float, max_tokens: int | None = None
) -> torch.Tensor:
    """The EB-Sampler's selection for every row at once.

    :param errors: ``[B, N]`` float, the error proxy of each position (read only where ``eligible``; negative
        values, which can only come from rounding, count as 0).
    :param eligible: ``[B, N]`` bool, the positions that may be committed.
    :param gamma: the budget, ``>= 0``; ``gamma == 0`` commits exactly one position per row with any eligible
        position, even when several proxies are exactly 0.
    :param max_tokens: optional cap on the positions committed per row.
    :return: ``[B, N]`` bool, a subset of ``eligible`` holding at least one position in every row where
        ``eligible`` has one. Ties in the proxy are broken leftmost first.
    """
    values = errors.to(torch.float64).clamp(min=0.0)
    order = values.masked_fill(~eligible, float("inf")).argsort(dim=-1, stable=True)  # [B, N], eligible first
    in_order = eligible.gather(-1, order)  # [B, N] bool
    sorted_values = values.gather(-1, order).masked_fill(~in_order, 0.0)  # [B, N] float64
    totals = sorted_values.cumsum(-1)  # [B, N] float64
    before = torch.cat([torch.zeros_like(totals[:, :1]), totals[:, :-1]], dim=-1)  # sum of the ones sorted ahead
    take = in_order & (before <= gamma)
    limit = 1 if gamma == 0 else max_tokens
    if limit is not None:
        take &= torch.arange(take.shape[-1], device=take.device) < limit
    return torch.zeros_like(eligible).scatter(-1, order, take)


class EntropyBound:
    """The ``entropy_bound`` verification strategy (EB-Sampler, arXiv 2505.24857).

    Never revokes; commits the proposal's tokens at the positions :func:`entropy_bounded_commit` selects.
    """

    def __init__(self, config: EntropyBoundConfig):
        self.gamma = float(config.gamma)
        self.score = config.score
        self.max_tokens = config.max_tokens

    def errors(self, proposal: Proposal) -> torch.Tensor:
        """``[B, N]`` float error proxy of every position (meaningful where eligible)."""
        if self.score is ErrorProxy.entropy:
            return proposal.entropy
        if self.score is ErrorProxy.confidence:
            return 1.0 - proposal.confidence
        return 1.0 - proposal.margin

    @hookimpl
    def dlm_verify(self, proposal: Proposal, window: Window) -> Decision:
        """Commit each row's entropy-bounded prefix of ``window.eligible`` (``[B, N]`` bool)."""
        commit = entropy_bounded_commit(self.errors(proposal), window.eligible, self.gamma, self.max_tokens)
        return Decision(commit=commit, tokens=proposal.tokens)
