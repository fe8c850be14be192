"""Window strategies: which masked positions a step may decide.

* ``full``: every masked generated position (LLaDA with one block).
* ``blocks(size)``: semi-autoregressive blocks of ``size`` columns; a row moves to its next block once the
  current one has no mask left (LLaDA, Fast-dLLM, WINO). Blocks are counted in ``state.block_coordinates``, so
  on a block-causal model they align with the model's blocks; there ``size`` must divide the model's block size
  (sub-blocks, as Fast-dLLM v2 decodes) or be a multiple of it (the core then keeps each step inside the model's
  current block), and any other size is refused.
* ``lookahead(max_lookahead)``: the first M masked columns from each row's frontier (its first mask), and the
  model input stops there (APD's maximum masked lookahead M, Israel et al. 2025). Rows see only their own
  lookahead, so a batch decodes each row as it would alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dlm_decode.api import DecodeState, Window, check_field, first_true_columns, hookimpl


@dataclass
class FullWindowConfig:
    """``full`` has no parameters."""


@dataclass
class BlocksConfig:
    size: int = 32
    """Columns per block, counted from the first generated column."""

    def __post_init__(self) -> None:
        check_field(self.size >= 1, "size", f"must be at least 1, got {self.size}")


class BlockWindow:
    """Eligible = the masked positions of each row's current block (one block spanning all when ``size`` is None).

    The current block of a row is the one holding its first masked generated column.
    """

    def __init__(self, size: int | None):
        self.size = size
        self._tables: tuple[tuple, tuple[torch.Tensor, torch.Tensor]] | None = None  # (layout, tables)

    def blocks(self, state: DecodeState) -> tuple[torch.Tensor, torch.Tensor]:
        """The start and end columns of the block holding each column: ``[N]`` long, or ``[B, N]`` when the rows'
        blocks lie at different columns (``state.block_coordinates`` per row). Only finished rows (frontier at
        column 0) read the prompt columns' entries, and their window is empty.

        ``[N]`` tables depend only on the canvas layout, so the last ones are kept for the next batch of that layout
        (read-only: consecutive batches of similar prompts skip a few small operations); ``[B, N]`` tables are kept
        for their batch."""
        coordinates = state.block_coordinates
        if coordinates.dim() == 2:  # per-row blocks: they depend on the batch's padding, kept for the batch
            return state.memory(self, lambda state: self._tables_for(state, coordinates))
        layout = (state.gen_start, state.width, state.canvas.device)
        kept = self._tables  # one read: another thread decoding with this plugin may replace it meanwhile
        if kept is None or kept[0] != layout:
            kept = self._tables = (layout, self._tables_for(state, coordinates))
        return kept[1]

    def _tables_for(self, state: DecodeState, coordinates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        size = self.size or state.width
        start = (state.columns - coordinates.remainder(size)).clamp(min=0)
        return start, (start + size).clamp(max=state.width)

    @hookimpl
    def dlm_window(self, state: DecodeState) -> Window:
        masked = state.masked
        starts, ends = self.blocks(state)
        # [B] first mask; a finished row has no mask left, so its frontier is column 0 and its window is empty
        frontier = first_true_columns(masked)
        if starts.dim() == 1:
            block_start, block_end = starts.index_select(0, frontier), ends.index_select(0, frontier)
        else:
            block_start, block_end = (table.gather(1, frontier[:, None]).squeeze(1) for table in (starts, ends))
        # every mask of a row lies at or after its frontier, so at or after its block's start
        return Window(
            eligible=masked & (state.columns < block_end.unsqueeze(1)),
            input_end=state.width,
            block_start=block_start,
            block_end=block_end,
            width=self.size,
        )


def block_window(config: BlocksConfig, context) -> BlockWindow:
    """``blocks(size)``, refused when its blocks cannot nest with a block-causal model's blocks."""
    context.check_window_blocks(config.size, "window")
    return BlockWindow(config.size)


@dataclass
class LookaheadConfig:
    max_lookahead: int | None = None
    """M: masked columns fed and eligible after the frontier (null: all of them)."""

    def __post_init__(self) -> None:
        check_field(
            self.max_lookahead is None or self.max_lookahead >= 1,
            "max_lookahead",
            f"must be >= 1 or null, got {self.max_lookahead}",
        )


class LookaheadWindow:
    """Eligible = columns ``[frontier, frontier + M)`` of each row; the model sees nothing past them."""

    def __init__(self, max_lookahead: int | None):
        self.max_lookahead = max_lookahead

    @hookimpl
    def dlm_window(self, state: DecodeState) -> Window:
        masked = state.masked
        columns = state.columns
        frontier = first_true_columns(masked, state.gen_start)
        end = torch.where(masked.any(-1), frontier + (self.max_lookahead or state.width), state.gen_start)
        end = end.clamp(max=state.width)
        visible = columns < end[:, None]
        return Window(
            eligible=masked & visible,
            input_end=int(end.max()),
            block_start=frontier,
            block_end=end,
            visible=visible,
            width=self.max_lookahead,
        )


@hookimpl
def dlm_register(registry) -> None:
    registry.add("window", "full", FullWindowConfig, lambda config, context: BlockWindow(None))
    registry.add("window", "blocks", BlocksConfig, block_window)
    registry.add("window", "lookahead", LookaheadConfig, lambda config, context: LookaheadWindow(config.max_lookahead))
