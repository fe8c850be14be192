"""DPad window: semi-autoregressive blocks whose rows see only a sampled few of the suffix masks.

DPad ("DPad: Efficient Diffusion Language Models with Suffix Dropout", Xinhua Chen, Sitao Huang, Cong Guo, Chiyue Wei,
Yintao He, Jianyi Zhang, Hai Li, Yiran Chen; arXiv 2508.14148; official code ``Crys-Chen/DPad`` at commit 461b36e,
``llada/generate_dropout.py`` + ``llada/sampler.py``, and the same sampler in ``dream/model/generation_utils_block.py``)
observes that the masks after the current block serve as a "scratchpad" whose use decays quickly with distance, and
drops most of them before attention.

*The rule.* Blocks of ``size`` columns, counted from the first generated column as ``blocks(size)`` counts them; a
row's current block is the one holding its first mask and only its masks are eligible. The row attends to every
column before the block's end (prompt, decided tokens, the block) and, after it, only to the *kept* suffix columns.
Suffix column ``block_end + d`` (``d >= 0``, its distance from the block) is kept:

* ``dropout: gaussian`` (DPad's distance-decay dropout with its sliding window) with probability
  ``p(d) = scale * exp(-x_d**2 / 2) / sqrt(2 pi)`` for ``d < W`` and never for ``d >= W``, where ``W`` is
  ``suffix_window`` and ``x_d = sigma * d / (W - 1)`` (``spacing: official``: the official ``linspace(0, sigma, W)``;
  0 when ``W == 1``) or ``x_d = sigma * (d + 1) / W`` (``spacing: paper``). Where ``p(d) >= 1`` the column is always
  kept, so a large ``scale`` (``scale * exp(-sigma**2 / 2) / sqrt(2 pi) >= 1``) gives a deterministic sliding window
  of the ``W`` nearest suffix columns.
* ``dropout: uniform`` (the official "random" alternative): exactly ``preserved_tokens`` columns drawn uniformly
  without replacement among the first ``min(L, W)`` suffix columns (``L``: the suffix length, ``width -
  block_end``), or the whole suffix when ``preserved_tokens >= L`` (the official early return).

The kept set is drawn once per row and block (the official code samples at each block's start and keeps the set
for the block's steps), from the row's own generator ``state.generators[b]``: at a batch's first step each row draws
``uniforms [K, G]`` (``G`` generated columns, ``K = G // size + 2`` blocks, enough for blocks not aligned with the
first generated column), so the draws, and with them the tokens, of a row do not depend on its batch.

Kept columns keep their original position ids and the dropped ones are only hidden as keys (``window.visible``); the
official code instead removes them from the input and passes the original positions to its RoPE (it keeps
``x[:, :block_end + n_kept]``, legitimate because every suffix column is a mask). Attention over the remaining keys
is the same, so the logits of the block are those of the official forward; the compute saving is not: the core
feeds a contiguous span ``[0, input_end)``. With cache ``none`` the span ends after the last kept column of the
batch (one host read per step, like ``lookahead``); with the other caches it is the whole canvas, since ``prefix``
and ``dual`` rebuild their store whenever ``input_end`` changes. The dropped columns inside the span are computed
as queries but never read.

*Caches.* The kept set changes only when a row enters a new block, which is exactly when ``prefix`` and ``dual``
refresh the row, so their reused keys/values were computed under the same visibility: the official
``generate_with_prefix_cache`` / ``generate_with_dual_cache`` (whose caches hold the pruned input) are reproduced.

*Block-causal models* (``embedded:block``): the size must nest with the model's blocks, as for ``blocks``. With a
size that is a multiple of the model block (the preset's 8 on ``embedded:block``) every suffix column lies in a later
model block, already invisible to the block's queries, so DPad is accepted as a no-op (the tokens of ``blocks``).
With a size dividing the model block (sub-blocks) it drops masks of the current model block that the model would
otherwise see.

*Departures of the official code from the paper:*

* distance scale: the paper's retention probability is ``a * phi(k * d / W)`` for ``0 < d <= W`` (the window's last
  column at ``k sigma``, the first at ``k / W``); the code evaluates the Gaussian on ``linspace(0, k, W)``, so the
  first suffix column sits at 0 and the last at ``k``. Default ``spacing: official``; ``paper`` gives the paper's.
* the abstract calls the dropout deterministic; the code (and the paper's sampling formulation) draws a random
  subset per block; a deterministic window is the ``scale`` setting above.
* the official code decodes one prompt at a time and draws from the global torch generator; here each row draws
  from its own.
* defaults: the official scripts use ``sigma`` (``k``) 4, ``scale`` 2 and a window equal to the generation length
  for GSM8K/MATH (3, 2.3 and 512 or 128 for HumanEval/MBPP), blocks of 32, one token per step (``+DPad``) or
  threshold 0.9 (``+Parallel+DPad``). ``suffix_window: null`` means the generation length (the official
  ``window = gen_length``), where the official code requires ``window <= gen_length``; a larger one is accepted
  and only stretches the Gaussian.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from dlm_decode.api import DecodeState, Window, check_field, first_true_columns, hookimpl

DROPOUTS = ("gaussian", "uniform")
SPACINGS = ("official", "paper")


@dataclass
class DPadConfig:
    size: int = 32
    """Columns per block, counted from the first generated column (the official ``block_length``)."""
    suffix_window: int | None = None
    """W: suffix columns after the block that may be kept (the official ``window``); null: the generation length."""
    dropout: str = "gaussian"
    """``gaussian`` (distance-decay keep probability) or ``uniform`` (``preserved_tokens`` random columns)."""
    sigma: float = 4.0
    """k: the window's last column lies at ``k`` standard deviations of the Gaussian (the official ``k_sigma``)."""
    scale: float = 2.0
    """a: factor of the Gaussian density; keep probabilities are ``a * phi(x)`` (>= 1: always kept)."""
    preserved_tokens: int = 0
    """``uniform`` only: suffix columns kept per block (the official ``num_tokens``)."""
    spacing: str = "official"
    """Gaussian abscissa of distance d: ``official`` ``k d / (W - 1)``, ``paper`` ``k (d + 1) / W``."""

    def __post_init__(self) -> None:
        check_field(self.size >= 1, "size", f"must be at least 1, got {self.size}")
        check_field(
            self.suffix_window is None or self.suffix_window >= 1,
            "suffix_window",
            f"must be >= 1 or null, got {self.suffix_window}",
            "use a window of at least one suffix column (or a plain `blocks` window to see none)",
        )
        check_field(self.dropout in DROPOUTS, "dropout", f"must be one of {list(DROPOUTS)}, got {self.dropout!r}")
        check_field(self.spacing in SPACINGS, "spacing", f"must be one of {list(SPACINGS)}, got {self.spacing!r}")
        check_field(
            math.isfinite(self.sigma) and self.sigma >= 0, "sigma", f"must be finite and >= 0, got {self.sigma}"
        )
        check_field(
            math.isfinite(self.scale) and self.scale > 0,
            "scale",
            f"must be finite and > 0, got {self.scale}",
            "a scale of 0 would keep no suffix column: use a plain `blocks` window for that",
        )
        check_field(self.preserved_tokens >= 0, "preserved_tokens", f"must be >= 0, got {self.preserved_tokens}")


