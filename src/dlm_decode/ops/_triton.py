"""Import shim for Triton: kernel modules import ``triton`` and ``tl`` from here.

Where Triton is not installed, ``HAS_TRITON`` is False and placeholders stand in for the few names a kernel
module touches at import time (the ``triton.jit`` decorator and the ``tl`` types in kernel signatures), so that
the kernel modules still import. Nothing launches a kernel unless ``HAS_TRITON`` is True: the dispatcher in
:mod:`dlm_decode.ops` checks it first.
"""

from __future__ import annotations

try:
    import triton
    import triton.language as tl
    from triton.runtime.interpreter import InterpretedFunction

    HAS_TRITON = True
except ImportError:
    HAS_TRITON = False

    class _TritonPlaceholder:
        """``triton`` without Triton: ``@triton.jit`` leaves the function as it is (it is never launched)."""

        @staticmethod
        def jit(fn=None, **options):
            return fn if fn is not None else (lambda inner: inner)

    class _LanguagePlaceholder:
        """``triton.language`` without Triton: the types kernel signatures name."""

        constexpr = float32 = float64 = int32 = None

    class InterpretedFunction:  # type: ignore[no-redef]  # Triton's class, where Triton is not installed
        """Never instantiated: no kernel is interpreted without Triton."""

    triton = _TritonPlaceholder()
    tl = _LanguagePlaceholder()

__all__ = ["HAS_TRITON", "InterpretedFunction", "tl", "triton"]
