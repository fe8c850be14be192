"""Wall time of APD's windowed key/value cache against recomputing everything.

For each canvas length and each W, decodes the same test prompts with ``configs/decoders/apd.yaml`` (or
``-c``) and prints wall time, tokens/s, the speedup over ``cache: none``, the share of outputs identical to
``cache: none`` and the task accuracy.

    python benchmarks/kv_window.py [-c CFG] [key=value ...] [--windows 1000,32,16,4,1] [--lengths 32,64]
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
    parser.add_argument("--windows", default="1000,32,16,4,1", help="W values to compare with cache none")
    parser.add_argument("--lengths", default="32,64", help="generation.max_new_tokens values")
    parser.add_argument("--per-task", type=int, default=10, help="test examples per task")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    sources = args.config or ["configs/decoders/apd.yaml"]
    examples = load_examples(None, "test", args.per_task)
    dllm = DiffusionLM.from_spec(load_config(sources, args.overrides).config.model.dllm)
    print(f"{len(examples)} prompts, config {sources}, overrides {args.overrides}")
    print(f"{'max_new':>7} {'W':>6} {'wall s':>8} {'tokens/s':>9} {'speedup':>8} {'same as none':>12} {'accuracy':>9}")
    for length in [int(v) for v in args.lengths.split(",")]:
        base = [*args.overrides, f"generation.max_new_tokens={length}"]
        reference, base_wall, base_tps, base_acc = run(load_config(sources, [*base, "decoder.cache=none"]), dllm,
                                                       examples, args.repeats)
        print(f"{length:>7} {'none':>6} {base_wall:>8.2f} {base_tps:>9.1f} {1.0:>8.2f} {1.0:>12.0%} {base_acc:>9.1%}")
        for window in [int(v) for v in args.windows.split(",")]:
            config = load_config(sources, [*base, "decoder.cache=kv_window", f"decoder.cache.window={window}"])
            ids, wall, tps, acc = run(config, dllm, examples, args.repeats)
            same = sum(a == b for a, b in zip(ids, reference)) / len(ids)
            print(f"{length:>7} {window:>6} {wall:>8.2f} {tps:>9.1f} {base_wall / wall:>8.2f} {same:>12.0%} {acc:>9.1%}")


if __name__ == "__main__":
    main()
