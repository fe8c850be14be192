"""How much decoding wall time is spent outside the dLLM forward (the core's own overhead).

Runs ``generate`` with a decoder config at batch 1 and 8 and prints, per batch size, the wall time, the time
inside ``DiffusionLM.forward`` and the share spent elsewhere (hooks, scoring, state updates). Target: at most
5% with the tiny models.

    python benchmarks/core_overhead.py [-c configs/decoders/llada.yaml] [key=value ...] [--prompts 32]
"""

from __future__ import annotations

import argparse
import time

import torch

from dlm_decode.decoder import Decoder
from dlm_decode.timing import HookTimer

PROMPTS = ["sort: 41 7 19 3 88", "reverse: parallel", "123+789=", "name a fruit", "sort: 5 2 9", "987-123="]


class TimedModel:
    """Wraps a DiffusionLM, accumulating the seconds spent in ``forward``."""

    def __init__(self, dllm):
        self.dllm = dllm
        self.seconds = 0.0
        self.calls = 0

    def forward(self, inputs, cache=None):
        started = time.perf_counter()
        logits = self.dllm.forward(inputs, cache)
        self.seconds += time.perf_counter() - started
        self.calls += 1
        return logits

    def __getattr__(self, name):
        return getattr(self.dllm, name)


def measure(decoder: Decoder, prompts: list[str], batch_size: int, repeats: int, breakdown: bool):
    """-> (wall seconds, seconds inside forward, forward calls, HookTimer) over ``repeats`` generate calls.

    With ``breakdown`` a :class:`HookTimer` wraps the role hooks (its own cost then counts as overhead too).
    """
    timed = TimedModel(decoder.dllm)
    decoder.dllm = timed
    timer = HookTimer()
    try:
        decoder.generate(prompts[:batch_size], batch_size=batch_size)  # warm-up
        timed.seconds, timed.calls = 0.0, 0
        if breakdown:
            decoder.manager.register(timer)
        started = time.perf_counter()
        for _ in range(repeats):
            decoder.generate(prompts, batch_size=batch_size)
        total = time.perf_counter() - started
    finally:
        decoder.dllm = timed.dllm
        if breakdown:
            decoder.manager.unregister(timer)
    return total, timed.seconds, timed.calls, timer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--config", action="append", default=None)
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--prompts", type=int, default=32, help="prompts per measurement")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--breakdown", action="store_true", help="also time each hook (adds its own overhead)")
    args = parser.parse_args()
    decoder = Decoder.from_config(args.config or ["configs/decoders/llada.yaml"], args.overrides)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.prompts)]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, config {decoder.config.hash}, "
          f"model {decoder.config.config.model.dllm.path}")
    hooks = ("dlm_window", "dlm_cache", "dlm_model_inputs", "dlm_propose", "dlm_verify")
    header = f"{'batch':>5} {'forwards':>8} {'wall s':>8} {'forward s':>9} {'outside %':>9} {'ms/step outside':>15}"
    if args.breakdown:
        header += "  " + "  ".join(f"{h.removeprefix('dlm_')} µs" for h in hooks) + "  rest µs"
    print(header)
    for batch_size in (1, 8):
        total, inside, calls, timer = measure(decoder, prompts, batch_size, args.repeats, args.breakdown)
        outside = total - inside
        line = (f"{batch_size:>5} {calls:>8} {total:>8.2f} {inside:>9.2f} {100 * outside / total:>8.1f}% "
                f"{1000 * outside / max(calls, 1):>15.3f}")
        if args.breakdown:
            per_hook = [1e6 * timer.seconds[h] / max(calls, 1) for h in hooks]
            rest = 1e6 * outside / max(calls, 1) - sum(per_hook)
            line += "  " + "  ".join(f"{v:>{len(h) - 4 + 3}.0f}" for h, v in zip(hooks, per_hook)) + f"  {rest:>7.0f}"
        print(line)


if __name__ == "__main__":
    main()
