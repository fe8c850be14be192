"""Fast-dLLM's block-wise approximate key/value caches (Wu et al. 2025, arXiv 2505.22618, §3.2, Fig. 2).

Both caches keep the keys/values of every visible canvas column in a
:class:`~dlm_decode.models.kv_store.PositionalKVCache` and differ only in which columns a step recomputes:

* ``prefix`` (PrefixCache): the row's current block and everything after it; the keys/values before the block
  are reused.
* ``dual`` (DualCache): the row's current block only; the keys/values before *and after* it are reused and the
  block's are written in place (the official ``replace_position``).

**Refresh.** When a row enters a new block (``window.block_start`` differs from the previous step's, kept in the
batch's :class:`BlockCacheMemory`), the step's forward covers the whole visible canvas ``[0, window.input_end)``
for that row and stores all its keys/values; the same forward's logits serve the step, so every step is still one
dLLM forward (one NFE). Within a block nothing is refreshed: the reused keys/values were computed at the block's
first step, when the block was all masks, and keep that view of the block (the approximation; smaller blocks
refresh more often and approximate less). A row also refreshes when a column it reuses changed in the last step, which
happens when an EOS fills the rest of the row (the core writes ``fill_token_id`` after the first EOS) or when a
verifier revokes a token before the block. With a one-layer model the reused keys/values are then exact (a
layer-0 key depends only on its own token and position) and both caches decode exactly like ``none``.

**Batches.** Rows may be in different blocks and refresh at different steps, but a step has one forward. Its
query span is the one covering every unfinished row's recomputed columns: ``[min block_start, max block_end)``
for ``dual``, ``[min block_start, input_end)`` for ``prefix``, and the whole visible canvas when any row
refreshes. The store writes, per row, only that row's own columns (all of them for a refreshing row); at the
other columns the row's queries are computed but attend to, and leave, the row's stored keys/values. A row's
logits therefore do not depend on the other rows (batch invariance at temperature 0); the price is the compute
of the extra columns, up to a full forward for the whole batch whenever one row refreshes.

**Shifted-logit models** (Dream): there the prediction for column ``i`` comes from the hidden state at
``i - 1``, so the first column of a recomputed span needs the logit of the column before it, which the span does
not recompute. The Dream adapter (:mod:`dlm_decode.models.hf`) runs such a span one column earlier and drops the
extra logit, without writing that column's keys/values, so both caches mean the same for Dream; Fast-dLLM's Dream
code instead force-decodes the block's first column at the refresh, from the full forward's logits.

The paper uses blocks of 32 columns; PrefixCache + threshold 0.9 is its "Fast-dLLM" row, DualCache its fastest
at long generations (27.6x at length 1024 on LLaDA, GSM8K).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dlm_decode.api import DecodeState, ForwardPlan, PositionalKVCache, StrategyError, Window, hookimpl


@dataclass
class BlockCacheConfig:
    """``prefix`` and ``dual`` have no parameters (the block size is the window's: ``decoder.window.size``)."""


@dataclass
class BlockCacheMemory:
    """Per batch: the store of every visible column (None before the first forward) and each row's block start
    at the last step (``[B]`` long)."""

    store: PositionalKVCache | None = None
    block_start: torch.Tensor | None = None


class BlockCache:
    """Refresh every column at a row's block start, then recompute only the row's block (and, unless
    ``reuse_suffix``, everything after it) while reusing the stored keys/values of the rest.

    :param reuse_suffix: reuse the keys/values after the block too (``dual``) instead of recomputing them
        (``prefix``).
    """

    def __init__(self, reuse_suffix: bool):
        self.reuse_suffix = reuse_suffix

    @hookimpl
    def dlm_cache(self, state: DecodeState, window: Window) -> ForwardPlan:
        length = window.input_end
        memory = state.memory(self, lambda state: BlockCacheMemory())
        if memory.store is None or memory.store.length != length:
            memory.store, memory.block_start = PositionalKVCache(length), window.block_start
            memory.store.set_queries(0)
            return ForwardPlan(start=0, end=length, cache=memory.store, key_end=length)
        store = memory.store
        columns = state.columns[:length]
        first = window.block_start
        last = window.block_end if self.reuse_suffix else torch.full_like(first, length)
        own = (columns >= first[:, None]) & (columns < last[:, None])  # [B, length] recomputed per row
        stale = (state.changed[:, :length] & ~own).any(-1)
        running = ~state.finished
        refresh = running & ((first != memory.block_start) | stale)
        memory.block_start = first
        outside = (window.eligible[:, :length] & ~own).any()
        bounds = torch.stack([refresh.any().long(), outside.long(), first.masked_fill(~running, length).min(),
                              last.masked_fill(~running, 0).max()]).tolist()
        any_refresh, any_outside, span_start, span_end = bounds
        if any_outside:
            raise StrategyError("the window made a column eligible outside its row's block [window.block_start, "
                                "window.block_end); the prefix and dual caches recompute only the block",
                                "use decoder.window=blocks (or full)")
        start, end = (0, length) if any_refresh else (span_start, span_end)
        store.set_queries(start, (own | refresh[:, None])[:, start:end])
        return ForwardPlan(start=start, end=end, cache=store, key_end=length)


@hookimpl
def dlm_register(registry) -> None:
    registry.add("cache", "prefix", BlockCacheConfig, lambda config, context: BlockCache(reuse_suffix=False))
    registry.add("cache", "dual", BlockCacheConfig, lambda config, context: BlockCache(reuse_suffix=True))
