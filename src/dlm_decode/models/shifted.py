"""Realigning shifted logits (Dream, Fast-dLLM v2), with and without a key/value cache.

Dream returns logits shifted by one (raw logit ``i`` predicts column ``i + 1``); :func:`realigned_logits` makes
``logits[:, i]`` predict input column ``i``, as for every other family.

Without a cache the forward covers columns ``[0, end)`` and the realigned logits are
``cat([raw[:, :1], raw[:, :-1]])`` (column 0 is a prompt column and never decided). With a cache the forward covers
only ``[start, end)``, and the prediction for column ``start`` lives at column ``start - 1``, outside the span. The
adapter then runs the span one column earlier, ``[start - 1, end)``, and drops the extra logit: the extra query
reads the token and position of column ``start - 1`` from a record the adapter keeps on the cache object (every
cached forward writes its span's tokens and positions there; the first one covers ``[0, end)``), and attends like a
query of the span (or to itself only, when it is left padding). Its key/value is *not* written: the keys/values the
cache strategy froze before ``start`` stay frozen, so ``kv_window(W)``, ``prefix`` and ``dual`` mean what they say
for Dream too, and with a one-layer model (whose keys/values do not depend on context) every cache decodes exactly
like ``none``. For the positional store (all the built-in caches) the write mask simply excludes the extra column;
for an appending ``DynamicCache`` (which a cache plugin may pass: see :class:`~dlm_decode.state.ForwardPlan`) the
extra column's fresh key/value is appended as a duplicate that no query attends to and is removed after the forward.
This costs one extra query column per forward. Fast-dLLM's Dream code instead force-decodes the block's first column
at each refresh; WINO's shadow block (extra query positions) has no shifted-logit equivalent and is refused.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from dlm_decode.errors import ModelError
from dlm_decode.masks import AttentionPattern
from dlm_decode.state import ModelInputs

#: One forward in the model's calling convention: ``(ids [B, S], positions [B, S], mask [B, 1, S, K] bool,
#: cache, outputs [B, W] long or None) -> [B, S, V]`` raw logits (``[B, W, V]`` at the ``outputs`` queries).
RunForward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, Any, torch.Tensor | None], torch.Tensor]


def realigned_logits(
    run: RunForward,
    inputs: ModelInputs,
    cache: Any,
    family: str,
    attention: AttentionPattern,
    outputs: torch.Tensor | None = None,
) -> torch.Tensor:
    """``[B, S, V]`` logits of a shifted-logit model over ``inputs``, ``logits[:, i]`` predicting column
    ``inputs.start + i`` (see the module docstring); with ``outputs`` (``[B, W]`` long queries), ``[B, W, V]``,
    ``logits[b, j]`` predicting query ``outputs[b, j]``: the head reads the raw column before each query's (the
    query's own column in the run one column earlier of a cached span; column 0 for query 0 without one).

    :param run: the adapter's forward (:data:`RunForward`). :param family: the family's name, for errors.
    :param attention: the model's attention pattern (a block-causal span's previous column sees earlier columns
        only).
    :raises ModelError: for extra query positions (WINO's shadow block), a span after column 0 without a cache, a
        cache this adapter did not fill from column 0, or a cache that is neither appending nor positional.
    """
    ids, positions, mask, start = inputs.input_ids, inputs.position_ids, inputs.attention_mask, inputs.start
    if ids.shape[1] != inputs.end - start:
        raise ModelError(
            f"extra query positions (WINO's shadow block) have no meaning for a shifted-logit "
            f"model ({family}): the prediction for a column comes from the hidden state of "
            "the column before it",
            fix="use another verification than wino with this model",
        )
    if start == 0:
        raw = run(ids, positions, mask, cache, None if outputs is None else (outputs - 1).clamp(min=0))
        if cache is not None:
            _ColumnRecord.write(cache, 0, ids, positions)
        return raw if outputs is not None else torch.cat([raw[:, :1], raw[:, :-1]], dim=1)
    if cache is None:
        raise ModelError(
            f"a forward over columns [{start}, {inputs.end}) without a cache cannot realign the "
            f"shifted logits of {family}: column {start}'s prediction comes from column "
            f"{start - 1}",
            fix="report this cache strategy; spans starting after column 0 need a cache",
        )
    record = getattr(cache, _ColumnRecord.ATTRIBUTE, None)
    if record is None or record.tokens.shape[1] < start:
        raise ModelError(
            f"the cache was not filled by a forward from column 0 through this adapter, so column "
            f"{start - 1} (whose logit predicts column {start} in {family}) is unknown",
            fix="the cache strategy's first forward must cover the canvas from column 0",
        )
    previous = start - 1
    prev_ids = record.tokens[:, previous:start]
    prev_positions = record.positions[:, previous:start]
    real = mask[:, :, :1, previous:start]  # [B, 1, 1, 1]: the first query sees the previous column iff it is real
    alone = torch.zeros_like(mask[:, :, :1, :])
    alone[..., previous] = True
    prev_row = torch.where(real, mask[:, :, :1, :], alone)  # [B, 1, 1, K]
    # block-causal, a span starting a block: the column before it sees only earlier columns
    if attention.block_size is not None:
        starts_block = (positions[:, :1] % attention.block_size == 0)[:, None, :, None]  # [B, 1, 1, 1]
        earlier = torch.arange(mask.shape[-1], device=mask.device) < start
        prev_row = prev_row & (earlier | ~starts_block)
    all_ids = torch.cat([prev_ids, ids], dim=1)
    all_positions = torch.cat([prev_positions, positions], dim=1)
    all_mask = torch.cat([prev_row, mask], dim=2)  # [B, 1, S + 1, K]
    from dlm_decode.models.kv_store import PositionalKVCache  # imports transformers: only when needed

    if isinstance(cache, PositionalKVCache):
        write = cache.write if cache.write is not None else torch.ones_like(ids, dtype=torch.bool)
        cache.set_queries(previous, torch.cat([torch.zeros_like(write[:, :1]), write], dim=1), cache.key_end)
        raw = run(all_ids, all_positions, all_mask, cache, outputs)
    else:
        if not hasattr(cache, "layers") or cache.get_seq_length() != start or mask.shape[-1] != inputs.end:
            raise ModelError(
                f"unsupported cache {type(cache).__name__} for a shifted-logit model: expected an "
                f"appending DynamicCache holding columns [0, {start}) or a PositionalKVCache"
            )
        # keys: [0, start) cached, then the duplicate of `previous` (attended by no query), then [start, end)
        hidden = torch.zeros_like(all_mask[..., :1])
        all_mask = torch.cat([all_mask[..., :start], hidden, all_mask[..., start:]], dim=-1)
        raw = run(all_ids, all_positions, all_mask, cache, outputs)
        _drop_column(cache, start)
    _ColumnRecord.write(cache, start, ids, positions)
    return raw if outputs is not None else raw[:, :-1]


class _ColumnRecord:
    """Tokens and positions ``[B, L]`` of the canvas columns a cache's forwards covered, kept on the cache."""

    ATTRIBUTE = "_dlm_decode_columns"

    def __init__(self, tokens: torch.Tensor, positions: torch.Tensor):
        self.tokens, self.positions = tokens, positions

    @classmethod
    def write(cls, cache: Any, start: int, ids: torch.Tensor, positions: torch.Tensor) -> None:
        record = getattr(cache, cls.ATTRIBUTE, None)
        end = start + ids.shape[1]
        if record is None or record.tokens.shape[0] != ids.shape[0]:
            if start != 0:
                return
            record = cls(ids.new_zeros(ids.shape[0], 0), positions.new_zeros(ids.shape[0], 0))
        if record.tokens.shape[1] < end:
            grow = end - record.tokens.shape[1]
            record.tokens = torch.cat([record.tokens, ids.new_zeros(ids.shape[0], grow)], dim=1)
            record.positions = torch.cat([record.positions, positions.new_zeros(ids.shape[0], grow)], dim=1)
        record.tokens[:, start:end] = ids
        record.positions[:, start:end] = positions
        setattr(cache, cls.ATTRIBUTE, record)


def _drop_column(cache: Any, column: int) -> None:
    """Remove key/value column ``column`` from every layer of an appending HF cache."""
    for layer in cache.layers:
        if getattr(layer, "keys", None) is None or layer.keys.dim() != 4:
            continue
        layer.keys = torch.cat([layer.keys[..., :column, :], layer.keys[..., column + 1 :, :]], dim=-2)
        layer.values = torch.cat([layer.values[..., :column, :], layer.values[..., column + 1 :, :]], dim=-2)
