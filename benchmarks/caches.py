"""Wall time of the key/value caches against recomputing everything (``cache: none``).

For each canvas length (``generation.max_new_tokens``) and each cache, decodes the same test prompts with the
config (``-c``, default ``configs/decoders/apd.yaml``) and prints wall time, tokens/s, the speedup over
``cache: none``, the share of outputs identical to ``cache: none`` and the task accuracy. A cache is a name
(``prefix``, ``dual``) or ``kv_window:W``.

    python benchmarks/caches.py [-c CFG] [key=value ...] [--caches kv_window:1000,kv_window:16] [--lengths 32,64]
    python benchmarks/caches.py -c configs/decoders/fast-dllm.yaml --caches prefix,dual --lengths 32,64,128
"""

from __future__ import annotations

import argparse
import time

from dlm_decode.config import load_config
from dlm_decode.decoder import Decoder
from dlm_decode.eval.tasks import TASKS, load_examples
from dlm_decode.models.hf import DiffusionLM


def run(config, dllm, examples, repeats: int):
    decoder = Decoder(config, dllm=dllm)
    prompts = [ex.prompt for ex in examples]
    decoder.generate(prompts[: decoder.generation.batch_size])  # warm-up
    started = time.perf_counter()
    for _ in range(repeats):
        out = decoder.generate(prompts)
    wall = (time.perf_counter() - started) / repeats
    tokens = sum(s.generated_tokens for s in out.stats)
    accuracy = sum(TASKS[ex.task].check(ex, text) for ex, text in zip(examples, out.texts)) / len(examples)
    return out.token_ids, wall, tokens / wall, accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--config", action="append", default=None)
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--caches", default="kv_window:1000,kv_window:32,kv_window:16,kv_window:4,kv_window:1",
                        help="caches to compare with cache none: names, or kv_window:W")
    parser.add_argument("--lengths", default="32,64", help="generation.max_new_tokens values")
    parser.add_argument("--per-task", type=int, default=10, help="test examples per task")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    sources = args.config or ["configs/decoders/apd.yaml"]
    examples = load_examples(None, "test", args.per_task)
    dllm = DiffusionLM.from_spec(load_config(sources, args.overrides).config.model.dllm)
    print(f"{len(examples)} prompts, config {sources}, overrides {args.overrides}")
    print(f"{'max_new':>7} {'cache':>14} {'wall s':>8} {'tokens/s':>9} {'speedup':>8} {'same as none':>12} "
          f"{'accuracy':>9}")
    for length in [int(v) for v in args.lengths.split(",")]:
        reference = None  # the first run, cache none: what the others are compared with
        for cache in ["none", *args.caches.split(",")]:
            name, _, window = cache.partition(":")
            overrides = [*args.overrides, f"generation.max_new_tokens={length}", f"decoder.cache={name}",
                         *([f"decoder.cache.window={window}"] if window else [])]
            ids, wall, tps, acc = run(load_config(sources, overrides), dllm, examples, args.repeats)
            reference = reference or (ids, wall)
            same = sum(a == b for a, b in zip(ids, reference[0])) / len(ids)
            print(f"{length:>7} {cache:>14} {wall:>8.2f} {tps:>9.1f} {reference[1] / wall:>8.2f} {same:>12.0%} "
                  f"{acc:>9.1%}")


if __name__ == "__main__":
    main()
