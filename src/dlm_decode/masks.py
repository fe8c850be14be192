"""Attention masks and position ids for left-padded canvases, shared by decoding and training."""

from __future__ import annotations

import torch


def position_ids_from_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that ignore left padding.

    :param attention_mask: ``[B, N]`` bool or 0/1, false on padding.
    :return: ``[B, N]`` long; the first real token of every row has position 0, padding gets 0.
    """
    return (attention_mask.long().cumsum(-1) - 1).clamp_(min=0)


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
