"""Record what the official Prophet decoder (early answer commit) does on the tiny LLaDA checkpoint.

The companion of ``record.py`` for ``pixeli99/Prophet``'s ``generate_earlyexit.generate`` (arXiv 2508.19982). It
loads the existing ``tests/reference/llada-tiny`` checkpoint (it does not rebuild it) with the runnable copy of
LLaDA's hub modeling code in Fast-dLLM (``llada/model/modeling_llada.py``, as ``record.py`` does), imports the official
decoder from the path given, never copying it, and runs it at temperature 0 on ``PROMPTS`` (chat template applied,
32 new tokens)::

    TORCHDYNAMO_DISABLE=1 OMP_NUM_THREADS=1 /work/ref/venv/bin/python tests/reference/record_prophet.py \
        --prophet Prophet --fast-dllm Fast-dLLM --out tests/reference

``--prophet`` is a checkout of ``pixeli99/Prophet`` (``generate_earlyexit.py``), ``--fast-dllm`` one of
``NVlabs/Fast-dLLM``; the environment is ``record.py``'s (torch 2.13 CPU, transformers 4.49). The fixtures were
recorded from pixeli99/Prophet 460afe41c7063a29a9893675aca07b985997bb83 and NVlabs/Fast-dLLM
24cc59e75f20a6384bae8c905965bb090b96388e.

The official evaluation places the answer region two columns after the tokens it forces into the canvas; no token is
forced here (``constraints=None``), and ``answer_start_pos`` is the prompt length plus the offset recorded as
``answer_offset``. The four settings make the early commit fire on the random-weight model (whose logit gaps are a
few units): the official thresholds with the region at the start of the canvas, lower thresholds with the region
near its end, two tokens per step in two blocks, and one block for the whole canvas. Each case records the official
``exit_info`` (whether and at which 1-based step the early commit fired) besides the generated ids.

Writes ``official_prophet.json``: repository and commit, each official file's SHA-256, the versions, the prompts and
their ids, and per case the decoder, its arguments and the generated ids. A rerun writes the same bytes.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import GEN_LENGTH, OfficialFiles, recorder_parser, run_recorder, tiny_llada  # noqa: E402

REPOSITORY = "pixeli99/Prophet"
COMMIT = "460afe41c7063a29a9893675aca07b985997bb83"
#: (steps, block_length, answer offset from the first generated column, thresholds or None for the defaults)
SETTINGS = (
    (32, 8, 0, None),
    (32, 8, 24, {"early": 4.0, "mid": 3.0, "late": 2.0}),
    (16, 16, 8, {"early": 5.0, "mid": 4.0, "late": 3.0}),
    (16, 32, 0, None),
)


def record(args: argparse.Namespace) -> None:
    official = OfficialFiles({"prophet": args.prophet, "fast-dllm": args.fast_dllm})
    modeling = official.fast_dllm_llada(args.fast_dllm)
    prophet = official.load("prophet_generate_earlyexit", args.prophet / "generate_earlyexit.py")

    config, tokenizer, model, prompts = tiny_llada(modeling, args.out)

    cases = []
    for steps, block, offset, thresholds in SETTINGS:
        arguments = {
            "steps": steps,
            "gen_length": GEN_LENGTH,
            "block_length": block,
            "temperature": 0.0,
            "cfg_scale": 0.0,
            "remasking": "low_confidence",
            "mask_id": config["mask_token_id"],
            "analyze_gap": True,
            "answer_offset": offset,
            "early_exit_thresholds": thresholds,
        }
        for index, prompt in enumerate(prompts):
            call = {k: v for k, v in arguments.items() if k != "answer_offset"}
            with torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):  # it prints each early exit
                tokens, gap_data = prophet.generate(
                    model, torch.tensor([prompt]), answer_start_pos=len(prompt) + offset, **call
                )
            assert tokens[0, : len(prompt)].tolist() == prompt
            cases.append(
                {
                    "model": "llada",
                    "decoder": "prophet.generate_earlyexit.generate",
                    "arguments": arguments,
                    "prompt": index,
                    "exit_info": gap_data["exit_info"],
                    "generated": tokens[0, len(prompt) :].tolist(),
                }
            )

    official.write_llada_fixture(
        args.out / "official_prophet.json", REPOSITORY, COMMIT, prompts, cases, gen_length=GEN_LENGTH
    )


def main() -> None:
    run_recorder(recorder_parser(__doc__, "prophet", "fast-dllm"), record)


if __name__ == "__main__":
    main()
