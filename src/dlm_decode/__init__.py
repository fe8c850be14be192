"""dlm_decode: composable, plugin-based decoding for diffusion language models.

Public API::

    from dlm_decode import Decoder
    decoder = Decoder.from_config("configs/decoders/llada.yaml", overrides=["generation.max_new_tokens=32"])
    out = decoder.generate(["sort 3 1 2"])

A transformers model already in memory: ``Decoder.from_model(model, tokenizer, "configs/decoders/llada.yaml")``.

The names below are imported on first use (``import dlm_decode`` alone, as the CLI's help and the dry run do, loads
neither torch nor the decoder); the errors and :data:`hookimpl` are imported at once.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from dlm_decode.errors import ConfigError, DecodeError, DlmDecodeError, InputError, ModelError, PluginError
from dlm_decode.hookspecs import hookimpl

if TYPE_CHECKING:
    from dlm_decode.config import ResolvedConfig, load_config
    from dlm_decode.decoder import Decoder, GenerationOutput, RowStats
    from dlm_decode.models.adapter import DiffusionLM

__version__ = "0.1.0"

#: Public names imported on first use -> their module.
_LAZY = {
    "Decoder": "dlm_decode.decoder",
    "DiffusionLM": "dlm_decode.models.adapter",
    "GenerationOutput": "dlm_decode.decoder",
    "ResolvedConfig": "dlm_decode.config",
    "RowStats": "dlm_decode.decoder",
    "load_config": "dlm_decode.config",
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'dlm_decode' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


__all__ = [
    "ConfigError",
    "DecodeError",
    "Decoder",
    "DiffusionLM",
    "DlmDecodeError",
    "GenerationOutput",
    "InputError",
    "ModelError",
    "PluginError",
    "ResolvedConfig",
    "RowStats",
    "hookimpl",
    "load_config",
]
