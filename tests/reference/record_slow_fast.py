"""Record what the official SlowFast sampler does on the tiny LLaDA checkpoint (``tests/reference/llada-tiny``).

The companion of ``record.py`` for ``slow_fast`` (``dlm_decode.strategies.slow_fast``). The official sampler,
``generate_slow_fast_sampling`` of ``LiangrunFlora/Slow-Fast-Sampling`` (``slow-fast-sampling/sampling_utils/``),
runs on the LLaDA modeling code; that repository ships no modeling file of its own (it loads the hub code), so the
model is Fast-dLLM's runnable copy of LLaDA's hub code, as in ``record.py``. Run it once, in the environment of
``record.py`` plus ``matplotlib`` and ``seaborn`` (the sampler module imports them at its top)::

    TORCHDYNAMO_DISABLE=1 /tmp/ref/bin/python tests/reference/record_slow_fast.py \
        --slow-fast Slow-Fast-Sampling --fast-dllm Fast-dLLM --out tests/reference

``--slow-fast`` is a checkout of ``LiangrunFlora/Slow-Fast-Sampling``, ``--fast-dllm`` one of ``NVlabs/Fast-dLLM``.
The checkpoint is the existing ``llada-tiny`` (built by ``record.py``; it is read, not rebuilt). Each prompt is
decoded alone (batch size 1, as the official evaluation runs it: its batched bookkeeping shares span bounds across
rows), at temperature 0, for the official defaults and knob settings under which the tiny random model (often confident:
0.3 reaches across the whole canvas at once) settles spans of varying lengths. ``official_slow_fast.json`` gets the
repository commits (``--commit`` values), the official files' SHA-256, the versions, the prompts and their ids, and
per case the arguments, the generated ids and the official sampler's model-call count.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import GEN_LENGTH, OfficialFiles, _write_json, recorder_parser, run_recorder, tiny_llada  # noqa: E402

#: Knob settings: (block_length, k_exploration_steps, cycle_len_confidence_threshold, high_confidence_threshold,
#: cycle_length_stability_window, cycle_length_stability_std_dev_threshold).
CASES = (
    (32, 6, 0.3, 0.9, 2, 1.0),  # the official defaults (the evaluation decodes one block)
    (32, 2, 0.95, 0.9, 2, 1.0),
    (16, 3, 0.9, 0.8, 3, 2.0),
    (32, 1, 0.97, 0.95, 2, 1.0),  # fewer slow steps than estimates: the span end is the floored mean
)


def record(args: argparse.Namespace) -> None:
    official = OfficialFiles({"slow-fast": args.slow_fast, "fast-dllm": args.fast_dllm})
    root = args.slow_fast / "slow-fast-sampling"
    sys.path.insert(0, str(root))  # the sampler imports `dllm_cache` and `sampling_utils` from there
    for name in (
        "dllm_cache/__init__.py",
        "dllm_cache/cache/__init__.py",
        "dllm_cache/cache/Cache.py",
        "dllm_cache/cache/Config.py",
        "sampling_utils/__init__.py",
        "sampling_utils/plot_confidence_map.py",
        "sampling_utils/utils.py",
    ):
        official.record(root / name)
    sampler = official.load("slow_fast_sampler", root / "sampling_utils" / "generate_slow_fast_sampling.py")
    modeling = official.fast_dllm_llada(args.fast_dllm)

    config, _, model, prompts = tiny_llada(modeling, args.out)

    cases = []
    for block, steps, span, high, window, std in CASES:
        arguments = {
            "gen_length": GEN_LENGTH,
            "block_length": block,
            "temperature": 0.0,
            "cfg_scale": 0.0,
            "mask_id": config["mask_token_id"],
            "k_exploration_steps": steps,
            "cycle_len_confidence_threshold": span,
            "high_confidence_threshold": high,
            "cycle_length_stability_window": window,
            "cycle_length_stability_std_dev_threshold": std,
        }
        for index, prompt in enumerate(prompts):
            ids = torch.tensor([prompt])
            with torch.no_grad():
                out, calls, _ = sampler.generate_slow_fast_sampling(
                    input_ids=ids, attention_mask=torch.ones_like(ids), model=model, **arguments
                )
            cases.append(
                {
                    "decoder": "slow_fast.generate_slow_fast_sampling",
                    "arguments": arguments,
                    "prompt": index,
                    "model_calls": calls,
                    "generated": out[0].tolist(),
                }
            )

    _write_json(
        args.out / "official_slow_fast.json",
        {
            "repositories": {
                "LiangrunFlora/Slow-Fast-Sampling": args.slow_fast_commit,
                "NVlabs/Fast-dLLM": args.fast_dllm_commit,
            },
            **official.provenance(),
            "prompt_ids": prompts,
            "cases": cases,
        },
    )


def main() -> None:
    parser = recorder_parser(__doc__, "slow-fast", "fast-dllm")
    parser.add_argument("--slow-fast-commit", default="dd9958fe5fdba706c3c51d5c85fa72e093ae66eb")
    parser.add_argument("--fast-dllm-commit", default="24cc59e75f20a6384bae8c905965bb090b96388e")
    run_recorder(parser, record)


if __name__ == "__main__":
    main()
