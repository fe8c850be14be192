"""dlm_decode: composable, plugin-based decoding for diffusion language models.

Public API::

    from dlm_decode import Decoder
    decoder = Decoder.from_config("configs/decoders/llada.yaml", overrides=["generation.max_new_tokens=32"])
    out = decoder.generate(["sort 3 1 2"])
"""

from dlm_decode.config import ResolvedConfig, load_config
from dlm_decode.decoder import Decoder, GenerationOutput, RowStats
from dlm_decode.errors import ConfigError, DecodeError, DlmDecodeError, InputError, ModelError, PluginError
from dlm_decode.hookspecs import hookimpl

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "DecodeError",
    "Decoder",
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
