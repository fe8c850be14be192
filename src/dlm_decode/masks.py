"""Attention masks and position ids for left-padded canvases, shared by decoding and training.

Every mask here is one rule over per-column *block ids*: a real query attends to the real keys whose block id is at
most its own. Equal ids everywhere give a bidirectional mask, ``arange`` a causal one, and ids that count blocks of
columns the block-causal mask of block diffusion (bidirectional inside a block, causal across blocks).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that ignore left padding.

    :param attention_mask: ``[B, N]`` bool or 0/1, false on padding.
    :return: ``[B, N]`` long; the first real token of every row has position 0, padding gets 0.
    """
    return (attention_mask.long().cumsum(-1) - 1).clamp_(min=0)


def block_mask(attention_mask: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    """The 4-D boolean mask of a block pattern, which HF attention takes as is.

    A query attends to every real key whose block id is at most its own; a padding query also attends to itself,
    so no softmax row is empty (an empty row gives NaN in SDPA).

    :param attention_mask: ``[B, N]`` bool or 0/1, false on padding.
    :param blocks: ``[B, N]`` or ``[N]`` long block id of every column.
    :return: ``[B, 1, N, N]`` bool, true where query ``i`` may attend to key ``j``.
    """
    keys = attention_mask.bool()
    blocks = blocks.expand_as(keys)
    mask = (blocks[:, None, None, :] <= blocks[:, None, :, None]) & keys[:, None, None, :]
    eye = torch.eye(keys.shape[-1], dtype=torch.bool, device=keys.device)
    return mask | (eye & ~keys[:, None, :, None])


def bidirectional_mask(attention_mask: torch.Tensor, causal: bool = False) -> torch.Tensor:
    """Expand a 2-D padding mask into the 4-D boolean mask HF attention takes as is.

    A real query attends to every real key (or, with ``causal``, to the real keys at or before it). A padding
    query attends only to itself, so no softmax row is empty (an empty row gives NaN in SDPA).

    :param attention_mask: ``[B, N]`` bool or 0/1, false on padding.
    :param causal: restrict real queries to keys at or before them (the AR model's view).
    :return: ``[B, 1, N, N]`` bool, true where query ``i`` may attend to key ``j``.
    """
    keys = attention_mask.bool()
    n = keys.shape[-1]
    mask = keys[:, None, None, :].expand(-1, 1, n, -1)
    if causal:
        mask = mask & torch.ones(n, n, dtype=torch.bool, device=keys.device).tril_()
    eye = torch.eye(n, dtype=torch.bool, device=keys.device)
    return mask | (eye & ~keys[:, None, :, None])


#: Where a block-causal model's blocks start (:class:`AttentionPattern` ``anchor``).
ANCHORS = ("generation", "position")


@dataclass(frozen=True)
class AttentionPattern:
    """How a dLLM's attention covers the canvas: a property of the model, from which the core builds every
    forward's mask.

    * bidirectional (``block_size`` None): every real column attends to every real column (LLaDA, Dream).
    * block-causal (``block_size`` B): bidirectional inside a block of B columns, causal across blocks (block
      diffusion: SDAR, Fast-dLLM v2, LLaDA2). ``anchor`` says where blocks start: ``generation``, at the first
      generated column, the prompt being one block before the first (the embedded block model); ``position``, at
      position 0, so the prompt spans blocks and the first generated block holds the prompt's tail (SDAR), which
      puts the block boundaries of left-padded rows at different columns.

    :ivar block_size: B, or None for bidirectional.
    :ivar anchor: one of :data:`ANCHORS`.
    :ivar head_first: a block's first column is decided alone, before the rest of its block. A block-causal model
        with shifted logits (Fast-dLLM v2) predicts that column from the column before it, in the previous block,
        so its prediction never depends on its own block: it is an autoregressive token, and the official decoder
        commits it as soon as the previous block is done.
    """

    block_size: int | None = None
    anchor: str = "generation"
    head_first: bool = False

    def __post_init__(self) -> None:
        if self.block_size is not None and self.block_size < 1:
            raise ValueError(f"a block-causal pattern needs block_size >= 1, got {self.block_size}")
        if self.anchor not in ANCHORS:
            raise ValueError(f"anchor must be one of {ANCHORS}, got {self.anchor!r}")

    @property
    def block_causal(self) -> bool:
        return self.block_size is not None

    def __str__(self) -> str:
        if not self.block_causal:
            return "bidirectional"
        head = ", head_first" if self.head_first else ""
        return f"block_causal(block_size={self.block_size}, anchor={self.anchor}{head})"

    def nests(self, size: int) -> bool:
        """Whether windows of ``size`` columns, counted in :meth:`coordinates`, nest with this pattern's blocks:
        always for a bidirectional model; for a block-causal one when ``size`` divides the block size (sub-blocks)
        or is a multiple of it."""
        return self.block_size is None or self.block_size % size == 0 or size % self.block_size == 0

    def coordinates(self, attention_mask: torch.Tensor, gen_start: int) -> torch.Tensor:
        """The coordinate blocks are counted in: ``column - gen_start`` (``[N]``, anchor ``generation``, and for
        bidirectional models) or the position ignoring padding (``[B, N]``, anchor ``position``). Blocks of size s
        are the columns with the same ``coordinate // s``."""
        if self.anchor == "position" and self.block_causal:
            return position_ids_from_mask(attention_mask)
        return torch.arange(attention_mask.shape[-1], device=attention_mask.device) - gen_start

    def blocks(self, attention_mask: torch.Tensor, gen_start: int) -> torch.Tensor:
        """Block id of every column (``[N]`` or ``[B, N]`` long): the prompt is block ``-1`` under anchor
        ``generation``, left padding block ``-1`` under anchor ``position``; all zeros for a bidirectional model."""
        coordinates = self.coordinates(attention_mask, gen_start)
        if self.block_size is None:  # bidirectional
            return torch.zeros_like(coordinates)
        blocks = coordinates.div(self.block_size, rounding_mode="floor")
        if self.anchor == "generation":
            return blocks.clamp(min=-1)
        return blocks.masked_fill(~attention_mask.bool(), -1)

    def mask(self, attention_mask: torch.Tensor, gen_start: int) -> torch.Tensor:
        """``[B, 1, N, N]`` bool, the mask of the whole canvas (:func:`block_mask` of :meth:`blocks`)."""
        if not self.block_causal:
            return bidirectional_mask(attention_mask)
        return block_mask(attention_mask, self.blocks(attention_mask, gen_start))


#: The pattern of LLaDA, Dream and the embedded dLLM.
BIDIRECTIONAL = AttentionPattern()
