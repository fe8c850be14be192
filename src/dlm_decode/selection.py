"""Per-row selections over ``[B, N]`` canvases, shared by the core and the strategies (no Python loop per row)."""

from __future__ import annotations

import functools

import torch


@functools.cache
def negative_infinity(device: torch.device) -> torch.Tensor:
    """``-inf`` as a 0-d float32 tensor on ``device``, made once per device: ``torch.where`` wraps a Python float
    into a new tensor at every call, and it rejects a CPU tensor next to CUDA ones. Being 0-d, it leaves the result
    in the scores' dtype."""
    return torch.tensor(float("-inf"), device=device)


def select_top(scores: torch.Tensor, eligible: torch.Tensor, quota: torch.Tensor | None) -> torch.Tensor:
    """Per row, the ``quota[b]`` eligible positions with the highest ``scores`` (ties: leftmost first).

    :param scores: ``[B, N]`` float.
    :param eligible: ``[B, N]`` bool.
    :param quota: ``[B]`` long, or None for one position per row (the argmax, without a sort).
    :return: ``[B, N]`` bool.
    """
    ranked = torch.where(eligible, scores, negative_infinity(scores.device))
    if quota is None:
        best = torch.zeros_like(eligible).scatter_(-1, ranked.argmax(-1, keepdim=True), True)
        return best & eligible
    order = ranked.argsort(dim=-1, descending=True, stable=True)
    positions = torch.arange(order.shape[-1], device=order.device).expand_as(order)
    ranks = torch.empty_like(order).scatter_(-1, order, positions)  # ranks[b, i]: place of column i in row b
    return (ranks < quota[:, None]) & eligible


def first_true_columns(mask: torch.Tensor, default: int | torch.Tensor | None = None) -> torch.Tensor:
    """``[B]`` long, the first column of each row of ``mask`` ``[B, N]`` bool that is true.

    :param default: the value for rows with none (an int, or ``[B]`` long); None: 0, which saves two operations
        where such rows never read the result.
    """
    first = mask.view(torch.uint8).argmax(-1)  # argmax takes no bool; a uint8 view costs nothing
    return first if default is None else torch.where(mask.any(-1), first, default)


def threshold_commit(
    confidence: torch.Tensor, eligible: torch.Tensor, threshold: float, min_tokens: int = 1
) -> torch.Tensor:
    """The eligible positions with ``confidence >= threshold``, plus each row's ``min_tokens`` most confident
    eligible ones.

    :param confidence: ``[B, N]`` float.
    :param eligible: ``[B, N]`` bool.
    :return: ``[B, N]`` bool, empty only for rows without an eligible position.
    """
    quota = None if min_tokens == 1 else torch.full_like(confidence[:, 0], min_tokens, dtype=torch.long)
    return ((confidence >= threshold) & eligible) | select_top(confidence, eligible, quota)
