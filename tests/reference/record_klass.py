"""Record what the official KLASS decoder (KL-adaptive stability sampling) does on the tiny LLaDA checkpoint.

The companion of ``record.py`` for ``shkim0116/KLASS``'s ``src/model/llada_klass.py`` (``stable_confident_decode``
with ``alg="klass"``; arXiv 2511.05664). It loads the existing ``tests/reference/llada-tiny`` checkpoint (it does not
rebuild it) with the runnable copy of LLaDA's hub modeling code in Fast-dLLM (``llada/model/modeling_llada.py``, as
``record.py`` does), imports the official decoder from the path given, never copying it, and runs it at temperature
0 on ``PROMPTS`` (chat template applied, 32 new tokens)::

    TORCHDYNAMO_DISABLE=1 OMP_NUM_THREADS=1 /work/ref/venv/bin/python tests/reference/record_klass.py \
        --klass KLASS --fast-dllm Fast-dLLM --out tests/reference

``--klass`` is a checkout of ``shkim0116/KLASS``, ``--fast-dllm`` one of ``NVlabs/Fast-dLLM``; the environment is
``record.py``'s (torch 2.13 CPU, transformers 4.49). The fixtures were recorded from shkim0116/KLASS
ad87ecbe9fdef4a6e93701afbc150cb9213fbcd7 and NVlabs/Fast-dLLM 24cc59e75f20a6384bae8c905965bb090b96388e.

``stable_confident_decode`` ignores its ``mask_id`` argument and writes LLaDA-8B's mask id (126336) into the canvas,
which the tiny vocabulary (104 logits) cannot embed. The model is therefore called through :class:`MaskIdTranslation`,
which maps 126336 to the checkpoint's mask id before each forward and changes nothing else (the official code reads
``model.config.vocab_size`` for its history buffers, the tiny model having no ``lm_head`` attribute); any mask left in
the output would show as 126336.

The settings make the KL rule fire on the random-weight model, whose confidences are low and whose distributions move
from step to step: confidence thresholds 0.3-0.5 and KL thresholds 0.05-0.2 (the official scripts use 0.6-0.9 and
0.001-0.015 on the trained models), histories of 2 and 3 steps, blocks of 8 and one block of 32, and the three
``unmask_strategy`` values. Each case records the official ``used_steps`` besides the generated ids.

Writes ``official_klass.json``: repository and commit, each official file's SHA-256, the versions, the prompts and
their ids, and per case the decoder, its arguments and the generated ids. A rerun writes the same bytes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import GEN_LENGTH, OfficialFiles, recorder_parser, run_recorder, tiny_llada  # noqa: E402

REPOSITORY = "shkim0116/KLASS"
COMMIT = "ad87ecbe9fdef4a6e93701afbc150cb9213fbcd7"
OFFICIAL_MASK = 126336  # the id stable_confident_decode writes whatever its mask_id argument
#: (steps, block_length, conf_threshold, kl_threshold, kl_history_length, unmask_strategy)
SETTINGS = (
    (32, 8, 0.5, 0.05, 2, "all"),
    (32, 8, 0.3, 0.2, 3, "all"),
    (32, 32, 0.5, 0.2, 2, "max_conf"),
    (32, 8, 0.3, 0.2, 2, "min_kl"),
)


class MaskIdTranslation:
    """The tiny model seen by the official decoder: its mask id in place of LLaDA-8B's, nothing else."""

    def __init__(self, model, mask_id: int):
        self.model, self.mask_id, self.config = model, mask_id, model.config

    @property
    def device(self):
        return self.model.device

    def __call__(self, input_ids: torch.Tensor):
        return self.model(torch.where(input_ids == OFFICIAL_MASK, self.mask_id, input_ids))


def record(args: argparse.Namespace) -> None:
    official = OfficialFiles({"klass": args.klass, "fast-dllm": args.fast_dllm})
    modeling = official.fast_dllm_llada(args.fast_dllm)
    klass = official.load("klass_llada", args.klass / "src" / "model" / "llada_klass.py")

    config, tokenizer, model, prompts = tiny_llada(modeling, args.out)
    translated = MaskIdTranslation(model, config["mask_token_id"])

    cases = []
    for steps, block, conf, kl, history, strategy in SETTINGS:
        arguments = {
            "gen_length": GEN_LENGTH,
            "steps": steps,
            "block_length": block,
            "temperature": 0.0,
            "mask_id": config["mask_token_id"],
            "conf_threshold": conf,
            "kl_threshold": kl,
            "kl_history_length": history,
            "alg": "klass",
            "unmask_strategy": strategy,
        }
        for index, prompt in enumerate(prompts):
            with torch.no_grad():
                tokens, used_steps = klass.stable_confident_decode(
                    translated, tokenizer, torch.tensor([prompt]), **arguments
                )
            assert tokens[0, : len(prompt)].tolist() == prompt
            generated = tokens[0, len(prompt) :].tolist()
            assert OFFICIAL_MASK not in generated, "a mask was left in the output"
            cases.append(
                {
                    "model": "llada",
                    "decoder": "klass.llada_klass.stable_confident_decode",
                    "arguments": arguments,
                    "prompt": index,
                    "used_steps": used_steps,
                    "generated": generated,
                }
            )

    official.write_llada_fixture(
        args.out / "official_klass.json", REPOSITORY, COMMIT, prompts, cases, gen_length=GEN_LENGTH
    )


def main() -> None:
    run_recorder(recorder_parser(__doc__, "klass", "fast-dllm"), record)


if __name__ == "__main__":
    main()
