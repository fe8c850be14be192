"""A positional key/value store for Hugging Face attention: write at given canvas columns, read them all.

HF's :class:`~transformers.DynamicCache` appends: a forward's keys/values go after the cached ones, so a cache can
only hold a prefix of the canvas. Fast-dLLM's DualCache (Wu et al. 2025, arXiv 2505.22618, §3.2; the official
``replace_position`` argument of its modified LLaDA) also keeps the keys/values of the columns *after* the
queries. :class:`PositionalKVCache` implements the transformers 5.24 :class:`~transformers.Cache` interface for
that: every layer holds the keys/values of ``length`` canvas columns, a forward over queries ``[start, start + S)``
overwrites those columns in place (for the rows and columns its write mask selects) and attention reads columns
``[0, key_end)`` (all ``length`` unless :meth:`PositionalKVCache.set_queries` says fewer). The model is called as
usual with explicit ``position_ids`` ``[B, S]`` and a 4-D boolean attention mask ``[B, 1, S, key_end]``, which HF
Llama/Qwen2 pass to attention as is; the store itself never looks at positions.

Columns a row does not write keep the keys/values of an earlier forward, so that row's queries attend to those
(possibly stale) keys/values while other rows of the same forward write theirs: a batch whose rows recompute
different spans still decodes each row exactly as it would alone.
"""

from __future__ import annotations

import functools

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from dlm_decode.state import Relayout


class PositionalLayer(CacheLayerMixin):
    """One attention layer's keys/values for ``length`` columns: ``keys``, ``values`` ``[B, H, length, D]``."""

    def __init__(self, length: int):
        super().__init__()
        self.length = length

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        batch, heads, _, dim = key_states.shape
        self.device = key_states.device
        self.keys = key_states.new_zeros(batch, heads, self.length, dim)
        self.values = value_states.new_zeros(batch, heads, self.length, value_states.shape[-1])
        self.is_initialized = True

    def update(
        self,
        key_states: torch.Tensor,
        value_states: torch.Tensor,
        start: int = 0,
        write: torch.Tensor | None = None,
        key_end: int | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the queries' keys/values at columns ``[start, start + S)``; return those of columns
        ``[0, key_end)``.

        :param key_states: ``[B, H, S, D]``, likewise ``value_states``.
        :param write: ``[B, S]`` bool, the (row, query) pairs to store; None stores all of them.
        :param key_end: one past the last column returned (None: ``length``).
        :return: ``keys``, ``values`` ``[B, H, key_end, D]`` (views of the store, valid until the next write).
        """
        end = start + key_states.shape[-2]
        if end > self.length:
            raise ValueError(f"queries [{start}, {end}) run past the store's {self.length} columns")
        if not self.is_initialized:
            if start != 0 or write is not None:
                raise ValueError(
                    f"the first forward into a positional store must start at column 0 and write every "
                    f"row, got columns [{start}, {end})" + (" with a write mask" if write is not None else "")
                )
            self.lazy_initialization(key_states, value_states)
        keys, values = self.keys, self.values
        assert keys is not None and values is not None  # set by lazy_initialization
        if write is None:
            keys[:, :, start:end] = key_states
            values[:, :, start:end] = value_states
        else:
            selected = write[:, None, :, None]
            keys[:, :, start:end] = torch.where(selected, key_states, keys[:, :, start:end])
            values[:, :, start:end] = torch.where(selected, value_states, values[:, :, start:end])
        if key_end is None or key_end == self.length:
            return keys, values
        return keys[:, :, :key_end], values[:, :, :key_end]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.length, 0

    def get_seq_length(self) -> int:
        return self.length if self.is_initialized else 0

    def get_max_length(self) -> int:
        return self.length


class PositionalKVCache(Cache):
    """Keys/values of canvas columns ``[0, length)`` for every layer, written in place.

    Before each forward call :meth:`set_queries` with the first query column (and optionally a write mask); the
    first forward must start at column 0 and write every row. Columns no forward wrote yet hold zeros: the
    attention mask must hide them. Usage::

        store = PositionalKVCache(length)
        store.set_queries(0)                  # refresh: a full forward over [0, length) fills the store
        model(..., cache=store)
        store.set_queries(start, write)       # queries [start, start + S) attend to all `length` columns
        model(..., cache=store)
        store.set_queries(start, write, key_end=end)  # ... or to columns [0, end) only

    :param length: the number of columns stored (the largest key width of an attention mask).
    """

    def __init__(self, length: int):
        # transformers only calls it with no arguments, as a factory; its annotation asks for a class
        super().__init__(layer_class_to_replicate=functools.partial(PositionalLayer, length))  # type: ignore[arg-type]
        self.length = length
        self.start = 0
        self.write: torch.Tensor | None = None
        self.key_end = length

    def relayout(self, change: Relayout) -> PositionalKVCache:
        """Move the stored rows and columns to a regrouped batch's layout, in place (:meth:`DecodeState.regroup`):
        zeros for the joining rows and the new columns, which the attention mask hides until a forward writes
        them. A store of the whole canvas (``length == old_width``) keeps covering it; a shorter one moves with
        its columns.

        :return: this store.
        """
        length = (
            change.width if self.length == change.old_width else max(1, min(self.length + change.left, change.width))
        )
        for layer in self.layers:
            if isinstance(layer, PositionalLayer) and layer.is_initialized:
                assert layer.keys is not None and layer.values is not None  # set at initialization
                layer.keys = change.apply(layer.keys, 0, dim=2, width=length)
                layer.values = change.apply(layer.values, 0, dim=2, width=length)
            if isinstance(layer, PositionalLayer):
                layer.length = length
        self.length = self.key_end = length
        self.layer_class_to_replicate = functools.partial(PositionalLayer, length)  # type: ignore[assignment]
        return self

    def set_queries(self, start: int, write: torch.Tensor | None = None, key_end: int | None = None) -> None:
        """Make the next forward's queries canvas columns ``[start, start + S)``.

        :param write: ``[B, S]`` bool, the (row, column) pairs whose keys/values the forward stores; the others
            keep their stored keys/values, which that row's queries then attend to. None: store all.
        :param key_end: the queries attend to columns ``[0, key_end)`` (the attention mask's key width; None:
            all ``length``), so a store sized for the whole canvas serves a shorter input.
        """
        self.start, self.write = start, write
        self.key_end = self.length if key_end is None else key_end

    def get_mask_sizes(self, query_length: int, layer_idx: int) -> tuple[int, int]:
        return self.key_end, 0

    def update(
        self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int, *args, **kwargs
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Called by each HF attention layer with its new ``[B, H, S, D]`` keys/values; returns those of columns
        ``[0, key_end)``."""
        return super().update(
            key_states, value_states, layer_idx, start=self.start, write=self.write, key_end=self.key_end
        )
