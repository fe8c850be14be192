"""The project's decoding loop against the official Fast-dLLM ``generate`` on the same model, prompts and outputs.

The official decoder runs in a process of its own (``--official-python``, default this interpreter; give another
virtual environment's python to run it under other packages), which imports ``llada/generate.py`` from a checkout of
NVlabs/Fast-dLLM (``--fast-dllm``; nothing of it is copied here) and loads the same checkpoint with transformers'
``AutoModelForCausalLM``. The project decodes with :class:`~dlm_decode.decoder.Decoder` at batch 1, one prompt at a
time, as a user calls it (tokenization and detokenization included). Both sides decode the same prompt ids; each
setting's rounds alternate official and project (``--rounds``, the median per prompt is kept), so a drift of the
machine's speed hits both alike. Every project output is compared with the official one token for token up to the
first EOS; a setting whose outputs differ is reported as such and its speed ratio is not meaningful.

Settings (the embedded dLLM, canvases of ``--new-tokens``; the official decoder has no attention mask, so batch 1).
The official threshold decoder is ``generate(threshold=0.9, block_length=8)`` (no cache) for the ``fast-dllm.yaml``
rows; LLaDA's one token per step is ``generate(steps=new_tokens, block_length=16)`` for the ``llada.yaml`` rows:

* the presets as shipped: ``fast-dllm.yaml`` (its dual cache; a row stops at its first EOS) and ``llada.yaml``;
* ``cache none``: the threshold rule without the cache;
* ``every position`` (``generation.stop_at_eos=false``): the same work as the official code, which decodes every
  position of the canvas whatever EOS it commits, so that only the cost of a step differs.

    python benchmarks/official_threshold.py --fast-dllm /path/to/Fast-dLLM [--per-task 4] [--rounds 5]
    python benchmarks/official_threshold.py --fast-dllm /path/to/Fast-dLLM [--per-task 4] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

import torch

FAST_DLLM = (["configs/decoders/fast-dllm.yaml"], {"threshold": 0.9, "block_length": 8})
LLADA = (["configs/decoders/llada.yaml"], {"threshold": None, "block_length": 16})
#: setting -> (config files, overrides, the official ``generate``'s arguments)
SETTINGS = {
    "fast-dllm.yaml": (FAST_DLLM[0], [], FAST_DLLM[1]),
    "fast-dllm.yaml, cache none": (FAST_DLLM[0], ["decoder.cache.name=none"], FAST_DLLM[1]),
    "fast-dllm.yaml, cache none, every position": (
        FAST_DLLM[0],
        ["decoder.cache.name=none", "generation.stop_at_eos=false"],
        FAST_DLLM[1],
    ),
    "llada.yaml": (LLADA[0], [], LLADA[1]),
    "llada.yaml, every position": (LLADA[0], ["generation.stop_at_eos=false"], LLADA[1]),
}


@dataclass
class Timed:
    """One decoding: generated ids up to and including the first EOS, its forwards and its wall seconds."""

    ids: list[int]
    nfe: int
    seconds: float


def cut_at_eos(ids: list[int], eos_ids: set[int]) -> list[int]:
    """``ids`` up to and including the first id in ``eos_ids``."""
    for index, token in enumerate(ids):
        if token in eos_ids:
            return ids[: index + 1]
    return ids


def official_worker(fast_dllm: str, model_dir: str) -> None:
    """Child process: read one JSON request per line from stdin, decode it with the official ``generate``, answer
    one JSON line (the full generated ids, the forwards and the wall seconds)."""
    sys.path.insert(0, f"{fast_dllm}/llada")
    from generate import generate  # the official module, imported from the checkout given
    from transformers import AutoModelForCausalLM

    torch.set_num_threads(torch.get_num_threads())
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    for line in sys.stdin:
        request = json.loads(line)
        prompt = torch.tensor([request["ids"]])
        new = request["new_tokens"]
        started = time.perf_counter()
        with torch.no_grad():
            out, nfe = generate(
                model,
                prompt,
                steps=new,
                gen_length=new,
                block_length=request["block_length"],
                temperature=0.0,
                mask_id=request["mask_id"],
                threshold=request["threshold"],
            )
        seconds = time.perf_counter() - started
        ids = out[0, prompt.shape[1] :].tolist()
        print(json.dumps({"ids": ids, "nfe": nfe, "seconds": seconds}), flush=True)


class Official:
    """The official decoder in its own process (see :func:`official_worker`)."""

    def __init__(self, python: str, fast_dllm: str, model_dir: str):
        self.process = subprocess.Popen(
            [python, __file__, "--worker", "--fast-dllm", fast_dllm, "--model-dir", model_dir],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def decode(self, ids: list[int], new_tokens: int, mask_id: int, options: dict, eos: set[int]) -> Timed:
        assert self.process.stdin and self.process.stdout
        self.process.stdin.write(json.dumps({"ids": ids, "new_tokens": new_tokens, "mask_id": mask_id, **options}))
        self.process.stdin.write("\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise SystemExit("the official decoder's process ended; its error is above")
        answer = json.loads(line)
        return Timed(cut_at_eos(answer["ids"], eos), answer["nfe"], answer["seconds"])

    def close(self) -> None:
        assert self.process.stdin
        self.process.stdin.close()
        self.process.wait()


def project_decode(decoder, prompt: str) -> Timed:
    started = time.perf_counter()
    out = decoder.generate([prompt], batch_size=1)
    seconds = time.perf_counter() - started
    return Timed(out.token_ids[0], out.stats[0].nfe, seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fast-dllm", required=True, help="a checkout of NVlabs/Fast-dLLM (its llada/generate.py)")
    parser.add_argument("--official-python", default=sys.executable, help="the python that runs the official code")
    parser.add_argument("--per-task", type=int, default=4, help="test prompts per task of the embedded suite")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per setting (an odd number)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        official_worker(args.fast_dllm, args.model_dir)
        return

    from dlm_decode.decoder import Decoder
    from dlm_decode.eval.tasks import load_examples
    from dlm_decode.models.embedded import embedded_model_dir

    prompts = [example.prompt for example in load_examples(None, "test", args.per_task)]
    official = Official(args.official_python, args.fast_dllm, str(embedded_model_dir("dllm")))
    print(f"torch threads {torch.get_num_threads()}; {len(prompts)} prompts, {args.new_tokens} new tokens, batch 1")
    print("| setting | identical outputs | forwards (project / official) | project ms | official ms | speed-up |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, (sources, overrides, options) in SETTINGS.items():
        decoder = Decoder.from_config(sources, [*overrides, f"generation.max_new_tokens={args.new_tokens}"])
        dllm = decoder.dllm
        eos = set(dllm.eos_token_ids)
        ids = dllm.encode(prompts)
        project_decode(decoder, prompts[0])  # warm-up, both sides
        official.decode(ids[0], args.new_tokens, dllm.mask_token_id, options, eos)
        mine: list[list[Timed]] = [[] for _ in prompts]
        theirs: list[list[Timed]] = [[] for _ in prompts]
        for _ in range(args.rounds):
            for index, prompt in enumerate(prompts):
                theirs[index].append(official.decode(ids[index], args.new_tokens, dllm.mask_token_id, options, eos))
                mine[index].append(project_decode(decoder, prompt))
        same = sum(m[0].ids == t[0].ids for m, t in zip(mine, theirs))
        nfe_mine = sum(m[0].nfe for m in mine)
        nfe_theirs = sum(t[0].nfe for t in theirs)
        ms_mine = sum(statistics.median(r.seconds for r in m) for m in mine) * 1000
        ms_theirs = sum(statistics.median(r.seconds for r in t) for t in theirs) * 1000
        print(
            f"| {name} | {same} of {len(prompts)} | {nfe_mine} / {nfe_theirs} | {ms_mine:.0f} | {ms_theirs:.0f} "
            f"| {ms_theirs / ms_mine:.2f}x |"
        )
    official.close()


if __name__ == "__main__":
    main()
