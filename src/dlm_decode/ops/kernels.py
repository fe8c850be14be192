"""One-pass Triton scoring kernels: the ``*_triton`` twins of :mod:`dlm_decode.ops.reference`.

Two kernels, one program per position (row of ``[K, V]`` logits), each looping over the vocabulary in
``BLOCK_V`` chunks and never materialising probabilities:

* ``_softmax_stats_kernel``: an online softmax (running max, rescaled running sum) that also carries, as its
  ``constexpr`` flags ask, the argmax, the entropy accumulator ``sum exp(x - max) * (x - max)``, the second
  largest logit and the logit of a given token. Max probability, argmax, entropy, top-2 margin and the
  probability of a token come out of one read of the logits.
* ``_perturbed_argmax_kernel``: ``argmax(x / T + g)`` in float64 with supplied Gumbel noise ``g`` (a Gumbel-max
  sample), where ``x`` is either the logits or APD's mixture ``R * l_D + (1 - R) * l_AR`` (ids past the AR
  vocabulary and ``-inf`` from either side excluded); without noise it is the plain argmax of ``x``.

The noise is supplied (drawn by the caller from each row's own generator), so a kernel sample is the very
sample the native path draws; there is no in-kernel random stream. Arithmetic follows the native twins: logits
are upcast to float32, the mixture is formed in float32 without fused multiply-add, the Gumbel-max score is
float64, and ties go to the first index.

``TRITON_INTERPRET`` is read when ``@triton.jit`` runs, i.e. when this module is imported; ``INTERPRETED`` says
which way it went. Importing this module needs no Triton (see :mod:`dlm_decode.ops._triton`); launching does.
"""

from __future__ import annotations

from typing import Any

import torch

from dlm_decode.ops._triton import HAS_TRITON, InterpretedFunction, tl, triton
from dlm_decode.ops.reference import SoftmaxStats

#: Largest vocabulary chunk one loop iteration loads per program.
MAX_BLOCK_V = 4096