def keep_probabilities(config: DPadConfig, distances: int) -> torch.Tensor:
    """``[distances]`` float64: the Gaussian keep probability of suffix distance ``d = 0 .. distances - 1`` (may
    exceed 1, which means always kept; 0 from ``W`` on)."""
    window = config.suffix_window or distances
    d = torch.arange(distances, dtype=torch.float64)
    if config.spacing == "official":
        x = d * (config.sigma / (window - 1)) if window > 1 else torch.zeros_like(d)
    else:
        x = (d + 1) * (config.sigma / window)
    p = config.scale * torch.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)
    return p.masked_fill(d >= window, 0.0)


@dataclass
class DPadMemory:
    """Per batch: ``keep [B, K, G]`` bool, whether row ``b`` keeps suffix distance ``d`` in its ``k``-th block
    (counted from the block holding its first generated column), and ``first_block [B]`` long, that block's index in
    block coordinates."""

    keep: torch.Tensor
    first_block: torch.Tensor


class DPadWindow:
    """``blocks(size)`` with per-row suffix dropout (see the module docstring).

    :param trim: end the model input after the batch's last kept column (only with cache ``none``).
    """

    def __init__(self, config: DPadConfig, trim: bool):
        self.config = config
        self.trim = trim

    def uniforms(self, state: DecodeState, blocks: int, distances: int) -> torch.Tensor:
        """``[B, K, G]`` float64 uniforms, row ``b``'s drawn from ``state.generators[b]`` (``K * G`` per row)."""
        return state.uniform_noise([blocks * distances] * state.batch_size).view(state.batch_size, blocks, distances)

    def keep_table(self, state: DecodeState) -> DPadMemory:
        """Draw every row's kept suffix distances for each of its blocks (once per batch)."""
        size, generated = self.config.size, state.width - state.gen_start
        blocks = generated // size + 2
        coordinates = state.block_coordinates
        first = coordinates[..., state.gen_start]  # [] or [B]: the first generated column's block coordinate
        first = first.expand(state.batch_size) if first.dim() == 0 else first
        u = self.uniforms(state, blocks, generated)
        if self.config.dropout == "gaussian":
            p = keep_probabilities(self.config, generated).to(u.device)
            return DPadMemory(keep=u < p, first_block=first.div(size, rounding_mode="floor"))
        # uniform: block k of row b ends at column gen_start + (first // size + k + 1) * size - first
        k = torch.arange(blocks, device=u.device)
        block_end = state.gen_start + ((first // size)[:, None] + k + 1) * size - first[:, None]
        block_end = block_end.clamp(max=state.width)
        suffix = state.width - block_end  # [B, K] L
        window = self.config.suffix_window or generated
        d = torch.arange(generated, device=u.device)
        candidate = d < torch.minimum(suffix, torch.full_like(suffix, window))[..., None]  # [B, K, G]
        rank = u.masked_fill(~candidate, 2.0).argsort(-1).argsort(-1)  # a uniformly random order of the candidates
        keep = candidate & (rank < self.config.preserved_tokens)
        keep = keep | ((self.config.preserved_tokens >= suffix)[..., None] & (d < suffix[..., None]))
        return DPadMemory(keep=keep, first_block=first.div(size, rounding_mode="floor"))

    @hookimpl
    def dlm_window(self, state: DecodeState) -> Window:
        size = self.config.size
        memory = state.memory(self, self.keep_table)
        masked, columns = state.masked, state.columns
        # [B] first mask; a finished row has no mask left: frontier 0, empty window (as `blocks`)
        frontier = first_true_columns(masked)
        coordinates = state.block_coordinates
        at = (
            coordinates.index_select(0, frontier)
            if coordinates.dim() == 1
            else coordinates.gather(1, frontier[:, None]).squeeze(1)
        )
        block_start = (frontier - at.remainder(size)).clamp(min=0)
        block_end = (block_start + size).clamp(max=state.width)
        blocks, generated = memory.keep.shape[1:]
        index = (at.div(size, rounding_mode="floor") - memory.first_block).clamp(0, blocks - 1)  # [B]
        keep = memory.keep[torch.arange(state.batch_size, device=index.device), index]  # [B, G]
        distance = columns - block_end[:, None]  # [B, N]
        kept = (distance >= 0) & (distance < generated) & keep.gather(1, distance.clamp(0, generated - 1))
        visible = (columns < block_end[:, None]) | kept
        input_end = state.width
        if self.trim:
            last = torch.where(visible, columns + 1, 0).amax(-1).masked_fill(state.finished, 0)
            input_end = max(int(last.max()), 1)  # one host read per step: the span must be a Python int
        return Window(
            eligible=masked & (columns < block_end[:, None]),
            input_end=input_end,
            block_start=block_start,
            block_end=block_end,
            visible=visible,
            width=size,
        )


def dpad_window(config: DPadConfig, context) -> DPadWindow:
    """``dpad``, refused when its blocks cannot nest with a block-causal model's blocks."""
    context.check_window_blocks(config.size, "DPad")
    cache = context.resolved.strategies.get("cache", ("none", None))[0]
    return DPadWindow(config, trim=cache == "none")


@hookimpl
def dlm_register(registry) -> None:
    registry.add("window", "dpad", DPadConfig, dpad_window)
