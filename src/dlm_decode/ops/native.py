"""Reference (pure torch) scoring over the vocabulary, per position.

Every function takes ``logits`` of shape ``[K, V]`` (one row per position) and reduces over ``V``. These are
the reference implementations and the CPU path; proposal and verification plugins reach them only through
:class:`dlm_decode.ops.Scorer`.
"""

from __future__ import annotations

import torch


def max_prob_native(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[K, V]`` -> (``[K]`` float32 max probability, ``[K]`` long argmax)."""
    probs = torch.softmax(logits.float(), dim=-1)
    return probs.max(dim=-1)


def token_prob_native(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """``[K, V]``, ``[K]`` long -> ``[K]`` float32 probability of ``tokens``."""
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    return log_probs.gather(-1, tokens[:, None]).squeeze(-1).exp()


def margin_native(logits: torch.Tensor) -> torch.Tensor:
    """``[K, V]`` -> ``[K]`` float32, top-1 minus top-2 probability (``V == 1``: the top-1 probability)."""
    probs = torch.softmax(logits.float(), dim=-1)
    if probs.shape[-1] == 1:
        return probs[:, 0]
    top = probs.topk(2, dim=-1).values
    return top[:, 0] - top[:, 1]


def entropy_native(logits: torch.Tensor) -> torch.Tensor:
    """``[K, V]`` -> ``[K]`` float32 entropy in nats (``-inf`` logits contribute 0)."""
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    return -(log_probs.exp() * log_probs.nan_to_num(neginf=0.0)).sum(-1)


def gumbel_argmax_native(logits: torch.Tensor, gumbel: torch.Tensor, temperature: float) -> torch.Tensor:
    """Sample from ``softmax(logits / temperature)`` with given Gumbel noise, in float64.

    :param logits: ``[K, V]``, ``-inf`` where a token is excluded.
    :param gumbel: ``[K, V]`` float64 standard Gumbel noise.
    :param temperature: > 0.
    :return: ``[K]`` long, ``argmax(logits / T + gumbel)``: an exact sample of ``softmax(logits / T)``.
    """
    return (logits.double() / temperature + gumbel).argmax(dim=-1)
