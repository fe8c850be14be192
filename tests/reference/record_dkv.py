"""Record what the official dKV-Cache-Decode LLaDA decoder does on the tiny LLaDA checkpoint.

The companion of ``record.py`` for the ``dkv`` cache (:mod:`dlm_decode.strategies.adaptive_cache`). The official code
does not run on the transformers the project requires, so run this script once, in the environment ``record.py``
uses, with a checkout of ``horseee/dKV-Cache`` passed in as a path (nothing of it is copied into the repository)::

    TORCHDYNAMO_DISABLE=1 OMP_NUM_THREADS=1 /tmp/ref/bin/python tests/reference/record_dkv.py \
        --dkv-cache dKV-Cache --commit 49a76fcc43b744ec2d960137f216e419317138b1 --out tests/reference

It imports ``generation_utils/llada_dkv_cache_decode.py`` (``generate``) and the modified LLaDA modeling file it
needs, ``models/modeling_llada_dkv_cache_decode.py`` with ``models/configuration_llada.py``, loads the existing
``llada-tiny`` checkpoint (built by ``record.py``; this script does not rebuild it) in float32 on the CPU, and decodes
each of ``record.py``'s ``PROMPTS`` alone (chat template applied, 32 generated tokens, temperature 0, low-confidence
remasking) for a few block lengths and refresh intervals (``cache_reloading_step``).

It writes ``official_dkv.json``: the repository, the commit given on the command line and each official file's
SHA-256, the transformers/torch versions, the prompts and their ids, and per case the decoder's arguments, the
generated ids and two counts that show the rule at work: ``cached_forwards`` (forwards that reused keys/values) and
``differs_from_no_cache`` (generated positions whose token differs from the same decoder with ``enable_cache=False``,
i.e. LLaDA's own sampler on the same model).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import GEN_LENGTH, OfficialFiles, tiny_llada  # noqa: E402

REPOSITORY = "horseee/dKV-Cache"
#: (steps, block_length, cache_reloading_step) of the recorded cases.
SETTINGS = ((32, 8, 2), (32, 8, 4), (16, 32, 4))


def record(args: argparse.Namespace) -> None:
    import importlib

    torch.manual_seed(0)
    root = args.dkv_cache.resolve()
    official = OfficialFiles({"dkv-cache": root})
    sys.path.insert(0, str(root))  # the official files import `models.modeling_llada_dkv_cache_decode` etc.
    modeling = importlib.import_module("models.modeling_llada_dkv_cache_decode")
    official.record(root / "models" / "modeling_llada_dkv_cache_decode.py")
    official.record(root / "models" / "configuration_llada.py")
    decode = official.load("llada_dkv_cache_decode", root / "generation_utils" / "llada_dkv_cache_decode.py")

    config, tokenizer, model, prompts = tiny_llada(modeling, args.out)

    cached = [0]
    forward = model.forward

    def counting_forward(*a, **kw):  # a forward with use_cache=True reads the delayed keys/values
        cached[0] += bool(kw.get("use_cache"))
        return forward(*a, **kw)

    model.forward = counting_forward
    cases = []
    for steps, block, interval in SETTINGS:
        arguments = {
            "mask_id": config["mask_token_id"],
            "gen_length": GEN_LENGTH,
            "temperature": 0.0,
            "steps": steps,
            "block_length": block,
            "remasking": "low_confidence",
            "cache_reloading_step": interval,
        }
        for index, prompt in enumerate(prompts):
            with torch.no_grad():
                cached[0] = 0
                tokens = decode.generate(model, tokenizer, torch.tensor([prompt]), enable_cache=True, **arguments)
                reused = cached[0]
                plain = decode.generate(model, tokenizer, torch.tensor([prompt]), enable_cache=False, **arguments)
            generated = tokens[0, len(prompt) :].tolist()
            baseline = plain[0, len(prompt) :].tolist()
            cases.append(
                {
                    "decoder": "dkv_cache.llada_dkv_cache_decode.generate",
                    "arguments": arguments,
                    "prompt": index,
                    "generated": generated,
                    "cached_forwards": reused,
                    "differs_from_no_cache": sum(a != b for a, b in zip(generated, baseline)),
                }
            )

    official.write_llada_fixture(args.out / "official_dkv.json", REPOSITORY, args.commit, prompts, cases)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dkv-cache", type=Path, required=True, help="a checkout of horseee/dKV-Cache")
    parser.add_argument("--commit", required=True, help="the commit of that checkout (written into the fixture)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    record(parser.parse_args())


if __name__ == "__main__":
    main()
