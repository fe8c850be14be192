"""Wall time of the key/value caches against recomputing everything (``cache: none``).

For each canvas length (``generation.max_new_tokens``) and each cache, decodes the same test prompts with the
config (``-c``, default ``configs/decoders/apd.yaml``) and prints wall time, tokens/s, the speedup over
``cache: none``, the share of outputs identical to ``cache: none`` and the task accuracy. A cache is a name
(``prefix``, ``dual``) or ``kv_window:W``. The caches of one length run in turn, ``--repeats`` rounds, and each
prints its median wall time. Prompts whose canvas would exceed the model's context at the longest length are
left out of every length (the embedded models have 128 positions), and the count is printed.

    python benchmarks/caches.py [-c CFG] [key=value ...] [--caches kv_window:1000,kv_window:16] [--lengths 32,64]
    python benchmarks/caches.py -c configs/decoders/fast-dllm.yaml --caches prefix,dual --lengths 32,64,128
"""

from __future__ import annotations

import argparse
import statistics
import time

from dlm_decode.config import load_config
from dlm_decode.decoder import Decoder
from dlm_decode.eval.tasks import TASKS, load_examples
from dlm_decode.models.adapter import DiffusionLM


def timed(decoder: Decoder, prompts: list[str]):
    """One decoding of ``prompts``: (output, wall seconds)."""
    started = time.perf_counter()
    out = decoder.generate(prompts)
    return out, time.perf_counter() - started


def compare(configs: dict[str, object], dllm, examples, repeats: int) -> dict[str, tuple]:
    """Decode ``examples`` with every config, ``repeats`` rounds of one run per config in turn (so a drift of the
    machine's speed hits every config alike), after a warm-up batch each.

    :return: config name -> (token ids, median wall seconds, tokens/s at that wall, accuracy).
    """
    prompts = [ex.prompt for ex in examples]
    decoders = {name: Decoder(config, dllm=dllm) for name, config in configs.items()}
    for decoder in decoders.values():
        decoder.generate(prompts[: decoder.generation.batch_size])  # warm-up
    walls: dict[str, list[float]] = {name: [] for name in decoders}
    outputs = {}
    for _ in range(repeats):
        for name, decoder in decoders.items():
            outputs[name], wall = timed(decoder, prompts)
            walls[name].append(wall)
    results = {}
    for name, out in outputs.items():
        wall = statistics.median(walls[name])
        tokens = sum(s.generated_tokens for s in out.stats)
        accuracy = sum(TASKS[ex.task].check(ex, text) for ex, text in zip(examples, out.texts)) / len(examples)
        results[name] = (out.token_ids, wall, tokens / wall, accuracy)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--config", action="append", default=None)
    parser.add_argument("overrides", nargs="*")
    parser.add_argument(
        "--caches",
        default="kv_window:1000,kv_window:32,kv_window:16,kv_window:4,kv_window:1",
        help="caches to compare with cache none: names, or kv_window:W",
    )
    parser.add_argument("--lengths", default="32,64", help="generation.max_new_tokens values")
    parser.add_argument("--per-task", type=int, default=10, help="test examples per task")
    parser.add_argument("--repeats", type=int, default=5, help="rounds (an odd number)")
    args = parser.parse_args()
    sources = args.config or ["configs/decoders/apd.yaml"]
    lengths = [int(v) for v in args.lengths.split(",")]
    dllm = DiffusionLM.from_spec(load_config(sources, args.overrides).config.model.dllm)
    examples = load_examples(None, "test", args.per_task)
    fits = [len(ids) + max(lengths) <= dllm.max_context for ids in dllm.encode([ex.prompt for ex in examples])]
    if not all(fits):
        dropped = sorted({ex.task for ex, fit in zip(examples, fits) if not fit})
        print(
            f"{fits.count(False)} of {len(examples)} prompts left out (tasks {', '.join(dropped)}): with "
            f"{max(lengths)} new tokens their canvas exceeds the model's context of {dllm.max_context}"
        )
        examples = [ex for ex, fit in zip(examples, fits) if fit]
    print(f"{len(examples)} prompts, config {sources}, overrides {args.overrides}")
    print(
        f"{'max_new':>7} {'cache':>14} {'wall s':>8} {'tokens/s':>9} {'speedup':>8} {'same as none':>12} "
        f"{'accuracy':>9}"
    )
    for length in lengths:
        configs = {}
        for cache in ["none", *args.caches.split(",")]:
            name, _, window = cache.partition(":")
            overrides = [
                *args.overrides,
                f"generation.max_new_tokens={length}",
                f"decoder.cache={name}",
                *([f"decoder.cache.window={window}"] if window else []),
            ]
            configs[cache] = load_config(sources, overrides)
        results = compare(configs, dllm, examples, args.repeats)
        reference_ids, reference_wall = results["none"][:2]  # what the other caches are compared with
        for cache, (ids, wall, tps, acc) in results.items():
            same = sum(a == b for a, b in zip(ids, reference_ids)) / len(ids)
            print(
                f"{length:>7} {cache:>14} {wall:>8.2f} {tps:>9.1f} {reference_wall / wall:>8.2f} {same:>12.0%} "
                f"{acc:>9.1%}"
            )


if __name__ == "__main__":
    main()
