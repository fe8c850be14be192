"""dKV-Cache-Decode: delayed key/value caching with a periodic full refresh (cache role, registered as ``dkv``).

dKV-Cache (Ma, Yu, Fang and Wang, *dKV-Cache: The Cache for Diffusion Language Models*, arXiv 2505.15781; official
code ``horseee/dKV-Cache`` at commit 49a76fcc43b744ec2d960137f216e419317138b1,
``generation_utils/llada_dkv_cache_decode.py`` with ``models/modeling_llada_dkv_cache_decode.py`` for LLaDA,
``generation_utils/dream_generation_utils.py`` for Dream) observes that a token's keys/values change little once the
token is decoded, but change a lot at the step it is decoded. Its *Decode* variant therefore caches a token's
keys/values **one step late**:

* a column decoded at step ``t`` is recomputed at step ``t + 1`` (its first forward as a real token) and its
  keys/values from that forward are stored; from step ``t + 2`` on they are reused, in every layer;
* every still-masked column is recomputed at every step (its logits are needed and its keys/values drift);
* the prompt (and left padding) is recomputed only at a refresh;
* a **refresh** recomputes every column and stores all keys/values.

**The rule here, per row.** The keys/values of every canvas column live in a
:class:`~dlm_decode.models.kv_store.PositionalKVCache` (``[B, H, N, D]`` per layer) and a ``[B, N]`` bool *stored*
mask says which columns hold keys/values of their current token. At each step a column is *recomputed* when it is
masked, when it is not stored (the store is cleared at every column whose token changed in the last step: commits,
revocations, EOS fill; so a column decoded at step ``t`` is recomputed at ``t + 1`` and reused from ``t + 2``, the
delayed caching), or when the row refreshes (all its visible columns). The forward's query span is the smallest
``[start, end)`` covering every unfinished row's recomputed columns, and the store writes, per row, only that row's
recomputed columns: the other columns of the span are computed as queries (their logits are not used) but their
keys/values stay the stored ones, which the recomputed queries attend to, exactly as the official model attends to
``cat([fresh keys of the recomputed columns, cached keys])``. A row therefore decodes as it would alone (batch
invariance) and every step is one forward (one NFE). What the span shape costs: decoded columns between recomputed
ones are computed but not stored (the official model gathers only the recomputed columns into its forward); the
tokens are the same, the speed-up smaller.

**Refresh schedule** (``schedule``), with ``interval`` R (the official ``cache_reloading_step`` / ``cache_steps``):

* ``block`` (LLaDA's official loop, the default): the counter ``i`` is the row's step within its current block
  (``window.block_start``; it restarts at 0 when the row enters a new block); the row refreshes when ``i < 2`` or
  ``i % R == 0``. The official loop makes both first steps of a block full forwards (it starts caching at step 1);
  with the window ``full`` there is one block and ``i`` is the step.
* ``generation`` (Dream's official loop): the row refreshes when the decoder's step is a multiple of R (no block
  restart, no second full step).

``interval: 1`` refreshes at every step: the decoder then gives exactly the tokens of cache ``none``. With a
one-layer model the reused keys/values are exact too (a layer-0 key depends only on its own token and position, and a
column is stored only once it holds its token), so any interval gives the tokens of ``none``; with two layers or
more the reuse is an approximation.

**Departures.** Official code vs paper: the paper describes refreshing every N steps; the LLaDA code restarts the
counter at each block and also makes the block's second step a full forward (followed here, ``schedule: block``),
while the Dream code counts the steps of the whole generation (``schedule: generation``). The LLaDA code runs batches
only when every row has the same number of recomputed columns (it reshapes the gathered columns to ``[B, -1]``);
here each row has its own. Project vs official: for Dream (shifted logits: column ``j``'s prediction comes from the
hidden state at ``j - 1``) the official ``shift_type="un"`` keeps recomputing column ``j - 1`` while column ``j``
is masked; here the Dream adapter (:mod:`dlm_decode.models.shifted`) computes the hidden state at ``j - 1`` as a
query in the span but the rule stores by the column's own token, as for LLaDA (the official ``shift_type="right"``
choice of columns, not its default ``"un"``; the Dream path is not compared with the official Dream code). The
other official variants are not implemented: *Greedy* (caches at the decode step itself with a local recompute
window), *Prefill* and *PD* (the prompt never refreshed).

**Block-causal models** (``embedded:block``): the same rule applies unchanged; a finished model block's stored
keys/values are exact (they depend only on it and the blocks before it), so only the current model block's reuse is
an approximation. The store covers the whole canvas; columns that become visible later (the input grows with the
model block) are not stored yet and are recomputed at their first forward.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch

from dlm_decode.api import (
    DecodeState,
    ForwardPlan,
    PositionalKVCache,
    Window,
    check_field,
    first_true_columns,
    hookimpl,
)


class RefreshSchedule(enum.Enum):
    block = "block"
    generation = "generation"


@dataclass
class DKVCacheConfig:
    interval: int = 8
    """R: steps between full refreshes (the official ``cache_reloading_step``; 8 in its LLaDA example); 1 refreshes
    at every step (the tokens of cache ``none``)."""
    schedule: RefreshSchedule = RefreshSchedule.block
    """``block``: refresh when the row's step within its block is 0, 1 or a multiple of R (the official LLaDA loop);
    ``generation``: when the decoder's step is a multiple of R (the official Dream loop)."""

    def __post_init__(self) -> None:
        check_field(
            self.interval >= 1,
            "interval",
            f"must be >= 1, got {self.interval}",
            "use 1 to refresh at every step, or the number of steps between refreshes",
        )
        if isinstance(self.schedule, str):
            self.schedule = RefreshSchedule(self.schedule)


