"""Window strategies: which masked positions a step may decide.

* ``full``: every masked generated position (LLaDA with one block).
* ``blocks(size)``: semi-autoregressive blocks of ``size`` columns; a row moves to its next block once the
  current one has no mask left (LLaDA, Fast-dLLM, WINO).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dlm_decode.errors import check_field
from dlm_decode.hookspecs import hookimpl
from dlm_decode.state import DecodeState, Window


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

    @hookimpl
    def dlm_window(self, state: DecodeState) -> Window:
        masked = state.masked
        columns = state.columns
        if self.size is None:
            start = torch.full((state.batch_size,), state.gen_start, device=columns.device)
            end = torch.full_like(start, state.width)
            return Window(eligible=masked, input_end=state.width, block_start=start, block_end=end)
        frontier = torch.where(masked.any(-1), masked.int().argmax(-1), state.width - 1)
        start = state.gen_start + (frontier - state.gen_start).div(self.size, rounding_mode="floor") * self.size
        end = (start + self.size).clamp(max=state.width)
        eligible = masked & (columns < end[:, None])
        return Window(eligible=eligible, input_end=state.width, block_start=start, block_end=end)


@hookimpl
def dlm_register(registry) -> None:
    registry.add("window", "full", FullWindowConfig, lambda config, context: BlockWindow(None))
    registry.add("window", "blocks", BlocksConfig, lambda config, context: BlockWindow(config.size))