@triton.jit
def _softmax_stats_kernel(
    logits_ptr,
    tokens_ptr,
    max_prob_ptr,
    argmax_ptr,
    entropy_ptr,
    margin_ptr,
    token_prob_ptr,
    vocab,
    row_stride,
    ARGMAX: tl.constexpr,
    ENTROPY: tl.constexpr,
    MARGIN: tl.constexpr,
    TOKENS: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    """Row ``program_id(0)`` of ``logits [K, V]`` -> the ``[K]`` outputs its flags ask for (max_prob always)."""
    row_ptr = logits_ptr + tl.program_id(0).to(tl.int64) * row_stride
    out = tl.program_id(0)
    offsets = tl.arange(0, BLOCK_V)
    top = tl.full([], float("-inf"), tl.float32)  # running max logit
    total = tl.zeros([], tl.float32)  # sum exp(x - top)
    weighted = tl.zeros([], tl.float32)  # sum exp(x - top) * (x - top)
    second = tl.full([], float("-inf"), tl.float32)  # second largest logit (a tied top counts twice)
    top_index = tl.zeros([], tl.int32)
    for start in range(0, vocab, BLOCK_V):
        cols = start + offsets
        x = tl.load(row_ptr + cols, mask=cols < vocab, other=float("-inf")).to(tl.float32)
        block_top, block_index = tl.max(x, axis=0, return_indices=True)
        new_top = tl.maximum(top, block_top)
        # While every logit so far is -inf, shift by 0: exp then gives 0 instead of exp(-inf + inf) = NaN.
        shift = tl.where(new_top == float("-inf"), 0.0, new_top)
        scale = tl.exp(top - shift)
        exps = tl.exp(x - shift)
        if ENTROPY:
            # Rebase the accumulator from `top` to `shift`: exp(x - s) (x - s) = scale * exp(x - t) ((x - t) + (t - s)).
            step = tl.where(total > 0, top - shift, 0.0)
            weighted = scale * (weighted + step * total) + tl.sum(exps * tl.where(exps > 0, x - shift, 0.0), axis=0)
        if MARGIN:
            block_second = tl.max(tl.where(offsets == block_index, float("-inf"), x), axis=0)
            second = tl.maximum(tl.maximum(second, block_second), tl.minimum(top, block_top))
        if ARGMAX:
            top_index = tl.where(block_top > top, start + block_index, top_index)
        total = total * scale + tl.sum(exps, axis=0)
        top = new_top
    tl.store(max_prob_ptr + out, 1.0 / total)
    if ARGMAX:
        tl.store(argmax_ptr + out, top_index)
    if ENTROPY:
        tl.store(entropy_ptr + out, tl.log(total) - weighted / total)
    if MARGIN:
        tl.store(margin_ptr + out, (1.0 - tl.exp(second - top)) / total)
    if TOKENS:
        token_logit = tl.load(row_ptr + tl.load(tokens_ptr + out)).to(tl.float32)
        tl.store(token_prob_ptr + out, tl.exp((token_logit - top) - tl.log(total)))


@triton.jit
def _perturbed_argmax_kernel(
    logits_ptr,
    ar_ptr,
    noise_ptr,
    out_ptr,
    vocab,
    ar_vocab,
    row_stride,
    ar_row_stride,
    noise_row_stride,
    weight: tl.float32,
    ar_weight: tl.float32,
    temperature: tl.float64,
    MIX: tl.constexpr,
    NOISE: tl.constexpr,
    BLOCK_V: tl.constexpr,
):
    """Row ``program_id(0)`` -> ``out[row]``, the first index of the largest score over the vocabulary.

    score = x (no NOISE) or float64(x) / temperature + noise, with x the logits, or with MIX their float32
    mixture ``weight * logits + ar_weight * ar`` over the first ``ar_vocab`` ids (-inf where either is -inf
    and past ``ar_vocab``).
    """
    row = tl.program_id(0).to(tl.int64)
    offsets = tl.arange(0, BLOCK_V)
    best = tl.full([], float("-inf"), tl.float64)
    best_index = tl.zeros([], tl.int32)
    for start in range(0, vocab, BLOCK_V):
        cols = start + offsets
        x = tl.load(logits_ptr + row * row_stride + cols, mask=cols < vocab, other=float("-inf")).to(tl.float32)
        if MIX:
            ar = tl.load(ar_ptr + row * ar_row_stride + cols, mask=cols < ar_vocab, other=float("-inf"))
            ar = ar.to(tl.float32)
            excluded = (x == float("-inf")) | (ar == float("-inf"))
            mixed = weight * tl.where(excluded, 0.0, x) + ar_weight * tl.where(excluded, 0.0, ar)
            x = tl.where(excluded, float("-inf"), mixed)
        if NOISE:
            gumbel = tl.load(noise_ptr + row * noise_row_stride + cols, mask=cols < vocab, other=0.0)
            score = x.to(tl.float64) / temperature + gumbel
        else:
            score = x
        block_best, block_index = tl.max(score, axis=0, return_indices=True)
        block_best = block_best.to(tl.float64)
        best_index = tl.where(block_best > best, start + block_index, best_index)
        best = tl.maximum(best, block_best)
    tl.store(out_ptr + tl.program_id(0), best_index)


#: Whether the kernels above were built for the Triton interpreter (TRITON_INTERPRET=1 at import).
INTERPRETED = HAS_TRITON and isinstance(_softmax_stats_kernel, InterpretedFunction)


def _rows(tensor: torch.Tensor) -> torch.Tensor:
    """``[K, V]`` with unit stride along ``V`` (a copy only when needed)."""
    if tensor.dim() != 2:
        raise ValueError(f"expected [K, V] logits, got shape {tuple(tensor.shape)}")
    return tensor if tensor.stride(-1) == 1 else tensor.contiguous()


def _launch_options(vocab: int, block_v: int | None) -> dict:
    """``BLOCK_V``, ``num_warps`` and the fp-fusion switch for a row of ``vocab`` logits."""
    block = block_v or min(MAX_BLOCK_V, triton.next_power_of_2(vocab))
    return {"BLOCK_V": block, "num_warps": 8 if block >= 2048 else 4, "enable_fp_fusion": False}


def softmax_stats_triton(
    logits: torch.Tensor,
    tokens: torch.Tensor | None = None,
    *,
    argmax: bool = True,
    entropy: bool = True,
    margin: bool = True,
    block_v: int | None = None,
) -> SoftmaxStats:
    """One pass over ``[K, V]`` logits -> :class:`SoftmaxStats` (twin of ``softmax_stats_native``).

    :param tokens: ``[K]`` long; gives ``token_prob`` (None without).
    :param argmax, entropy, margin: compute these fields (None when False); ``max_prob`` is always computed.
    :param block_v: vocabulary chunk per loop iteration, a power of two (default: up to 4096).
    """
    logits = _rows(logits)
    rows, vocab = logits.shape
    floats: dict[str, Any] = {"dtype": torch.float32, "device": logits.device}
    stats = SoftmaxStats(
        max_prob=torch.empty(rows, **floats),
        argmax=torch.empty(rows, dtype=torch.long, device=logits.device) if argmax else None,
        entropy=torch.empty(rows, **floats) if entropy else None,
        margin=torch.empty(rows, **floats) if margin else None,
        token_prob=torch.empty(rows, **floats) if tokens is not None else None,
    )
    if rows:
        unused = stats.max_prob  # any pointer for the outputs a flag switches off: never touched
        _softmax_stats_kernel[(rows,)](
            logits,
            logits if tokens is None else tokens.contiguous(),
            stats.max_prob,
            *(unused if field is None else field for field in stats[1:]),
            vocab,
            logits.stride(0),
            ARGMAX=argmax,
            ENTROPY=entropy,
            MARGIN=margin,
            TOKENS=tokens is not None,
            **_launch_options(vocab, block_v),
        )
    return stats


def perturbed_argmax_triton(
    logits: torch.Tensor,
    noise: torch.Tensor | None = None,
    temperature: float = 1.0,
    ar_logits: torch.Tensor | None = None,
    weight: float = 1.0,
    *,
    block_v: int | None = None,
) -> torch.Tensor:
    """``[K]`` long ``argmax(x / T + noise)`` in float64, or ``argmax(x)`` without noise, in one pass.

    :param logits: ``[K, V]``.
    :param noise: ``[K, V]`` float64 standard Gumbel noise, or None.
    :param temperature: T > 0 (used only with noise).
    :param ar_logits: ``[K, V_ar]``, ``V_ar <= V``: ``x`` is then the mixture ``weight * logits + (1 - weight) *
        ar_logits`` of ``mixture_logits_native``; without it ``x`` is ``logits``.
    :param block_v: as in :func:`softmax_stats_triton`.
    """
    logits = _rows(logits)
    rows, vocab = logits.shape
    ar = logits if ar_logits is None else _rows(ar_logits)
    if ar.shape[-1] > vocab:
        raise ValueError(f"the AR vocabulary ({ar.shape[-1]}) is wider than the draft's ({vocab})")
    gumbel = logits if noise is None else _rows(noise)
    out = torch.empty(rows, dtype=torch.long, device=logits.device)
    if rows:
        _perturbed_argmax_kernel[(rows,)](
            logits,
            ar,
            gumbel,
            out,
            vocab,
            ar.shape[-1],
            logits.stride(0),
            ar.stride(0),
            gumbel.stride(0),
            float(weight),
            1.0 - weight,
            float(temperature),
            MIX=ar_logits is not None,
            NOISE=noise is not None,
            **_launch_options(vocab, block_v),
        )
    return out


def max_prob_triton(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Twin of ``max_prob_native``: ``[K, V]`` -> (``[K]`` float32 max probability, ``[K]`` long argmax)."""
    stats = softmax_stats_triton(logits, entropy=False, margin=False)
    assert stats.argmax is not None  # computed: argmax=True
    return stats.max_prob, stats.argmax


def token_prob_triton(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Twin of ``token_prob_native``: ``[K, V]``, ``[K]`` long -> ``[K]`` float32."""
    token_prob = softmax_stats_triton(logits, tokens, argmax=False, entropy=False, margin=False).token_prob
    assert token_prob is not None  # computed: tokens were given
    return token_prob


def margin_triton(logits: torch.Tensor) -> torch.Tensor:
    """Twin of ``margin_native``: ``[K, V]`` -> ``[K]`` float32 top-1 minus top-2 probability."""
    margin = softmax_stats_triton(logits, argmax=False, entropy=False).margin
    assert margin is not None  # computed: margin=True
    return margin


def entropy_triton(logits: torch.Tensor) -> torch.Tensor:
    """Twin of ``entropy_native``: ``[K, V]`` -> ``[K]`` float32 entropy in nats."""
    entropy = softmax_stats_triton(logits, argmax=False, margin=False).entropy
    assert entropy is not None  # computed: entropy=True
    return entropy


def gumbel_argmax_triton(logits: torch.Tensor, gumbel: torch.Tensor, temperature: float) -> torch.Tensor:
    """Twin of ``gumbel_argmax_native``: ``[K, V]``, ``[K, V]`` float64 noise -> ``[K]`` long sample."""
    return perturbed_argmax_triton(logits, gumbel, temperature)


def coupled_sample_triton(
    draft_logits: torch.Tensor, ar_logits: torch.Tensor, weight: float, gumbel: torch.Tensor | None, temperature: float
) -> torch.Tensor:
    """Twin of ``coupled_sample_native``: ``[K, V]``, ``[K, V_ar]`` -> ``[K]`` long target tokens."""
    noise = None if temperature == 0 else gumbel
    return perturbed_argmax_triton(draft_logits, noise, temperature, ar_logits, weight)
