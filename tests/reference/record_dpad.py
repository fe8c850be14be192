"""Record what the official DPad code does on the tiny LLaDA checkpoint (``llada-tiny``, built by ``record.py``).

The companion of ``record.py`` for DPad ("DPad: Efficient Diffusion Language Models with Suffix Dropout", arXiv
2508.14148). Run it once, in the environment of ``record.py`` (torch 2.13 CPU, transformers 4.49, einops, numpy),
with a checkout of ``Crys-Chen/DPad`` passed as a path (nothing of it is copied into the repository)::

    TORCHDYNAMO_DISABLE=1 OMP_NUM_THREADS=1 /tmp/ref/bin/python tests/reference/record_dpad.py \
        --dpad DPad --out tests/reference

It imports DPad's ``llada/model`` (Fast-dLLM's LLaDA modeling file with a RoPE that takes the kept columns'
original positions), ``llada/sampler.py`` and ``llada/generate_dropout.py``, whose SHA-256 go into
``official_dpad.json``. The committed fixture was recorded from Crys-Chen/DPad 461b36e.

Two things are arranged around the official code, never changed in it:

* ``sampler.GaussianSampler.pdf`` builds its density with ``device='cuda'``; the ``torch`` name of the imported
  ``sampler`` module is replaced by a proxy whose ``linspace`` and ``zeros`` ignore the ``device`` argument (every
  other attribute is torch's), so it runs on the CPU.
* ``generate_dropout.suffix_dropout`` (called once per block) is wrapped to record the suffix columns it keeps, as
  distances from the block's end; the global torch generator is seeded before every prompt, so a rerun writes the
  same bytes. The official code draws from that global generator, which the project cannot reproduce: the cases
  with ``random: true`` are compared by giving the project these recorded kept sets (tests/test_dpad.py), the others
  keep every window column with probability >= 1 (a deterministic sliding window) and are compared as they are.

Every case decodes the 5 ``PROMPTS`` (chat template applied) with ``gen_length`` 32 in blocks of 8 at temperature 0,
``early_termination=False`` (the whole canvas is decoded, as the project does with ``generation.stop_at_eos=false``).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import GEN_LENGTH, OfficialFiles, recorder_parser, run_recorder, tiny_llada  # noqa: E402

BLOCK = 8
#: sigma 1, scale 5: every keep probability of the window is >= 5 * phi(1) = 1.21, so the window is kept whole.
WINDOW_ONLY = {"dropout": "gaussian", "sigma": 1.0, "scale": 5.0}


class _HostTorch:
    """``torch`` for ``sampler.py``: ``linspace`` and ``zeros`` on the CPU whatever ``device`` they are given."""

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def linspace(*args, device=None, **kwargs):
        return torch.linspace(*args, **kwargs)

    @staticmethod
    def zeros(*args, device=None, **kwargs):
        return torch.zeros(*args, **kwargs)


def record(args: argparse.Namespace) -> None:
    official = OfficialFiles({"dpad": args.dpad})
    llada_dir = args.dpad / "llada"
    sys.path.insert(0, str(llada_dir))  # generate_dropout.py imports `model.modeling_llada` and `sampler`
    modeling = importlib.import_module("model.modeling_llada")
    for name in ("model/__init__.py", "model/modeling_llada.py", "model/configuration_llada.py"):
        official.record(llada_dir / name)
    sampler = official.load("sampler", llada_dir / "sampler.py")
    sampler.torch = _HostTorch()
    generate = official.load("generate_dropout", llada_dir / "generate_dropout.py")

    kept: list[list[int]] = []  # the current prompt's kept suffix distances, one list per block
    original = generate.suffix_dropout

    def observed(x, sampler, block_end):
        q_indices, k_indices = original(x, sampler, block_end)
        kept.append((q_indices[0, block_end:] - block_end).tolist())
        return q_indices, k_indices

    generate.suffix_dropout = observed

    config, _, model, prompts = tiny_llada(modeling, args.out)
    base = {
        "gen_length": GEN_LENGTH,
        "block_length": BLOCK,
        "temperature": 0.0,
        "mask_id": config["mask_token_id"],
        "eos_id": config["eos_token_id"],
        "early_termination": False,
    }

    cases = []

    def run(function: str, arguments: dict, random: bool) -> None:
        call = getattr(generate, function)
        for index, prompt in enumerate(prompts):
            kept.clear()
            torch.manual_seed(index)
            with torch.no_grad():
                tokens, nfe = call(model, torch.tensor([prompt]), **base, **arguments)
            cases.append(
                {
                    "model": "llada",
                    "decoder": f"dpad.{function}",
                    "arguments": {**base, **arguments},
                    "random": random,
                    "prompt": index,
                    "nfe": nfe,
                    "kept": [list(k) for k in kept],
                    "generated": tokens[0, len(prompt) :].tolist(),
                }
            )

    topk = {"steps": GEN_LENGTH, "threshold": None}  # one token per step (the official "+DPad" rows)
    run("generate", {**topk, **WINDOW_ONLY, "window": 8}, random=False)
    run("generate", {"steps": GEN_LENGTH, "threshold": 0.5, **WINDOW_ONLY, "window": 4}, random=False)
    run("generate_with_prefix_cache", {**topk, **WINDOW_ONLY, "window": 8}, random=False)
    run("generate_with_dual_cache", {**topk, **WINDOW_ONLY, "window": 8}, random=False)
    run("generate", {**topk, "dropout": "gaussian", "sigma": 4.0, "scale": 2.0, "window": GEN_LENGTH}, random=True)
    run(
        "generate_with_dual_cache",
        {**topk, "dropout": "gaussian", "sigma": 4.0, "scale": 2.0, "window": 16},
        random=True,
    )
    run("generate", {**topk, "dropout": "uniform", "preserved_tokens": 3, "window": 12}, random=True)

    official.write_llada_fixture(args.out / "official_dpad.json", "Crys-Chen/DPad", args.commit, prompts, cases)


def main() -> None:
    parser = recorder_parser(__doc__, "dpad")
    parser.add_argument(
        "--commit",
        default="461b36e229219d322f5439786ee504cc72046828",
        help="the checkout's commit, written into the fixture",
    )
    run_recorder(parser, record, why="the official modeling file compiles its attention")


if __name__ == "__main__":
    main()
