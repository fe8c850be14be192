"""dlm_decode: composable, plugin-based decoding for diffusion language models.

Public API::

    from dlm_decode import Decoder
    decoder = Decoder.from_config("configs/decoders/llada.yaml", overrides=["generation.max_new_tokens=32"])
    out = decoder.generate(["sort 3 1 2"])

A transformers model already in memory: ``Decoder.from_model(model, tokenizer, "configs/decoders/llada.yaml")``.

The names below are imported on first use (``import dlm_decode`` alone, as the CLI's help and the dry run do, loads
neither torch nor the decoder); the errors and :data:`hookimpl` are imported at once.

How the package reports (the rule for new code):

* What stops a call is raised, as a :mod:`dlm_decode.errors` class with its fix (``fix=``), never printed.
* What the caller should know but need not act on (a fallback taken, a safeguard that cannot work here, an
  optional package missing) is logged, never printed: each module logs to its own ``logging.getLogger(__name__)``
  (``dlm_decode.<module>``), so an application configures or silences it with :mod:`logging`. Unconfigured,
  Python prints warnings and errors to stderr.
* ``warnings.warn`` is only for misuse of the API by the calling code (a deprecated argument, say), which its
  author should fix.
* Only the command-line entry points print: :mod:`dlm_decode.cli`'s output and error lines,
  ``python -m dlm_decode.integrations.lm_eval write-tasks``, and the training recipes' progress lines (the
  ``dlm_decode.train`` logger they configure). ``DLM_DECODE_TRACE_PLUGINS=1`` writes pluggy's hook trace to stderr.
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
