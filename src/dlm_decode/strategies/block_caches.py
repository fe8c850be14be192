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
layer-0 key depends only on its own token and position) and both caches decode exactly like ``none``; with a
bidirectional model of two layers or more they are an approximation.

**Block-causal models** (:class:`~dlm_decode.masks.AttentionPattern`): the keys/values of a finished model block
depend only on it and the blocks before it, so once computed with its final tokens they are exact. The memory keeps,
per row, the column before which the stored keys/values are exact (the start of the row's current model block at
the last forward; no column before it changes again, since the core confines revocations to the current model
block and the EOS fill writes only after it). ``prefix`` then recomputes each row from that column to
the input end and never refreshes: it is exact, and gives the tokens of ``none``. ``dual`` recomputes the window's
(sub-)block only and refreshes from that column, not from 0; the columns of the current model block outside the
window's block are unfinished, so its reuse stays an approximation (none with a window as large as the model block).

**Batches.** Rows may be in different blocks and refresh at different steps, but a step has one forward. Its
query span is the one covering every unfinished row's recomputed columns: ``[min block_start, max block_end)``
for ``dual``, ``[min block_start, input_end)`` for ``prefix``, and the whole visible canvas when any row
refreshes (for a block-causal model: from the smallest exact end of the recomputing rows, never from column 0
after the first forward). The store writes, per row, only that row's own columns (all of them for a refreshing
row); at the other columns the row's queries are computed but attend to, and leave, the row's stored
keys/values. A row's logits therefore do not depend on the other rows (batch invariance at temperature 0); the
price is the compute of the extra columns, up to a full forward for the whole batch whenever one row refreshes.

**Shifted-logit models** (Dream): there the prediction for column ``i`` comes from the hidden state at
``i - 1``, so the first column of a recomputed span needs the logit of the column before it, which the span does
not recompute. The Dream adapter (:mod:`dlm_decode.models.shifted`) runs such a span one column earlier and drops the
extra logit, without writing that column's keys/values, so both caches mean the same for Dream; Fast-dLLM's Dream
code instead force-decodes the block's first column at the refresh, from the full forward's logits.

The paper uses blocks of 32 columns; PrefixCache + threshold 0.9 is its "Fast-dLLM" row, DualCache its fastest
at long generations (27.6x at length 1024 on LLaDA, GSM8K).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dlm_decode.api import (
    DecodeState,
    ForwardPlan,
    PositionalKVCache,
    Relayout,
    StrategyError,
    Window,
    first_true_columns,
    hookimpl,
)


@dataclass
class BlockCacheConfig:
    """``prefix`` and ``dual`` have no parameters (the block size is the window's: ``decoder.window.size``)."""


@dataclass
class BlockCacheMemory:
    """Per batch: the store (None before the first forward), each row's window block start at the last step and
    the columns before which its stored keys/values are exact (``[B]`` long each; always 0 for a bidirectional
    model), and the input width of the last step."""

    store: PositionalKVCache | None = None
    block_start: torch.Tensor | None = None
    exact_end: torch.Tensor | None = None
    length: int = 0

    def relayout(self, change: Relayout, state: DecodeState) -> BlockCacheMemory:
        """A joining row is in no block yet (-1): its first step refreshes it, a forward over its whole canvas
        (bidirectional models only, so ``exact_end`` is 0 everywhere)."""
        if self.store is None or self.block_start is None:
            return self
        store = self.store.relayout(change)
        exact_end = torch.zeros(change.batch_size, dtype=torch.long, device=self.block_start.device)
        return BlockCacheMemory(store, change.columns_of(self.block_start, -1), exact_end, store.length)


class BlockCache:
    """Reuse stored keys/values outside each row's recomputed columns (see the module docstring).

    :param reuse_suffix: reuse the keys/values after the window's block too (``dual``) instead of recomputing them
        (``prefix``).
    """

    def __init__(self, reuse_suffix: bool):
        self.reuse_suffix = reuse_suffix

    @hookimpl
    def dlm_cache(self, state: DecodeState, window: Window) -> ForwardPlan:
        length = window.input_end
        memory = state.memory(self, lambda state: BlockCacheMemory())
        block_causal = state.attention.block_causal
        settled = state.model_block()[0] if block_causal else torch.zeros_like(window.block_start)
        if memory.store is None or (not block_causal and memory.length != length):
            memory.store = PositionalKVCache(state.width if block_causal else length)
            memory.store.set_queries(0, key_end=length)
            memory.block_start, memory.exact_end, memory.length = window.block_start, settled, length
            return ForwardPlan(start=0, end=length, cache=memory.store, key_end=length)
        assert memory.exact_end is not None  # set with the store
        columns = state.columns[:length]
        changed = state.changed[:, :length]
        recompute_exact = columns >= memory.exact_end[:, None]  # [B, length]: every column that may be stale
        running = ~state.finished
        if block_causal and not self.reuse_suffix:
            own = recompute_exact  # exact: nothing before a row's current model block changes any more
        else:
            first = window.block_start
            last = window.block_end if self.reuse_suffix else torch.full_like(first, length)
            own = (columns >= first[:, None]) & (columns < last[:, None])
            stale = (changed & ~own).any(-1)
            refresh = running & ((first != memory.block_start) | stale)
            own = own | (refresh[:, None] & recompute_exact)
        active = own & running[:, None]
        spanned = active.any(0)
        bounds = torch.stack(
            [
                (window.eligible[:, :length] & ~own).any().long(),
                first_true_columns(spanned[None], length)[0],
                length - first_true_columns(spanned.flip(0)[None], length)[0],
            ]
        ).tolist()
        any_outside, start, end = bounds
        if any_outside:
            raise StrategyError(
                "the window made a column eligible outside its row's block [window.block_start, "
                "window.block_end); the prefix and dual caches recompute only the block",
                "use decoder.window=blocks (or full)",
            )
        memory.block_start, memory.exact_end, memory.length = window.block_start, settled, length
        memory.store.set_queries(start, active[:, start:end], key_end=length)
        return ForwardPlan(start=start, end=end, cache=memory.store, key_end=length)


@hookimpl
def dlm_register(registry) -> None:
    registry.add("cache", "prefix", BlockCacheConfig, lambda config, context: BlockCache(reuse_suffix=False))
    registry.add("cache", "dual", BlockCacheConfig, lambda config, context: BlockCache(reuse_suffix=True))
