"""The public plugin API: everything a strategy plugin needs, in one module.

Third-party strategies import from here alone, and so do the built-in ones (``dlm_decode.strategies``), which are
registered through the very path an installed package takes (see ``docs/writing-plugins.md``):

* **hooks**: :data:`hookimpl` marks a plugin's implementations of the hooks in :mod:`dlm_decode.hookspecs`;
  ``dlm_register(registry)`` adds strategies to a :class:`StrategyRegistry` (``registry.add(role, name,
  config_cls, factory)``, role one of :data:`ROLES`).
* **building**: a factory ``factory(config, context)`` gets its validated config dataclass (validate fields in
  ``__post_init__`` with :func:`check_field`, a value in ``[0, 1]`` with :func:`check_probability`, and a per-block
  step schedule's ``steps_per_block`` and ``tokens_per_step`` with :func:`check_step_schedule`) and a
  :class:`BuildContext`: the loaded dLLM, the structured config, the scoring backend,
  :meth:`BuildContext.load_causal_lm` for another model of the config, and :meth:`BuildContext.check_window_blocks`
  for a window of blocks on a block-causal model.
* **the step's values**: :class:`DecodeState` (the canvas, per-batch plugin memory with
  :meth:`DecodeState.memory`, per-row statistics with :meth:`DecodeState.add_row_stat`, per-row noise),
  :class:`Window`, :class:`ForwardPlan`, :class:`ModelInputs`, :class:`ForwardOutput`, :class:`Proposal`,
  :class:`Decision`; :class:`RowMemory` (a memory that follows its rows when they leave or join a running batch,
  described by a :class:`Relayout`).
* **helpers**: per-row selections (:func:`select_top`, :func:`first_true_columns`), attention masks
  (:func:`bidirectional_mask`, :func:`position_ids_from_mask`), the positional key/value store
  (:class:`PositionalKVCache`) and appending HF caches (:func:`new_cache`, :func:`crop_cache`), an AR model
  (:class:`CausalLM`, :func:`check_shared_tokenizer`), and the :class:`Scorer` every vocabulary reduction goes
  through.
* **errors**: a hook raises :class:`StrategyError` (message and fix) when it cannot go on, and the core reports it
  as a :class:`~dlm_decode.errors.PluginError` naming the strategy; a factory raises :class:`ConfigError` for a
  config key.
"""

from dlm_decode.config.step_schedule import check_step_schedule
from dlm_decode.context import BuildContext
from dlm_decode.errors import ConfigError, StrategyError, check_field, check_probability
from dlm_decode.hookspecs import hookimpl
from dlm_decode.masks import bidirectional_mask, position_ids_from_mask
from dlm_decode.models.causal import CausalLM, check_shared_tokenizer, crop_cache, new_cache
from dlm_decode.models.kv_store import PositionalKVCache
from dlm_decode.ops import Scorer
from dlm_decode.registry import ROLES, StrategyRegistry
from dlm_decode.selection import first_true_columns, select_top, threshold_commit
from dlm_decode.state import (
    AR_FORWARDS,
    Decision,
    DecodeState,
    ForwardOutput,
    ForwardPlan,
    ModelInputs,
    Proposal,
    Relayout,
    RowMemory,
    Window,
)

__all__ = [
    "AR_FORWARDS",
    "BuildContext",
    "CausalLM",
    "ConfigError",
    "Decision",
    "DecodeState",
    "ForwardOutput",
    "ForwardPlan",
    "ModelInputs",
    "PositionalKVCache",
    "Proposal",
    "ROLES",
    "Relayout",
    "RowMemory",
    "Scorer",
    "StrategyError",
    "StrategyRegistry",
    "Window",
    "bidirectional_mask",
    "check_field",
    "check_probability",
    "check_shared_tokenizer",
    "check_step_schedule",
    "crop_cache",
    "first_true_columns",
    "hookimpl",
    "new_cache",
    "position_ids_from_mask",
    "select_top",
    "threshold_commit",
]
