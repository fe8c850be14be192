"""How much decoding wall time is spent outside the model forwards (the core's own overhead).

For each batch size (``--batch-sizes``, default 1 and 8) it decodes the same prompts with the real models and
clocks the time spent inside the forward of every model the decoder loaded (the dLLM, and an AR verifier where the
config has one), through forward hooks on those modules (CUDA is synchronised at each clock). Everything else —
hooks, scoring, state updates, checks, per-batch set-up and read-out — is outside, and the printed share is
``outside / total`` wall time.

A second column decodes the same prompts with a stand-in whose forward returns ready-made logits at no cost: the
core's time per step when nothing runs between its steps. On a CPU it is much lower than the real outside time,
because each forward streams the weights through the caches and the core's many small operations then start
cold. ``--stand-in-reads MB`` makes the stand-in's forward read a buffer of that size (its time is not counted
as outside): with about the model's weight size, the stand-in's outside time approaches the real one.

Each batch size is measured ``--repeats`` times after a warm-up run, and the run with the median share is
printed (the machine's speed drifts). Target: at most 5% with the tiny models. ``--breakdown`` adds the time of
each role hook in the real run (the timer's own cost included).

    python benchmarks/core_overhead.py [-c configs/decoders/llada.yaml] [key=value ...] [--prompts 32]
        [--batch-sizes 1,8]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import torch

from dlm_decode.decoder import Decoder
from dlm_decode.timing import HookTimer

PROMPTS = ["sort 4 1 7 9 3 8", "reverse paralel", "12+78=", "name a fruit", "sort 5 2 9", "98-23="]
HOOKS = ("dlm_window", "dlm_cache", "dlm_model_inputs", "dlm_propose", "dlm_verify")


class ForwardClock:
    """Accumulates the wall time spent inside the forwards of ``modules`` (pre- and post-forward hooks)."""

    def __init__(self, modules: list[torch.nn.Module]):
        on_cuda = any(parameter.is_cuda for module in modules for parameter in module.parameters())
        self.sync = torch.cuda.synchronize if on_cuda else (lambda: None)
        self.seconds = 0.0
        self._started = 0.0
        self.handles = [
            handle
            for module in modules
            for handle in (module.register_forward_pre_hook(self._start), module.register_forward_hook(self._stop))
        ]

    def _start(self, module, args) -> None:
        self.sync()
        self._started = time.perf_counter()

    def _stop(self, module, args, output) -> None:
        self.sync()
        self.seconds += time.perf_counter() - self._started

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


class FreeForward:
    """Stands in for a DiffusionLM: the same attributes, and a forward that costs (almost) nothing.

    It returns the same ready-made logits tensor for every forward of a given shape. The core writes ``-inf``
    into the mask token's column of the logits it gets, which changes nothing the second time, and the built-in
    strategies of the measured presets read the logits without writing them.

    :param read_mb: megabytes of a buffer each forward reads (0: none), timed in ``seconds`` like a forward.
    """

    def __init__(self, dllm, read_mb: float = 0.0):
        self.dllm = dllm
        self.generator = torch.Generator().manual_seed(0)
        self.by_shape: dict[tuple[int, int], torch.Tensor] = {}
        self.buffer = torch.ones(int(read_mb * 2**20) // 4) if read_mb else None
        self.seconds = 0.0

    def forward(self, inputs, cache=None):
        if self.buffer is not None:
            started = time.perf_counter()
            self.buffer.sum()
            self.seconds += time.perf_counter() - started
        shape = tuple(inputs.input_ids.shape)
        logits = self.by_shape.get(shape)
        if logits is None:
            logits = self.by_shape[shape] = torch.randn(*shape, self.dllm.vocab_size, generator=self.generator).to(
                self.dllm.device
            )
        return logits

    def __getattr__(self, name):
        return getattr(self.dllm, name)


@dataclass
class Run:
    """One decoding of the prompts: wall seconds, seconds inside model forwards, loop steps."""

    total: float
    forward: float
    steps: int

    @property
    def share(self) -> float:
        return (self.total - self.forward) / self.total

    @property
    def outside_per_step(self) -> float:
        return (self.total - self.forward) / self.steps


def timed_run(decoder: Decoder, prompts: list[str], batch_size: int, clock: ForwardClock | FreeForward) -> Run:
    """Decode ``prompts`` in batches of ``batch_size`` (one after another); ``clock.seconds`` counts the inside."""
    before = clock.seconds
    started = time.perf_counter()
    out = decoder.generate(prompts, batch_size=batch_size)
    total = time.perf_counter() - started
    steps = sum(max(s.nfe for s in out.stats[i : i + batch_size]) for i in range(0, len(prompts), batch_size))
    return Run(total, clock.seconds - before, steps)


def median_run(
    decoder: Decoder, prompts: list[str], batch_size: int, clock: ForwardClock | FreeForward, repeats: int
) -> Run:
    """The run with the median share of ``repeats`` runs after a warm-up run."""
    runs = [timed_run(decoder, prompts, batch_size, clock) for _ in range(repeats + 1)][1:]
    return sorted(runs, key=lambda run: run.share)[len(runs) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--config", action="append", default=None)
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--prompts", type=int, default=32, help="prompts per measurement")
    parser.add_argument("--repeats", type=int, default=5, help="measured runs per batch size (an odd number)")
    parser.add_argument("--batch-sizes", default="1,8", help="comma-separated batch sizes to measure")
    parser.add_argument("--breakdown", action="store_true", help="also time each role hook in the real run")
    parser.add_argument(
        "--stand-in-reads",
        type=float,
        default=0.0,
        metavar="MB",
        help="megabytes the stand-in's forward reads (to show the caches' effect)",
    )
    args = parser.parse_args()
    decoder = Decoder.from_config(args.config or ["configs/decoders/llada.yaml"], args.overrides)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.prompts)]
    real = decoder.dllm
    clock = ForwardClock([model for model in decoder.models if isinstance(model, torch.nn.Module)])
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, config {decoder.config.hash}, "
        f"model {decoder.config.config.model.dllm.path}"
    )
    header = (
        f"{'batch':>5} {'steps':>6} {'ms/step':>8} {'forward ms/step':>15} {'outside ms/step':>15} "
        f"{'outside %':>9} {'stand-in outside ms/step':>24}"
    )
    print(header + ("  " + "  ".join(f"{h.removeprefix('dlm_')} µs" for h in HOOKS) if args.breakdown else ""))
    for batch_size in [int(size) for size in args.batch_sizes.split(",")]:
        measured = median_run(decoder, prompts, batch_size, clock, args.repeats)
        decoder.dllm = stand_in = FreeForward(real, args.stand_in_reads)
        free = median_run(decoder, prompts, batch_size, stand_in, args.repeats)
        decoder.dllm = real
        per_step = measured.total / measured.steps
        line = (
            f"{batch_size:>5} {measured.steps:>6} {1000 * per_step:>8.3f} "
            f"{1000 * measured.forward / measured.steps:>15.3f} "
            f"{1000 * measured.outside_per_step:>15.3f} "
            f"{100 * measured.share:>8.1f}% {1000 * free.outside_per_step:>24.3f}"
        )
        if args.breakdown:
            timer = HookTimer()
            decoder.manager.register(timer)
            decoder.generate(prompts, batch_size=batch_size)
            decoder.manager.unregister(timer)
            line += "  " + "  ".join(f"{1e6 * timer.seconds[h] / timer.calls[h]:>{len(h) - 1}.0f}" for h in HOOKS)
        print(line)
    clock.remove()


if __name__ == "__main__":
    main()
