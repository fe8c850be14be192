"""A short hash telling apart the weights of loaded models (:attr:`~dlm_decode.decoder.Decoder.weights_hash`)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import torch


def _weight_sample(tensor: torch.Tensor) -> bytes:
    """Up to 768 values of ``tensor`` as float32 bytes: its first and last 256 and 256 evenly strided ones
    (empty for a tensor whose values cannot be read here, such as one offloaded to the meta device)."""
    if tensor.is_meta:
        return b""
    if tensor.is_quantized:
        tensor = tensor.dequantize()
    flat = tensor.detach().reshape(-1)
    stride = max(1, flat.numel() // 256)
    return torch.cat([flat[:256], flat[-256:], flat[::stride][:256]]).float().cpu().numpy().tobytes()


def weights_fingerprint(modules: Sequence[Any]) -> str:
    """A short hash telling apart the weights of ``modules`` (torch modules; anything else counts as none).

    It reads each tensor's name, shape and dtype and a sample of its values (:func:`_weight_sample`), so it costs
    milliseconds even for billions of parameters. Retraining or replacing a checkpoint changes it; an edit
    confined to values outside the sample (one embedding row, say) may not.
    """
    digest = hashlib.sha256()
    for module in modules:
        if not isinstance(module, torch.nn.Module):
            continue
        for name, tensor in module.state_dict().items():
            if not isinstance(tensor, torch.Tensor):  # extra state of some modules
                continue
            digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
            digest.update(_weight_sample(tensor))
    return digest.hexdigest()[:12]
