"""APD against one-token-per-step dLLM decoding and the AR model alone, on the same prompts in one run.

Prints accuracy, tokens per dLLM forward, AR forwards and tokens/s for: the dLLM one token per step
(``configs/decoders/llada.yaml``), the AR model alone (greedy, HF ``generate`` with its key/value cache), and
APD (``configs/decoders/apd.yaml``) at each requested R. All three decode the same number of prompts at a
time (``--batch-size``, default 1: one request at a time, the latency setting of the APD paper's speed figures).
Every decoder runs ``--repeats`` times, in turn, and its best tokens/s is reported (outputs do not change between
runs): on a shared machine the speed of a run drifts by 10-20%.

    python benchmarks/apd_headline.py [--per-task 50] [--r 0.5,0.7,0.9] [--batch-size 1] [--repeats 3] \
        [--device cpu] [key=value ...]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch

from dlm_decode.config import load_config
from dlm_decode.decoder import Decoder
from dlm_decode.eval.runner import evaluate
from dlm_decode.eval.tasks import TASKS, load_examples
from dlm_decode.models.adapter import DiffusionLM
from dlm_decode.models.causal import CausalLM


def ar_alone(ar: CausalLM, dllm: DiffusionLM, per_task: int, batch_size: int, max_new_tokens: int) -> dict:
    """Greedy AR decoding of the test prompts: accuracy and tokens/s (tokens counted up to the first EOS, over the
    seconds spent in ``generate``, as :func:`~dlm_decode.eval.runner.evaluate` counts decoding seconds)."""
    examples = load_examples(None, "test", per_task)
    tokenizer = dllm.tokenizer
    correct = tokens = 0
    wall = 0.0
    for first in range(0, len(examples), batch_size):
        chunk = examples[first : first + batch_size]
        encoded = dllm.encode([ex.prompt for ex in chunk])
        width = max(len(ids) for ids in encoded)
        input_ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(ids)) + ids for ids in encoded])
        attention = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in encoded])
        input_ids, attention = input_ids.to(ar.model.device), attention.to(ar.model.device)
        started = time.perf_counter()  # decoding time only, as evaluate() counts it for the dLLM decoders
        with torch.inference_mode():
            out = ar.model.generate(
                input_ids=input_ids,
                attention_mask=attention,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=dllm.eos_token_ids,
                pad_token_id=tokenizer.pad_token_id,
            )
        if out.is_cuda:
            torch.cuda.synchronize()
        wall += time.perf_counter() - started
        for ex, row in zip(chunk, out[:, width:].tolist()):
            end = next((i for i, t in enumerate(row) if t in dllm.eos_token_ids), len(row) - 1)
            tokens += end + 1
            correct += TASKS[ex.task].check(ex, dllm.decode(row[:end]))
    return {
        "accuracy": correct / len(examples),
        "tokens_per_forward": 1.0,
        "ar_forwards": float("nan"),
        "tokens_per_s": tokens / wall,
        "nfe": 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("overrides", nargs="*", help="overrides applied to the APD config")
    parser.add_argument("--per-task", type=int, default=50)
    parser.add_argument("--r", default="0.5,0.7,0.9", help="mixture weights R to run")
    parser.add_argument("--batch-size", type=int, default=1, help="prompts decoded together, for every decoder")
    parser.add_argument("--repeats", type=int, default=3, help="runs per decoder; tokens/s is the best run's")
    parser.add_argument("--device", default="cpu", help="device of both models for every decoder (cpu, cuda)")
    args = parser.parse_args()
    batch = f"generation.batch_size={args.batch_size}"
    device = f"model.dllm.device={args.device}"
    baseline = load_config("configs/decoders/llada.yaml", [batch, device])
    dllm = DiffusionLM.from_spec(baseline.config.model.dllm)
    apd_overrides = [batch, device, f"model.ar.device={args.device}", *args.overrides]
    apd_configs = {
        r: load_config("configs/decoders/apd.yaml", [*apd_overrides, f"decoder.verification.mixture_weight={r}"])
        for r in args.r.split(",")
    }
    ar = CausalLM.from_spec(next(iter(apd_configs.values())).config.model.ar)
    decoders = {
        "dLLM, 1 token/step (llada.yaml)": Decoder(baseline, dllm=dllm),
        "AR model alone (greedy, KV cache)": None,
        **{f"APD R={r} ({config.hash})": Decoder(config, dllm=dllm) for r, config in apd_configs.items()},
    }
    best: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for repeat in range(args.repeats):  # round-robin, so a slow spell of the machine hits every decoder
            for index, (name, decoder) in enumerate(decoders.items()):
                if decoder is None:
                    summary = ar_alone(
                        ar, dllm, args.per_task, args.batch_size, baseline.config.generation.max_new_tokens
                    )
                else:
                    summary = evaluate(decoder, f"{scratch}/{repeat}-{index}", limit=args.per_task, progress=False)
                if name not in best or summary["tokens_per_s"] > best[name]["tokens_per_s"]:
                    best[name] = summary
    rows = list(best.items())
    where = (
        torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
    )
    print(
        f"{args.per_task} test examples per task x {len(TASKS)} tasks, batch size {args.batch_size}, best of "
        f"{args.repeats} runs; torch {torch.__version__}, {where}"
    )
    print("| decoder | accuracy | tokens/dLLM forward | AR forwards/example | tokens/s |")
    print("|---|---:|---:|---:|---:|")
    for name, s in rows:
        print(
            f"| {name} | {100 * s['accuracy']:.1f} | {s['tokens_per_forward']:.2f} | {s['ar_forwards']:.1f} | "
            f"{s['tokens_per_s']:.1f} |"
        )


if __name__ == "__main__":
    main()
