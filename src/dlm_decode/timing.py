"""A cross-cutting plugin: per-hook wall time, measured with ``wrapper=True`` implementations.

Register a :class:`HookTimer` as an observer of a decoder (``Decoder(..., observers=[timer])``) and read
``timer.seconds`` (hook name -> seconds) and ``timer.calls`` after generating.
"""

from __future__ import annotations

import time
from collections import defaultdict

from dlm_decode.hookspecs import hookimpl


class HookTimer:
    """Wraps every role hook and the model-inputs hook, accumulating the time each takes."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)

    def _timed(self, name: str):
        started = time.perf_counter()
        try:
            return (yield)
        finally:
            self.seconds[name] += time.perf_counter() - started
            self.calls[name] += 1

    @hookimpl(wrapper=True)
    def dlm_window(self):
        return (yield from self._timed("dlm_window"))

    @hookimpl(wrapper=True)
    def dlm_cache(self):
        return (yield from self._timed("dlm_cache"))

    @hookimpl(wrapper=True)
    def dlm_model_inputs(self):
        return (yield from self._timed("dlm_model_inputs"))

    @hookimpl(wrapper=True)
    def dlm_propose(self):
        return (yield from self._timed("dlm_propose"))

    @hookimpl(wrapper=True)
    def dlm_verify(self):
        return (yield from self._timed("dlm_verify"))
