"""Scoring over the vocabulary: achieved bandwidth of the Triton kernels and their speedup over the native path.

For each op, at B·L positions × V ids × dtype (default: {256, 4096} × {32k, 152k} × {bf16, fp32}), it times the
native torch function and its one-pass Triton twin and prints milliseconds, achieved GB/s (the bytes the op must
move at least once: its inputs read, its outputs written, over the time), that as a share of the device's
measured copy bandwidth (a device-to-device ``copy_``, bytes read plus written), the speedup, and whether the two
agree (argmax-type outputs equal; probabilities and entropies within rtol 1e-4, atol 1e-5). On CUDA the L2 cache
is flushed before every timed call.

    python benchmarks/scoring.py                 # a CUDA device: native and Triton
    python benchmarks/scoring.py --native-only   # CPU: native only, 256 positions by default

On CPU with ``TRITON_INTERPRET=1`` (e.g. ``--positions 2 --vocab 300 --reps 1``) it also runs the kernels, under
the interpreter: a smoke test of the script, not a measurement.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch

from dlm_decode.ops import kernels, reference
from dlm_decode.ops._triton import HAS_TRITON, triton

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
WEIGHT, TEMPERATURE = 0.7, 0.8


@dataclass
class Inputs:
    """One configuration's tensors: ``[K, V]`` logits, AR logits and float64 noise, ``[K]`` tokens."""

    logits: torch.Tensor
    ar: torch.Tensor
    noise: torch.Tensor
    tokens: torch.Tensor


@dataclass
class Op:
    """A scoring op: its native and Triton callables on :class:`Inputs`, and the bytes it must move."""

    name: str
    native: Callable[[Inputs], object]
    triton: Callable[[Inputs], object]
    reads_noise: bool = False
    reads_ar: bool = False
    outputs: int = 1

    def bytes(self, x: Inputs) -> int:
        moved = x.logits.numel() * x.logits.element_size() + self.outputs * 8 * x.logits.shape[0]
        if self.reads_noise:
            moved += x.noise.numel() * x.noise.element_size()
        if self.reads_ar:
            moved += x.ar.numel() * x.ar.element_size()
        return moved


OPS = [
    Op(
        "stats",
        lambda x: reference.softmax_stats_native(x.logits),
        lambda x: kernels.softmax_stats_triton(x.logits),
        outputs=4,
    ),
    Op(
        "max_prob",
        lambda x: reference.max_prob_native(x.logits),
        lambda x: kernels.max_prob_triton(x.logits),
        outputs=2,
    ),
    Op(
        "token_prob",
        lambda x: reference.token_prob_native(x.logits, x.tokens),
        lambda x: kernels.token_prob_triton(x.logits, x.tokens),
    ),
    Op("entropy", lambda x: reference.entropy_native(x.logits), lambda x: kernels.entropy_triton(x.logits)),
    Op("margin", lambda x: reference.margin_native(x.logits), lambda x: kernels.margin_triton(x.logits)),
    Op(
        "gumbel_argmax",
        lambda x: reference.gumbel_argmax_native(x.logits, x.noise, TEMPERATURE),
        lambda x: kernels.gumbel_argmax_triton(x.logits, x.noise, TEMPERATURE),
        reads_noise=True,
    ),
    Op(
        "coupled_sample",
        lambda x: reference.coupled_sample_native(x.logits, x.ar, WEIGHT, x.noise, TEMPERATURE),
        lambda x: kernels.coupled_sample_triton(x.logits, x.ar, WEIGHT, x.noise, TEMPERATURE),
        reads_noise=True,
        reads_ar=True,
    ),
]


class Timer:
    """Median seconds per call on ``device``, after one warm-up call (which also compiles the kernels)."""

    def __init__(self, device: torch.device, reps: int):
        self.device, self.reps = device, reps
        self.flush = torch.empty(256 << 20, dtype=torch.uint8, device=device) if device.type == "cuda" else None

    def __call__(self, fn: Callable[[], object]) -> float:
        fn()
        times = []
        for _ in range(self.reps):
            if self.flush is None:
                started = time.perf_counter()
                fn()
                times.append(time.perf_counter() - started)
                continue
            self.flush.zero_()
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        return statistics.median(times)


