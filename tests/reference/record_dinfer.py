"""Record what dInfer's hierarchical and credit decoders do on the tiny LLaDA checkpoint.

The companion of ``record.py`` for the ``hierarchy`` and ``credit`` verification strategies
(:mod:`dlm_decode.strategies.dinfer`). dInfer's decoders (``HierarchyDecoder``, ``CreditThresholdParallelDecoder``)
run inside its block loop ``BlockWiseDiffusionLLM`` (no cache, no early stop); the model is the LLaDA hub code in
Fast-dLLM's runnable copy, loading ``llada-tiny`` as ``record.py`` does. Run it once, in the environment of
``record.py``, with the official files passed in as paths (nothing of them is copied into the repository)::

    TORCHDYNAMO_DISABLE=1 OMP_NUM_THREADS=1 /tmp/ref/bin/python tests/reference/record_dinfer.py \
        --dinfer dInfer --dinfer-commit <sha> --fast-dllm Fast-dLLM --out tests/reference

``--dinfer`` is a checkout of ``inclusionAI/dInfer``; three of its files are imported, as the package
``dinfer_decoding`` (symlinks in a temporary directory): ``python/dinfer/decoding/{utils,parallel_strategy,
generate_uniform}.py``. They import as they are, on the CPU, without stand-ins: the package's ``__init__`` (which
pulls in vLLM and SGLang through ``serving.py``) is not used, and ``TORCHDYNAMO_DISABLE=1`` turns the
``torch.compile`` decorators of ``parallel_strategy.py`` (and Fast-dLLM's attention) into plain calls.
``--fast-dllm`` is a checkout of ``NVlabs/Fast-dLLM`` (``llada/model/modeling_llada.py`` and
``configuration_llada.py``). The committed fixtures were recorded from inclusionAI/dInfer fce4e32 and NVlabs/Fast-dLLM
24cc59e with transformers 4.49.0 and torch 2.13 (CPU).

Each case decodes the 5 ``PROMPTS`` one at a time (batch size 1, as ``HierarchyDecoder`` requires), with a new
decoder object per prompt (the official credit decoder can keep credit across ``generate`` calls when early stop ends
the loop; see the strategy's docstring). The decoders get ``eos_id=-1``: they never read it, and with it
``TokenArray.get_generated_tokens`` returns the whole canvas instead of dropping every EOS token, so the fixtures hold
all ``GEN_LENGTH`` generated columns (the project's ``generation.stop_at_eos=false``).

It writes ``official_dinfer.json``: the official repository and commit, each official file's SHA-256, the
transformers and torch versions, the prompts and their ids, and per case the decoder, its arguments and the generated
ids. A rerun writes the same bytes.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import GEN_LENGTH, OfficialFiles, recorder_parser, run_recorder, tiny_llada  # noqa: E402

DECODING = ("utils.py", "parallel_strategy.py", "generate_uniform.py")

#: (block_length, threshold, low_threshold): thresholds under which the tiny model commits several positions per
#: step by both parts of the rule (peaks between the thresholds, positions above the high one).
HIERARCHY_CASES = ((8, 0.9, 0.4), (32, 0.95, 0.6), (16, None, 0.5))
#: (block_length, threshold, credit_alpha, boost_gamma, decay_beta): the official defaults, and a stronger, slower
#: decaying credit.
CREDIT_CASES = ((8, 0.9, 0.7, 0.2, 0.8), (32, 0.95, 0.7, 0.2, 0.8), (16, 0.97, 1.5, 0.5, 0.9))


def record(args: argparse.Namespace) -> None:
    torch.manual_seed(0)
    official = OfficialFiles({"dinfer": args.dinfer, "fast-dllm": args.fast_dllm})
    with tempfile.TemporaryDirectory() as scratch:
        decoding = official.package(Path(scratch), "dinfer_decoding", args.dinfer / "python/dinfer/decoding", DECODING)
        modeling = official.fast_dllm_llada(args.fast_dllm)
        config, _, model, prompts = tiny_llada(modeling, args.out)
        strategy, loop, utils = (decoding[name] for name in ("parallel_strategy", "generate_uniform", "utils"))

        cases = []

        def run(decoder_name: str, block_length: int, arguments: dict, make) -> None:
            for index, prompt in enumerate(prompts):
                decoder = make(**arguments)
                dllm = loop.BlockWiseDiffusionLLM(model, decoder, utils.BlockIteratorFactory(), early_stop=False)
                with torch.no_grad():
                    tokens = dllm.generate(torch.tensor([prompt]), gen_length=GEN_LENGTH, block_length=block_length)
                cases.append(
                    {
                        "decoder": decoder_name,
                        "arguments": {**arguments, "gen_length": GEN_LENGTH, "block_length": block_length},
                        "prompt": index,
                        "generated": tokens[0, len(prompt) :].tolist(),
                    }
                )

        common = {"temperature": 0.0, "mask_id": config["mask_token_id"], "eos_id": -1}
        for block, threshold, low in HIERARCHY_CASES:
            run(
                "dinfer.HierarchyDecoder",
                block,
                {**common, "threshold": threshold, "low_threshold": low},
                strategy.HierarchyDecoder,
            )
        for block, threshold, alpha, gamma, beta in CREDIT_CASES:
            run(
                "dinfer.CreditThresholdParallelDecoder",
                block,
                {**common, "threshold": threshold, "credit_alpha": alpha, "boost_gamma": gamma, "decay_beta": beta},
                strategy.CreditThresholdParallelDecoder,
            )

    official.write_llada_fixture(
        args.out / "official_dinfer.json", "inclusionAI/dInfer", args.dinfer_commit, prompts, cases
    )


def main() -> None:
    parser = recorder_parser(__doc__, "dinfer", "fast-dllm")
    parser.add_argument("--dinfer-commit", required=True, help="the commit of the --dinfer checkout")
    run_recorder(parser, record, why="dInfer's decoders and Fast-dLLM's attention use torch.compile")


if __name__ == "__main__":
    main()
