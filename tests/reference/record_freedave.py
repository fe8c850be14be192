"""Record what the official FreeDave code does on the tiny LLaDA checkpoint of ``record.py``.

FreeDave (Wu and Zhang, "Free Draft-and-Verification: Toward Lossless Parallel Decoding for Diffusion Large Language
Models", arXiv 2510.00294; code ``cychomatica/FreeDave``) decodes one token per step, but each forward also reads
``draft_steps - 1`` drafted canvases (the current canvas with its next 2, 3, ... most confident tokens filled); a
draft whose own next token is the one the previous draft predicted is accepted, so a forward can commit several
tokens and still give exactly the tokens of one-token-per-step decoding. This script runs the official decoder
(``generation/core.py``, ``DLMGeneration.block_decode_with_full_attention_FreeDave``), its one-token-per-step
baseline in the same file (``block_decode_with_full_attention`` with ``decoding_steps == max_gen_length``) and
LLaDA's own ``generate`` (one token per step, no cache) in a separate environment, with the official files passed
in as paths (nothing of them is copied into the repository)::

    python -m venv /tmp/ref && /tmp/ref/bin/pip install torch==2.13.0 transformers==4.49.0 einops accelerate deprecated
    TORCHDYNAMO_DISABLE=1 /tmp/ref/bin/python tests/reference/record_freedave.py \
        --freedave FreeDave --llada LLaDA --out tests/reference

``--freedave`` is a checkout of ``cychomatica/FreeDave`` (its ``generation/`` package and its own LLaDA modeling
files ``modeling/llada/{modeling_llada,configuration_llada}.py``, which the checkpoint is loaded with);
``--llada`` a checkout of ``ML-GSAI/LLaDA`` (``generate.py``). The committed fixtures were recorded from
cychomatica/FreeDave 8b48121 and ML-GSAI/LLaDA b7e6c35 with transformers 4.49 and torch 2.13 (CPU). Every case is
decoded at temperature 0, ``alg_temp=0`` (the most confident masked token first, the official evaluation's
setting), ``gen_length`` 32, ``early_exit=False`` (the whole canvas is decoded), one prompt at a time (the official
FreeDave asserts batch size 1).

The official code has no cache-free path: at each block start it makes a full forward into a ``DynamicCache``,
crops it to the prefix (prompt and earlier blocks) and decodes the block with forwards of ``[block, suffix]``
only, reading the prefix keys and values from that cache. Its LLaDA modeling file fills any ``Cache`` object it
is given, whatever ``use_cache`` says, so ``use_cache=False`` decodes exactly like ``use_cache=True`` (checked
below, and recorded under ``checks``). The FreeDave cases and their one-token-per-step baseline are therefore
recorded with that prefix cache (``use_cache=False, dual_cache=False``), which on a bidirectional model is an
approximation (the prefix's keys and values are those of the block-start canvas); ``llada.generate`` gives the
exact cache-free one-token-per-step tokens for the same blocks.

What it writes into ``--out``: ``official_freedave.json`` with the official files' SHA-256, the versions, the
prompts and their ids, per case the decoder, its arguments, the generated ids and the number of model forwards
the official code made (counted with FreeDave's own ``ForwardMonitor``), and ``checks`` (the losslessness of the
official FreeDave against its own baseline, and the ``use_cache`` / ``draft_mode`` equivalences).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import GEN_LENGTH, OfficialFiles, _write_json, recorder_parser, run_recorder, tiny_llada  # noqa: E402

#: (block_length, draft_steps) settings; every FreeDave case has its one-token-per-step baselines per block length.
BLOCKS = (8, 32)
DRAFT_STEPS = (1, 4, 8)
#: The commits the committed fixtures were recorded from (the SHA-256 of every file used are recorded too).
FREEDAVE_COMMIT = "8b48121c1af2509d2973a93ee0d4c5085dbfce31"
LLADA_COMMIT = "b7e6c3565f194352da44b38dd12b6970597309f3"


class Official(OfficialFiles):
    """FreeDave's ``generation`` package and LLaDA modeling files, and LLaDA's ``generate.py``."""

    def __init__(self, args: argparse.Namespace, scratch: Path):
        super().__init__({"freedave": args.freedave, "llada": args.llada})
        self.generation = self.package(
            scratch,
            "freedave_generation",
            args.freedave / "generation",
            ("core.py", "attn_utils.py", "cache_utils.py", "monitor_utils.py", "sampling_utils.py"),
        )
        self.modeling = self.package(
            scratch,
            "freedave_llada",
            args.freedave / "modeling" / "llada",
            ("configuration_llada.py", "modeling_llada.py"),
        )
        self.llada_generate = self.load("llada_generate", args.llada / "generate.py")


def record(args: argparse.Namespace) -> None:
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as scratch:
        official = Official(args, Path(scratch))
        config, _, model, prompts = tiny_llada(official.modeling["modeling_llada"], args.out)
        mask, eos, pad = config["mask_token_id"], config["eos_token_id"], config["pad_token_id"]
        core = official.generation["core"]
        monitor = official.generation["monitor_utils"].ForwardMonitor(model)
        # The official evaluation (eval/eval_llada.py) builds its generator so, for LLaDA's SDPA attention.
        generation = core.DLMGeneration(sdpa_additive_attention_mask=True, device=torch.device("cpu"))

        def call(method: str, prompt: list[int], arguments: dict) -> tuple[list[int], int]:
            ids = torch.tensor([prompt])
            with torch.no_grad(), monitor.count():
                if method == "llada.generate":
                    out = official.llada_generate.generate(model, ids, **arguments)
                else:
                    out = getattr(generation, method.split(".")[1])(
                        model=model, input_ids=ids, attention_mask=torch.ones_like(ids, dtype=torch.bool), **arguments
                    ).sequences
            return out[0, len(prompt) :].tolist(), monitor.get_nfe()

        cases, checks = [], {}

        def run(method: str, arguments: dict) -> list[list[int]]:
            rows = []
            for index, prompt in enumerate(prompts):
                generated, forwards = call(method, prompt, arguments)
                cases.append(
                    {
                        "decoder": method,
                        "arguments": arguments,
                        "prompt": index,
                        "generated": generated,
                        "forwards": forwards,
                    }
                )
                rows.append(generated)
            return rows

        common = {
            "temperature": 0.0,
            "top_p": None,
            "top_k": None,
            "alg_temp": 0.0,
            "max_gen_length": GEN_LENGTH,
            "decoding_steps": GEN_LENGTH,
            "use_cache": False,
            "dual_cache": False,
            "mask_token_id": mask,
            "eos_token_id": eos,
            "pad_token_id": pad,
            "confidence_threshold": None,
            "early_exit": False,
        }
        for block in BLOCKS:
            exact = run(
                "llada.generate",
                {
                    "steps": GEN_LENGTH,
                    "gen_length": GEN_LENGTH,
                    "block_length": block,
                    "temperature": 0.0,
                    "remasking": "low_confidence",
                    "mask_id": mask,
                },
            )
            baseline = run("freedave.block_decode_with_full_attention", {**common, "block_length": block})
            cached = [
                call(
                    "freedave.block_decode_with_full_attention", p, {**common, "block_length": block, "use_cache": True}
                )[0]
                for p in prompts
            ]
            checks[f"block {block}: baseline with use_cache=True equals use_cache=False"] = cached == baseline
            checks[f"block {block}: prefix-cached baseline equals llada.generate (no cache)"] = baseline == exact
            for draft in DRAFT_STEPS:
                arguments = {
                    **common,
                    "block_length": block,
                    "draft_steps": draft,
                    "eager_acceptance_mode": False,
                    "draft_mode": "tree_attention",
                }
                freedave = run("freedave.block_decode_with_full_attention_FreeDave", arguments)
                name = f"block {block}, draft_steps {draft}"
                checks[f"{name}: FreeDave equals its one-token-per-step baseline"] = freedave == baseline
                for variant in ({"use_cache": True}, {"draft_mode": "batch_expanding"}):
                    other = [
                        call("freedave.block_decode_with_full_attention_FreeDave", p, {**arguments, **variant})[0]
                        for p in prompts
                    ]
                    key, value = next(iter(variant.items()))
                    checks[f"{name}: {key}={value} gives the same tokens"] = other == freedave

    _write_json(
        args.out / "official_freedave.json",
        {
            "repositories": {
                "freedave": f"cychomatica/FreeDave {args.freedave_commit}",
                "llada": f"ML-GSAI/LLaDA {args.llada_commit}",
            },
            **official.provenance(),
            "prompt_ids": prompts,
            "checks": checks,
            "cases": cases,
        },
    )


def main() -> None:
    parser = recorder_parser(__doc__, "freedave", "llada")
    parser.add_argument("--freedave-commit", default=FREEDAVE_COMMIT, help="the commit --freedave holds")
    parser.add_argument("--llada-commit", default=LLADA_COMMIT, help="the commit --llada holds")
    run_recorder(parser, record, why="as for record.py")


if __name__ == "__main__":
    main()
