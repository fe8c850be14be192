"""How much decoding wall time is spent outside the dLLM forward (the core's own overhead).

For batch 1 and 8 it decodes the same prompts twice: with the real model, and with a stand-in whose forward
returns ready-made logits of the right shape at no cost. The stand-in run's time per step is the decoder's own
work (hooks, scoring, state updates, checks); its share of the real run's time per step is printed. The two runs
alternate, ``--repeats`` pairs, and the table shows the pair with the median share: the machine's speed drifts,
and a pair is measured within a few seconds, so both sides of a share see the same machine. Target: at most 5%
with the tiny models. ``--breakdown`` adds the time of each role hook (the timer's own cost included).

    python benchmarks/core_overhead.py [-c configs/decoders/llada.yaml] [key=value ...] [--prompts 32]
"""

from __future__ import annotations

import argparse
import time

import torch

from dlm_decode.decoder import Decoder
from dlm_decode.timing import HookTimer

PROMPTS = ["sort 4 1 7 9 3 8", "reverse paralel", "12+78=", "name a fruit", "sort 5 2 9", "98-23="]
HOOKS = ("dlm_window", "dlm_cache", "dlm_model_inputs", "dlm_propose", "dlm_verify")


class FreeForward:
    """Stands in for a DiffusionLM: the same attributes, and a forward that costs (almost) nothing.

    It returns the same ready-made logits tensor for every forward of a given shape. The core writes ``-inf``
    into the mask token's column of the logits it gets, which changes nothing the second time, and the built-in
    strategies of the measured presets read the logits without writing them.
    """

    def __init__(self, dllm):
        self.dllm = dllm
        self.generator = torch.Generator().manual_seed(0)
        self.by_shape: dict[tuple[int, int], torch.Tensor] = {}

    def forward(self, inputs, cache=None):
        shape = tuple(inputs.input_ids.shape)
        logits = self.by_shape.get(shape)
        if logits is None:
            logits = self.by_shape[shape] = torch.randn(*shape, self.dllm.vocab_size, generator=self.generator)
        return logits

    def __getattr__(self, name):
        return getattr(self.dllm, name)


def per_step(decoder: Decoder, prompts: list[str], batch_size: int) -> tuple[float, int]:
    """Seconds per step of one run over ``prompts``, and its number of steps (batches run one after another)."""
    started = time.perf_counter()
    out = decoder.generate(prompts, batch_size=batch_size)
    elapsed = time.perf_counter() - started
    steps = sum(max(s.steps for s in out.stats[i: i + batch_size]) for i in range(0, len(prompts), batch_size))
    return elapsed / steps, steps


def median_pair(decoder: Decoder, real, free, prompts: list[str], batch_size: int,
                repeats: int) -> tuple[float, float, int]:
    """Alternate a run with the real model and one with the stand-in, ``repeats`` times after a warm-up pair.

    :return: the real and the stand-in run's seconds per step in the pair with the median share, and the real
        run's steps.
    """
    pairs = []
    for _ in range(repeats + 1):
        decoder.dllm = real
        total, steps = per_step(decoder, prompts, batch_size)
        decoder.dllm = free
        outside, _ = per_step(decoder, prompts, batch_size)
        pairs.append((outside / total, total, outside, steps))
    measured = sorted(pairs[1:])  # the first pair warms up
    _, total, outside, steps = measured[len(measured) // 2]
    return total, outside, steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--config", action="append", default=None)
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--prompts", type=int, default=32, help="prompts per measurement")
    parser.add_argument("--repeats", type=int, default=5, help="measured pairs of runs (an odd number)")
    parser.add_argument("--breakdown", action="store_true", help="also time each role hook in the stand-in run")
    args = parser.parse_args()
    decoder = Decoder.from_config(args.config or ["configs/decoders/llada.yaml"], args.overrides)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.prompts)]
    real, free = decoder.dllm, FreeForward(decoder.dllm)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, config {decoder.config.hash}, "
          f"model {decoder.config.config.model.dllm.path}")
    header = f"{'batch':>5} {'steps':>6} {'ms/step':>8} {'outside ms/step':>15} {'outside %':>9}"
    print(header + ("  " + "  ".join(f"{h.removeprefix('dlm_')} µs" for h in HOOKS) if args.breakdown else ""))
    for batch_size in (1, 8):
        total, outside, steps = median_pair(decoder, real, free, prompts, batch_size, args.repeats)
        line = (f"{batch_size:>5} {steps:>6} {1000 * total:>8.3f} {1000 * outside:>15.3f} "
                f"{100 * outside / total:>8.1f}%")
        if args.breakdown:
            decoder.dllm = free
            timer = HookTimer()
            decoder.manager.register(timer)
            decoder.generate(prompts, batch_size=batch_size)
            decoder.manager.unregister(timer)
            line += "  " + "  ".join(f"{1e6 * timer.seconds[h] / timer.calls[h]:>{len(h) - 1}.0f}" for h in HOOKS)
        print(line)
    decoder.dllm = real


if __name__ == "__main__":
    main()