def copy_bandwidth(timer: Timer, nbytes: int) -> float:
    """Bytes per second of a device-to-device copy of ``nbytes`` (read plus written)."""
    source = torch.ones(nbytes, dtype=torch.uint8, device=timer.device)
    target = torch.empty_like(source)
    return 2 * nbytes / timer(lambda: target.copy_(source))


def agree(a, b) -> bool:
    """Same outputs: exactly for integer tensors, within rtol 1e-4 / atol 1e-5 otherwise."""
    if isinstance(a, tuple):
        return all(agree(x, y) for x, y in zip(a, b) if x is not None or y is not None)
    if not a.is_floating_point():
        return torch.equal(a, b)
    return torch.allclose(a, b, rtol=1e-4, atol=1e-5, equal_nan=True)


def make_inputs(positions: int, vocab: int, dtype: torch.dtype, device: torch.device) -> Inputs:
    generator = torch.Generator(device=device).manual_seed(0)
    logits = (torch.randn(positions, vocab, generator=generator, device=device) * 3).to(dtype)
    ar = (torch.randn(positions, vocab, generator=generator, device=device) * 3).to(dtype)
    noise = -torch.empty(positions, vocab, dtype=torch.float64, device=device).exponential_(generator=generator).log()
    tokens = torch.randint(0, vocab, (positions,), generator=generator, device=device)
    return Inputs(logits, ar, noise, tokens)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--native-only", action="store_true", help="time the native functions only (any device)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--positions", type=int, nargs="+", help="B·L values (default: 256 4096; CPU: 256)")
    parser.add_argument("--vocab", type=int, nargs="+", default=[32000, 152064])
    parser.add_argument("--dtypes", nargs="+", choices=DTYPES, default=list(DTYPES))
    parser.add_argument("--ops", nargs="+", choices=[op.name for op in OPS], default=[op.name for op in OPS])
    parser.add_argument("--reps", type=int, help="timed calls per measurement (default: 20; CPU: 3)")
    args = parser.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if not args.native_only and not (HAS_TRITON and (cuda or kernels.INTERPRETED)):
        parser.error("the Triton kernels are timed on a CUDA device with Triton installed; pass --native-only")
    positions = args.positions or ([256, 4096] if cuda else [256])
    timer = Timer(device, args.reps or (20 if cuda else 3))
    copy = copy_bandwidth(timer, (1 << 30) if cuda else (256 << 20))
    print(
        f"device: {device_name(device)}; torch {torch.__version__}"
        + ("" if args.native_only else f", triton {triton.__version__}")
        + f"; copy bandwidth {copy / 1e9:.1f} GB/s"
    )
    columns = f"{'op':<15}{'dtype':<6}{'B·L':>6}{'V':>8}{'native ms':>11}{'GB/s':>8}{'% copy':>8}"
    if not args.native_only:
        columns += f"{'triton ms':>11}{'GB/s':>8}{'% copy':>8}{'speedup':>9}  agree"
    print(columns)
    for dtype in args.dtypes:
        for count in positions:
            for vocab in args.vocab:
                x = make_inputs(count, vocab, DTYPES[dtype], device)
                for op in (op for op in OPS if op.name in args.ops):
                    moved = op.bytes(x)
                    seconds = timer(partial(op.native, x))
                    row = (
                        f"{op.name:<15}{dtype:<6}{count:>6}{vocab:>8}{1e3 * seconds:>11.3f}"
                        f"{moved / seconds / 1e9:>8.1f}{100 * moved / seconds / copy:>7.1f}%"
                    )
                    if not args.native_only:
                        fast = timer(partial(op.triton, x))
                        row += (
                            f"{1e3 * fast:>11.3f}{moved / fast / 1e9:>8.1f}{100 * moved / fast / copy:>7.1f}%"
                            f"{seconds / fast:>8.2f}x  {'yes' if agree(op.native(x), op.triton(x)) else 'NO'}"
                        )
                    print(row, flush=True)
                del x
                if cuda:
                    torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
