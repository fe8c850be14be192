"""What a strategy factory gets besides its own config: the :class:`BuildContext`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dlm_decode.config.compose import ResolvedConfig
from dlm_decode.config.schema import Config, ModelSpec
from dlm_decode.errors import ConfigError
from dlm_decode.masks import BIDIRECTIONAL, AttentionPattern
from dlm_decode.models.causal import CausalLM
from dlm_decode.models.loading import load_hf
from dlm_decode.ops import Scorer

if TYPE_CHECKING:  # the type of `dllm` only: the plugin API need not import the adapter
    from dlm_decode.models.adapter import DiffusionLM


@dataclass
class BuildContext:
    """What a strategy factory may use besides its own config (``factory(config, context)``).

    :ivar resolved: the whole resolved config (YAML text, hash, strategies).
    :ivar dllm: the loaded diffusion LM (its attention pattern: :attr:`attention`).
    :ivar scorer: the scoring backend every plugin must use for vocabulary reductions.
    :ivar loaded: the other models strategies loaded through :meth:`load_model_spec`: their weights count in
        :attr:`~dlm_decode.decoder.Decoder.weights_hash`.
    """

    resolved: ResolvedConfig
    dllm: DiffusionLM
    scorer: Scorer
    loaded: list[Any] = field(default_factory=list)

    @property
    def attention(self) -> AttentionPattern:
        """The dLLM's attention pattern (bidirectional for an adapter that declares none)."""
        return getattr(self.dllm, "attention", BIDIRECTIONAL)

    def check_window_blocks(self, size: int, window: str) -> None:
        """Refuse a window whose blocks of ``size`` columns cannot nest with the dLLM's blocks
        (:meth:`AttentionPattern.nests`): one of its blocks (a ``window`` block, named so in the message) would
        straddle the model's blocks.

        :raises ConfigError: on ``decoder.window.size``, naming the model's block size and the sizes that fit.
        """
        pattern = self.attention
        if not pattern.nests(size):
            raise ConfigError(
                "decoder.window.size",
                f"{size} neither divides nor is a multiple of the dLLM's block size {pattern.block_size} ({pattern}):"
                f" a {window} block would straddle the model's blocks, so part of it would be decided while the"
                " model cannot yet see it as the current block",
                f"set decoder.window.size to a divisor or a multiple of {pattern.block_size}",
            )

    @property
    def config(self) -> Config:
        """The structured config: ``context.config.model.ar``, ``context.config.generation``..."""
        return self.resolved.config

    def load_model_spec(self, spec: ModelSpec, key: str):
        """Load ``(model, tokenizer)`` for another model of the config (e.g. ``model.ar``), recorded in
        :attr:`loaded`."""
        model, tokenizer = load_hf(spec, key)
        self.loaded.append(model)
        return model, tokenizer

    def load_causal_lm(self, spec: ModelSpec, key: str) -> CausalLM:
        """An autoregressive model of the config (e.g. ``model.ar``) behind :class:`~dlm_decode.models.causal.CausalLM`,
        recorded in :attr:`loaded`.

        :raises ModelError: for a bidirectional model.
        """
        return CausalLM.from_spec(spec, key, load=self.load_model_spec)
