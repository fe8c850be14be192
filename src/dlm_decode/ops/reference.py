"""Reference (pure torch) scoring over the vocabulary, per position.

Every function takes ``logits`` of shape ``[K, V]`` (one row per position) and reduces over ``V``. These are
the reference implementations and the CPU path; proposal and verification plugins reach them only through
:class:`dlm_decode.ops.Scorer`. Each has a one-pass Triton twin in :mod:`dlm_decode.ops.kernels`
(``*_triton``) that the parity tests compare against it.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class SoftmaxStats(NamedTuple):
    """Per-position statistics of ``softmax(logits)``, each ``[K]``; a field not asked for is None."""

    max_prob: torch.Tensor
    """float32, the largest probability."""
    argmax: torch.Tensor | None
    """long, its token (the first one on ties)."""
    entropy: torch.Tensor | None
    """float32, in nats."""
    margin: torch.Tensor | None
    """float32, top-1 minus top-2 probability."""
    token_prob: torch.Tensor | None
    """float32, the probability of the given tokens."""


def max_prob_native(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[K, V]`` -> (``[K]`` float32 max probability, ``[K]`` long argmax)."""
    probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
    return probs.max(dim=-1)


def token_prob_native(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """``[K, V]``, ``[K]`` long -> ``[K]`` float32 probability of ``tokens``."""
    log_probs = torch.log_softmax(logits, dim=-1, dtype=torch.float32)
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


def softmax_stats_native(logits: torch.Tensor, tokens: torch.Tensor | None = None) -> SoftmaxStats:
    """``[K, V]`` (and optional ``[K]`` long ``tokens``) -> every field of :class:`SoftmaxStats`.

    ``token_prob`` is None without ``tokens``.
    """
    max_prob, argmax = max_prob_native(logits)
    return SoftmaxStats(
        max_prob,
        argmax,
        entropy_native(logits),
        margin_native(logits),
        None if tokens is None else token_prob_native(logits, tokens),
    )


def gumbel_argmax_native(logits: torch.Tensor, gumbel: torch.Tensor, temperature: float) -> torch.Tensor:
    """Sample from ``softmax(logits / temperature)`` with given Gumbel noise, in float64.

    :param logits: ``[K, V]``, ``-inf`` where a token is excluded.
    :param gumbel: ``[K, V]`` float64 standard Gumbel noise.
    :param temperature: > 0.
    :return: ``[K]`` long, ``argmax(logits / T + gumbel)``: an exact sample of ``softmax(logits / T)``.
    """
    return (logits.double() / temperature + gumbel).argmax(dim=-1)


def mixture_logits_native(draft_logits: torch.Tensor, ar_logits: torch.Tensor, weight: float) -> torch.Tensor:
    """APD's product of experts ``R * draft + (1 - R) * ar`` over the draft's vocabulary, in float32.

    A token either expert excludes (``-inf``) stays excluded, also at R = 0 or 1 (no ``0 * inf`` NaN).

    :param draft_logits: ``[K, V]`` dLLM logits.
    :param ar_logits: ``[K, V_ar]`` AR logits, ``V_ar <= V``; the dLLM ids past ``V_ar`` get ``-inf``.
    :param weight: R in [0, 1].
    :return: ``[K, V]`` float32.
    """
    width = ar_logits.shape[-1]
    draft = draft_logits[:, :width].float()
    ar = ar_logits.float()
    excluded = (draft == float("-inf")) | (ar == float("-inf"))
    mixed = torch.full(draft_logits.shape, float("-inf"), dtype=torch.float32, device=draft_logits.device)
    mixed[:, :width] = (weight * draft.nan_to_num(neginf=0.0) + (1 - weight) * ar.nan_to_num(neginf=0.0)).masked_fill(
        excluded, float("-inf")
    )
    return mixed


def coupled_sample_native(
    draft_logits: torch.Tensor, ar_logits: torch.Tensor, weight: float, gumbel: torch.Tensor | None, temperature: float
) -> torch.Tensor:
    """Sample APD's target ``softmax((R * draft + (1 - R) * ar) / T)`` with the draft's Gumbel noise.

    With ``gumbel`` None or ``temperature == 0`` it is the target's argmax (the official code's rule).

    :return: ``[K]`` long target tokens, to compare with the draft tokens.
    """
    mixed = mixture_logits_native(draft_logits, ar_logits, weight)
    if gumbel is None or temperature == 0:
        return mixed.argmax(dim=-1)
    return gumbel_argmax_native(mixed, gumbel, temperature)
