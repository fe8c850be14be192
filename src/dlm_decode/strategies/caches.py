"""Cache strategies: what the forward recomputes and which keys/values it reuses.

* ``none``: recompute every column the window lets the model see.
* ``kv_window(window)``: APD's windowed cache (Israel et al. 2025, App. B). Keys/values are recomputed from
  ``W - 1`` columns before the earliest column that changed in the last step (or is still masked) to the end
  of the input, and reused (frozen) before that. For left-to-right decoding this is exactly the official rule:
  the tokens just accepted, the ``W - 1`` decided tokens before them and every fed mask. Frozen keys/values were
  computed while their right context still held masks: the approximation trades quality for speed as ``W``
  shrinks. ``W`` at least the canvas width recomputes everything (equal to ``none``); null means the same.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dlm_decode.api import (
    DecodeState,
    ForwardPlan,
    PositionalKVCache,
    Relayout,
    Window,
    check_field,
    first_true_columns,
    hookimpl,
)


@dataclass
class NoCacheConfig:
    """``none`` has no parameters."""


@dataclass
class KVWindowConfig:
    window: int | None = 16
    """W: decided columns before the last change whose keys/values are recomputed (null: recompute all)."""

    def __post_init__(self) -> None:
        check_field(
            self.window is None or self.window >= 1,
            "window",
            f"must be >= 1 or null, got {self.window}",
            "W = 0 would freeze the keys/values of tokens computed while they were masks",
        )


class NoCache:
    """Recompute columns ``[0, window.input_end)`` every step."""

    @hookimpl
    def dlm_cache(self, state: DecodeState, window: Window) -> ForwardPlan:
        return ForwardPlan(start=0, end=window.input_end)


@dataclass
class KVWindowMemory:
    """Per batch: the store of every canvas column (None before the batch's first forward), and the rows that
    joined the batch since its last step (``[B]`` bool, None for none), whose keys/values the next forward computes
    from column 0."""

    store: PositionalKVCache | None = None
    joined: torch.Tensor | None = None

    def relayout(self, change: Relayout, state: DecodeState) -> KVWindowMemory:
        if self.store is None:
            return self
        joined = torch.arange(change.batch_size, device=change.rows.device) >= change.rows.shape[0]
        if self.joined is not None:
            joined |= change.rows_of(self.joined, True)
        return KVWindowMemory(self.store.relayout(change), joined)


class KVWindowCache:
    """Reuse the keys/values of columns decided more than ``W`` columns before the last change, per row.

    The keys/values live in a :class:`~dlm_decode.models.kv_store.PositionalKVCache` over the whole canvas. Each
    row recomputes from its own first column ``earliest - (W - 1)``; a step's forward starts at the smallest of
    them and writes, per row, only that row's columns, so a row's other queries attend to its own frozen
    keys/values and a row decodes as it would alone (batch invariance).
    """

    def __init__(self, window: int | None):
        self.window = window

    @hookimpl
    def dlm_cache(self, state: DecodeState, window: Window) -> ForwardPlan:
        if self.window is None:
            return ForwardPlan(start=0, end=window.input_end)
        end = window.input_end
        memory = state.memory(self, lambda state: KVWindowMemory())
        if memory.store is None:  # the batch's first forward fills the store from column 0
            memory.store = PositionalKVCache(state.width)
            memory.store.set_queries(0, key_end=end)
            return ForwardPlan(start=0, end=end, cache=memory.store, key_end=end)
        store = memory.store
        earliest = first_true_columns(state.masked | state.changed, state.width)
        first = (earliest - (self.window - 1)).clamp(min=0)  # [B] each row's first recomputed column
        if memory.joined is not None:  # rows that joined a running batch have no keys/values yet
            first, memory.joined = first.masked_fill(memory.joined, 0), None
        firsts = first.masked_fill(state.finished, -1).tolist()  # one host read; finished rows: -1, no constraint
        start = min(min(f for f in firsts if f >= 0), end - 1)
        # when every row recomputes from the start (always at batch 1) the forward writes all: no mask to apply
        write = None if max(firsts) <= start else state.columns[start:end] >= first[:, None]
        store.set_queries(start, write, key_end=end)
        return ForwardPlan(start=start, end=end, cache=store, key_end=end)


@hookimpl
def dlm_register(registry) -> None:
    registry.add("cache", "none", NoCacheConfig, lambda config, context: NoCache())
    registry.add("cache", "kv_window", KVWindowConfig, lambda config, context: KVWindowCache(config.window))
