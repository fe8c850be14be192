"""Scoring over the vocabulary: the single entry point proposal and verification plugins use.

:func:`get_scorer` chooses the backend once, when a decoder is built:

* ``native``: :class:`Scorer`, the torch reference functions of :mod:`dlm_decode.ops.reference`.
* ``triton``: :class:`TritonScorer`, the one-pass kernels of :mod:`dlm_decode.ops.kernels`. It needs Triton and
  either a CUDA device or the Triton interpreter (``TRITON_INTERPRET=1`` set before the kernels are imported);
  otherwise choosing it raises :class:`~dlm_decode.errors.ConfigError`.
* ``auto`` (the default): ``triton`` when Triton is installed and a CUDA device is present, else ``native``,
  saying so in one log line (once per process and reason) of the ``dlm_decode.ops`` logger.

The choice comes from the argument, else from the ``DLM_DECODE_KERNELS`` environment variable, else ``auto``.
Per call, :class:`TritonScorer` runs its kernels on CUDA tensors, and on any tensor under the interpreter. Given
CPU tensors otherwise, an ``auto`` scorer uses the native twin for that call and an explicit ``triton`` raises.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import torch

from dlm_decode.errors import ConfigError
from dlm_decode.ops import reference
from dlm_decode.ops.reference import SoftmaxStats

#: The environment variable read when no backend is given.
KERNELS_ENV = "DLM_DECODE_KERNELS"
KINDS = ("auto", "triton", "native")

logger = logging.getLogger(__name__)
_logged: set[str] = set()


class Scorer:
    """Per-position reductions over ``[K, V]`` logits (see :mod:`dlm_decode.ops.reference` for the contracts).

    This base class is the native backend; :class:`TritonScorer` overrides :meth:`_implementation`, which picks the
    function of each reduction per call.
    """

    name = "native"

    def _implementation(self, reduction: str, tensor: torch.Tensor) -> Callable[..., Any]:
        """The function that computes ``reduction`` on ``tensor`` (its first argument): here always
        :mod:`~dlm_decode.ops.reference`'s ``{reduction}_native``."""
        return getattr(reference, f"{reduction}_native")

    def stats(self, logits: torch.Tensor, tokens: torch.Tensor | None = None) -> SoftmaxStats:
        """Max probability, argmax, entropy, margin (and with ``[K]`` ``tokens`` their probability) at once."""
        return self._implementation("softmax_stats", logits)(logits, tokens)

    def max_prob(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self._implementation("max_prob", logits)(logits)

    def token_prob(self, logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        return self._implementation("token_prob", logits)(logits, tokens)

    def margin(self, logits: torch.Tensor) -> torch.Tensor:
        return self._implementation("margin", logits)(logits)

    def entropy(self, logits: torch.Tensor) -> torch.Tensor:
        return self._implementation("entropy", logits)(logits)

    def gumbel_argmax(self, logits: torch.Tensor, gumbel: torch.Tensor, temperature: float) -> torch.Tensor:
        return self._implementation("gumbel_argmax", logits)(logits, gumbel, temperature)

    def mixture_logits(self, draft_logits: torch.Tensor, ar_logits: torch.Tensor, weight: float) -> torch.Tensor:
        """Native on every backend (see :class:`TritonScorer`)."""
        return reference.mixture_logits_native(draft_logits, ar_logits, weight)

    def coupled_sample(
        self,
        draft_logits: torch.Tensor,
        ar_logits: torch.Tensor,
        weight: float,
        gumbel: torch.Tensor | None,
        temperature: float,
    ) -> torch.Tensor:
        sample = self._implementation("coupled_sample", draft_logits)
        return sample(draft_logits, ar_logits, weight, gumbel, temperature)


class TritonScorer(Scorer):
    """The Triton backend: every reduction in one pass over ``V``.

    ``mixture_logits`` stays native: it returns the full ``[K, V]`` mixture, which only the speculative APD
    acceptance asks for, to build whole distributions from it.

    :param strict: raise on tensors the kernels cannot take (CPU tensors without the interpreter) instead of
        using the native twin for that call; True when ``triton`` was chosen explicitly.
    :param key: the setting that chose this backend, named in errors.
    """

    name = "triton"

    def __init__(self, strict: bool, key: str = KERNELS_ENV):
        from dlm_decode.ops import kernels

        self.kernels, self.strict, self.key = kernels, strict, key

    def _runs(self, tensor: torch.Tensor) -> bool:
        """Whether the kernels take ``tensor``; False means "use the native twin" (raises when strict)."""
        if tensor.is_cuda or self.kernels.INTERPRETED:
            return True
        if self.strict:
            raise ConfigError(
                self.key,
                f"the Triton scorer got tensors on {tensor.device}, and the kernels run on "
                "CUDA tensors only (or under TRITON_INTERPRET=1)",
                f"run the model on a CUDA device, or set {self.key}=auto to score CPU tensors natively",
            )
        return False

    def _implementation(self, reduction: str, tensor: torch.Tensor) -> Callable[..., Any]:
        """:mod:`~dlm_decode.ops.kernels`' ``{reduction}_triton`` where the kernels take ``tensor``, else the native
        twin (see :meth:`_runs`)."""
        if not self._runs(tensor):
            return super()._implementation(reduction, tensor)
        return getattr(self.kernels, f"{reduction}_triton")


def triton_unavailable(explicit: bool) -> tuple[str, str] | None:
    """Why :class:`TritonScorer` cannot be chosen here and what would fix it, or None when it can.

    :param explicit: ``triton`` was asked for by name, which also accepts the Triton interpreter in place of a
        CUDA device; ``auto`` takes Triton only where it is fast, on a CUDA device.
    """
    if not explicit and not torch.cuda.is_available():
        return "no CUDA device", "run on a CUDA device"
    from dlm_decode.ops import _triton

    if not _triton.HAS_TRITON:
        return "Triton is not installed", "install it with `pip install 'dlm-decode[triton]'`"
    from dlm_decode.ops import kernels

    if not torch.cuda.is_available() and not kernels.INTERPRETED:
        return (
            "no CUDA device, and the kernels were not built for the Triton interpreter",
            "run on a CUDA device, or (tests on CPU) export TRITON_INTERPRET=1 before dlm_decode is imported",
        )
    return None


def get_scorer(kind: str | None = None, *, key: str = "kernels") -> Scorer:
    """The scoring backend for a new decoder.

    :param kind: ``auto``, ``triton`` or ``native``; None reads ``DLM_DECODE_KERNELS`` (unset or empty: ``auto``).
    :param key: the setting ``kind`` came from, named in errors and in the log line (``DLM_DECODE_KERNELS`` when
        ``kind`` is None).
    :raises ConfigError: for an unknown kind, or ``triton`` where it cannot run.
    """
    if kind is None:
        key, kind = KERNELS_ENV, os.environ.get(KERNELS_ENV) or "auto"
    choice = kind.strip().lower()
    if choice not in KINDS:
        raise ConfigError(key, f"unknown scoring backend {kind!r}", f"use one of {', '.join(KINDS)}")
    if choice == "native":
        return Scorer()
    problem = triton_unavailable(explicit=choice == "triton")
    if problem is None:
        return TritonScorer(strict=choice == "triton", key=key)
    reason, fix = problem
    if choice == "triton":
        raise ConfigError(key, f"the Triton scoring kernels cannot run: {reason}", f"{fix}; or set {key}=auto")
    if reason not in _logged:
        _logged.add(reason)
        level = logging.WARNING if torch.cuda.is_available() else logging.INFO
        logger.log(
            level,
            "scoring with the native torch functions (%s=auto): %s. Set %s=native to choose them explicitly.",
            key,
            reason,
            key,
        )
    return Scorer()


__all__ = ["KERNELS_ENV", "Scorer", "SoftmaxStats", "TritonScorer", "get_scorer", "triton_unavailable"]
