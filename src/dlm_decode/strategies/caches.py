"""Cache strategies: what the forward recomputes.

* ``none``: recompute every column the window lets the model see.
"""

from __future__ import annotations

from dataclasses import dataclass

from dlm_decode.hookspecs import hookimpl
from dlm_decode.state import DecodeState, ForwardPlan, Window


@dataclass
class NoCacheConfig:
    """``none`` has no parameters."""


class NoCache:
    """Recompute columns ``[0, window.input_end)`` every step."""

    @hookimpl
    def dlm_cache(self, state: DecodeState, window: Window) -> ForwardPlan:
        return ForwardPlan(start=0, end=window.input_end)


@hookimpl
def dlm_register(registry) -> None:
    registry.add("cache", "none", NoCacheConfig, lambda config, context: NoCache())
