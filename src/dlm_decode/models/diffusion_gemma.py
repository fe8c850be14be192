"""transformers' ``DiffusionGemmaForBlockDiffusion`` in the loop: a uniform-noise block-diffusion model.

**The model.** DiffusionGemma has an autoregressive *encoder* and a diffusion *decoder* sharing their layers. The
encoder reads the prompt and every finished block causally (sliding-window layers see their last
``sliding_window`` columns, full layers everything) and leaves its keys/values; the decoder reads one block of
``canvas_length`` columns (the *canvas*), attending bidirectionally to itself and to the encoder's keys/values
(through a sliding layer, only the last ``sliding_window - 1`` encoded columns, which is what transformers'
sliding cache keeps), and adds to its input embeddings a *self-conditioning* signal: the previous step's
tempered logits of the block (none at a block's first step). Only the canvas gets logits. A block's canvas starts
as uniform noise, not masks.

**In the loop.** The family is block-causal (blocks of ``canvas_length`` from the first generated column) with a
noise canvas (:attr:`~dlm_decode.state.DecodeState.noise_vocab`). One loop step is one decoder forward:

* **model state and extras**: :class:`DiffusionGemmaHooks`, hooks the adapter brings into every decoder built on
  it (``Decoder`` registers ``dllm.hooks``), keeps each batch's self-conditioning logits ``[B, L, V]`` in
  ``state.memory``, puts them into :attr:`ModelInputs.extras <dlm_decode.state.ModelInputs.extras>` with each
  row's block start, and after each verification stores the step's logits of every unfinished row's block: those
  the proposal sampled from where it proposed (``Proposal.sampling_logits``: the tempered logits, as
  transformers' sampler feeds back), the model's own elsewhere (and everywhere for ``greedy``).
* **the encoder step**: the forward encodes canvas columns ``[plan.start, last block start)`` into the cache plan's
  :class:`~dlm_decode.models.kv_store.PositionalKVCache` before the decoder reads it. Under ``prefix`` the plan
  starts at the block a row just finished (the block-boundary encoder step) and the store keeps every finished
  block's keys/values, exact; under ``none`` everything is encoded again each step (the same tokens, slower).
  Columns a row has not finished are encoded too when the batch's span covers them, but its decoder never reads
  them and they are encoded again once final.
* **the decoder step**: each row's current block (at its own columns: rows of a batch may be in different
  blocks), its positions, masks per layer type built here from the padding and the row's block, and the
  self-conditioning extras as keyword arguments of the model's own ``forward``. The ``[B, L, V]`` logits are
  placed at the block's columns of a ``[B, S, V]`` answer (zeros elsewhere: only a row's current block is
  eligible).

transformers' own ``generate`` (the entropy-bounded sampler with a linear temperature schedule) is the strategies
``linear_temperature`` and ``entropy_bound_redraw`` (:mod:`dlm_decode.strategies.uniform_noise`), preset
``configs/decoders/diffusion-gemma.yaml``; docs/block-diffusion.md says which other strategies apply and why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from dlm_decode.errors import ModelError, StrategyError
from dlm_decode.hookspecs import hookimpl
from dlm_decode.models.adapter import DiffusionLM
from dlm_decode.models.families import config_context
from dlm_decode.models.kv_store import PositionalKVCache
from dlm_decode.state import Decision, DecodeState, ForwardOutput, ForwardPlan, ModelInputs, Proposal, Window

#: Strategies that do not apply to a uniform-noise model, (role, name) -> why; the Decoder refuses them.
REFUSED = {
    ("verification", "wino"): "WINO feeds its shadow block as mask ids and revokes tokens; a uniform-noise model "
    "has no mask token and a revoked position of a noise canvas would need fresh noise",
    ("verification", "freedave"): "FreeDave's drafts tell undecided positions by the mask id, which a noise canvas "
    "does not hold",
    ("window", "lookahead"): "the lookahead window ends the input inside the block, and DiffusionGemma's decoder "
    "reads its whole block: use full or blocks",
    ("window", "dpad"): "DPad hides the masked suffix from the keys; DiffusionGemma's decoder never sees past its "
    "block, and its forward builds its own masks",
    ("cache", "dual"): "DiffusionGemma's decoder stores no keys/values, so there is no suffix to reuse: use prefix "
    "(exact, the encoder step at each block boundary) or none",
    ("cache", "kv_window"): "DiffusionGemma's forward keeps the encoder keys/values of finished blocks only: use "
    "prefix (exact) or none",
    ("cache", "dkv"): "DiffusionGemma's forward keeps the encoder keys/values of finished blocks only: use prefix "
    "(exact) or none",
}


class DiffusionGemmaLM(DiffusionLM):
    """The adapter of a ``DiffusionGemmaForBlockDiffusion`` (see the module docstring).

    :ivar noise_vocab: ``V``, the range of the noise tokens (the logits' width, as transformers draws them).
    :ivar hooks: :class:`DiffusionGemmaHooks`, registered into every decoder built on this adapter.
    :ivar refused_strategies: :data:`REFUSED`.
    :raises ModelError: for an attention pattern other than the model's blocks counted from the first generated
        column (``model.dllm.attention``).
    """

    def __init__(self, model, tokenizer, **kwargs: Any):
        super().__init__(model, tokenizer, **kwargs)
        text = model.config.get_text_config()
        if not self.attention.block_causal or self.attention.anchor != "generation":
            raise ModelError(
                f"DiffusionGemma decodes block by block from the first generated column, got the attention "
                f"pattern {self.attention}",
                fix="leave model.dllm.attention at auto (blocks of config.json's canvas_length)",
            )
        self.noise_vocab = self.vocab_size
        self.selects_outputs = True  # its decoder computes only each row's block (the outputs its hooks set)
        self.max_context = config_context(text) or self.max_context
        self.sliding_window = int(text.sliding_window)
        self.layer_types = sorted(set(text.layer_types))
        self.embedding_dtype = model.get_input_embeddings().weight.dtype
        self.hooks = [DiffusionGemmaHooks(self)]
        self.refused_strategies = REFUSED

    @property
    def block_size(self) -> int:
        """``L``, the canvas (block) length."""
        size = self.attention.block_size
        assert size is not None  # block-causal, checked at construction
        return size

    @torch.inference_mode()
    def forward(self, inputs: ModelInputs, cache: Any = None) -> torch.Tensor:
        """``[B, L, V]`` logits of each row's current block, the queries ``inputs.outputs`` (``[B, L]``, set by
        :class:`DiffusionGemmaHooks` to the block's columns whatever the window: the decoder computes nothing else).

        :param inputs: ``input_ids``/``position_ids`` ``[B, S]``, ``outputs`` and the extras of
            :class:`DiffusionGemmaHooks`: ``real`` ``[B, N]`` bool (the canvas's non-padding columns) and the model's
            self-conditioning keyword arguments.
        :param cache: None (encode from column 0, into a store of this forward), or the plan's
            :class:`~dlm_decode.models.kv_store.PositionalKVCache` holding every column before ``inputs.start``.
        """
        extras = dict(inputs.extras)
        real = extras.pop("real")
        offsets = inputs.outputs  # [B, L] span columns of each row's block
        assert offsets is not None  # set by the hooks
        first, size = inputs.start, self.block_size
        encoded_end = inputs.end - size  # the last row's block start: encode [first, encoded_end)
        store = cache if cache is not None else PositionalKVCache(encoded_end)
        encoder: dict[str, Any] = {}
        if encoded_end > first:
            columns = torch.arange(first, encoded_end, device=real.device)
            store.set_queries(first, key_end=encoded_end)
            encoder = {
                "input_ids": inputs.input_ids[:, : encoded_end - first],
                "position_ids": inputs.position_ids[:, : encoded_end - first],
                "attention_mask": self._masks(real[:, :encoded_end], columns[None, :].expand(len(real), -1), None),
            }
        keys = real[:, : store.length]
        canvas_keys = torch.ones_like(offsets, dtype=torch.bool)
        decoder = self._masks(keys, offsets + first, canvas_keys)
        return self.model(
            cache=store,
            decoder_input_ids=inputs.input_ids.gather(1, offsets),
            decoder_position_ids=inputs.position_ids.gather(1, offsets),
            decoder_attention_mask=decoder,
            **encoder,
            **extras,
        ).logits

    def _masks(self, keys: torch.Tensor, queries: torch.Tensor, canvas: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """The ``[B, 1, Q, K]`` bool mask of each layer type.

        :param keys: ``[B, K]`` bool, the stored columns that are real (not padding).
        :param queries: ``[B, Q]`` long, the canvas column of each query.
        :param canvas: None for the encoder (causal: a query sees the real columns up to itself; a sliding layer
            only its last ``sliding_window``); else ``[B, L]`` bool keys of the decoder's canvas, appended after the
            stored ones, which every query sees, while a stored column is seen when it lies before the query's
            block (through a sliding layer, among the last ``sliding_window - 1`` of them).
        """
        columns = torch.arange(keys.shape[1], device=keys.device)[None, None, :]  # [1, 1, K]
        if canvas is None:
            at, reach = queries[:, :, None], self.sliding_window  # [B, Q, 1]
            visible = keys[:, None, :] & (columns <= at)
            alone = (columns == at) & ~keys.gather(1, queries)[:, :, None]  # a padding query sees itself only
        else:
            at, reach = queries[:, :1, None], self.sliding_window - 1  # the block's first column
            visible = keys[:, None, :] & (columns < at)
        masks = {}
        for kind in self.layer_types:
            mask = (
                visible & (columns > at - reach - int(canvas is not None)) if kind == "sliding_attention" else visible
            )
            if canvas is None:
                mask = mask | alone
            else:
                mask = torch.cat(
                    [mask.expand(-1, canvas.shape[1], -1), canvas[:, None, :].expand(-1, canvas.shape[1], -1)], -1
                )
            masks[kind] = mask[:, None]
        return masks


@dataclass
class SelfConditioningMemory:
    """Per batch: the last step's logits of each row's block ``[B, L, V]`` (None before the first step) and the
    block each row was in then (``[B]`` long)."""

    logits: torch.Tensor | None = None
    block_start: torch.Tensor | None = None


class DiffusionGemmaHooks:
    """The hooks a :class:`DiffusionGemmaLM` brings into its decoders: the self-conditioning state and the extras
    of its forward (see the module docstring)."""

    def __init__(self, dllm: DiffusionGemmaLM):
        self.dllm = dllm

    @hookimpl(wrapper=True)
    def dlm_model_inputs(self, state: DecodeState, window: Window, plan: ForwardPlan):
        inputs = yield
        if plan.end < state.input_limit:  # host ints: no synchronisation
            raise StrategyError(
                f"the forward ends at column {plan.end}, before the end of an unfinished row's block "
                f"({state.input_limit}); DiffusionGemma's decoder reads each row's whole block",
                "use decoder.window=full or blocks, and decoder.cache=prefix or none",
            )
        memory = state.memory(self, lambda state: SelfConditioningMemory())
        size = self.dllm.block_size
        start = state.model_block()[0]
        block_start = start.clamp(min=plan.start, max=plan.end - size)  # finished rows: anywhere in the span
        inputs.outputs = block_start[:, None] - plan.start + torch.arange(size, device=start.device)  # [B, L]
        extras: dict[str, Any] = {"real": state.attention_mask}
        if memory.logits is not None:
            extras["self_conditioning_logits"] = memory.logits
            extras["self_conditioning_mask"] = memory.block_start == start  # none at a block's first step
        memory.block_start = start
        inputs.extras = {**inputs.extras, **extras}
        return inputs

    @hookimpl(wrapper=True)
    def dlm_verify(self, state: DecodeState, forward: ForwardOutput, proposal: Proposal, window: Window):
        decision: Decision = yield
        memory = state.memory(self, lambda state: SelfConditioningMemory())
        outputs = forward.outputs
        assert outputs is not None  # the block's queries, set by dlm_model_inputs
        logits = forward.logits  # [B, L, V]: column outputs[b, j] + forward.start
        if proposal.sampling_logits is not None:  # where the proposal sampled, the logits it sampled from
            start = outputs[:, 0] + forward.start
            logits = logits.clone()
            logits[proposal.rows, proposal.cols - start[proposal.rows]] = proposal.sampling_logits
        logits = logits.to(self.dllm.embedding_dtype)
        running = ~state.finished[:, None, None]
        memory.logits = logits if memory.logits is None else torch.where(running, logits, memory.logits)
        return decision