@dataclass
class DKVMemory:
    """Per batch: the store (None before the first forward), which columns hold the keys/values of their current
    token (``stored`` ``[B, N]`` bool), each row's window block start at its last step and its step count within that
    block (``[B]`` long each)."""

    store: PositionalKVCache | None = None
    stored: torch.Tensor | None = None
    block_start: torch.Tensor | None = None
    block_step: torch.Tensor | None = None


class DKVCache:
    """dKV-Cache-Decode (see the module docstring).

    :param interval: R, steps between full refreshes.
    :param schedule: which counter the refresh reads.
    """

    def __init__(self, interval: int, schedule: RefreshSchedule):
        self.interval = interval
        self.schedule = schedule

    def refreshing(self, state: DecodeState, window: Window, memory: DKVMemory) -> torch.Tensor:
        """``[B]`` bool, the rows whose step is a full refresh; advances the per-row block counters."""
        if self.schedule is RefreshSchedule.generation:
            return torch.full_like(window.block_start, state.step % self.interval == 0, dtype=torch.bool)
        assert memory.block_start is not None and memory.block_step is not None  # set at the first forward
        same_block = window.block_start == memory.block_start
        memory.block_step = torch.where(same_block, memory.block_step + 1, 0)
        memory.block_start = window.block_start
        return (memory.block_step < 2) | (memory.block_step % self.interval == 0)

    @hookimpl
    def dlm_cache(self, state: DecodeState, window: Window) -> ForwardPlan:
        end = window.input_end
        memory = state.memory(self, lambda state: DKVMemory())
        if memory.store is None:  # the batch's first forward fills the store from column 0 (block step 0)
            memory.store = PositionalKVCache(state.width)
            memory.store.set_queries(0, key_end=end)
            memory.stored = state.columns < end
            memory.stored = memory.stored.expand_as(state.canvas).clone()
            memory.block_start = window.block_start
            memory.block_step = torch.zeros_like(window.block_start)
            return ForwardPlan(start=0, end=end, cache=memory.store, key_end=end)
        refresh = self.refreshing(state, window, memory)  # [B]
        assert memory.stored is not None  # set at the first forward
        visible = state.columns < end  # [N]
        memory.stored &= ~state.changed  # a column whose token changed holds stale keys/values
        recompute = (state.masked | ~memory.stored | refresh[:, None]) & visible  # [B, N]
        active = recompute & ~state.finished[:, None]
        spanned = active.any(0)  # [N]
        # one host read: the span's bounds are Python ints (the forward slices the canvas with them)
        start, stop = torch.stack(
            [
                first_true_columns(spanned[None], end)[0],
                state.width - first_true_columns(spanned.flip(0)[None], state.width)[0],
            ]
        ).tolist()
        start, stop = min(start, end - 1), max(stop, start + 1)  # no unfinished row: the loop does not get here
        write = active[:, start:stop]  # per row, its recomputed columns; the others keep their stored keys/values
        memory.store.set_queries(start, write, key_end=end)
        memory.stored[:, start:stop] |= write
        return ForwardPlan(start=start, end=stop, cache=memory.store, key_end=end)


@hookimpl
def dlm_register(registry) -> None:
    registry.add("cache", "dkv", DKVCacheConfig, lambda config, context: DKVCache(config.interval, config.schedule))
