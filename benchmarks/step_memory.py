"""Peak memory of one decoding step at a real vocabulary: the output head at every column against the needed ones.

A random-weight model with LLaDA's vocabulary (126,464 logits, mask id 126336, EOS 126081, a word-level tokenizer
of LLaDA's 126,349 ids: :func:`real_size.synthetic_tokenizer`) on a tiny bidirectional Llama body (``--hidden``,
``--layers``; ``is_causal: false``) in float32 is saved to a temporary directory and loaded from there by the
project's own loading (``model.dllm.path``). Each setting then runs in a fresh subprocess: it builds the decoder, a
batch of ``--batch`` prompts of about ``--prompt-tokens`` random ids (+- 25%) and ``--new-tokens`` masks, and takes
one step (the first) of the loop. The peak is the growth of the process's resident memory during that step: the
kernel's high-water mark (``VmHWM``, reset through ``/proc/self/clear_refs`` just before the step, Linux only)
minus the resident size (``VmRSS``) before it.

Settings: ``fast-dllm.yaml`` with cache ``none``, ``llada.yaml`` and ``wino.yaml``, blocks of 32, each *before*
(``DLM_DECODE_FULL_LOGITS=1``: the head at every input column, as before the change) and *after* (the head at the
window's eligible span of 32 columns per row, plus WINO's shadow slots). The logits alone are then
``batch x columns x 126,464 x 4`` bytes (e.g. 16 x 320 columns: 2.6 GB; 16 x 32: 0.26 GB).

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/step_memory.py [--batch 16] [--new-tokens 256]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from dlm_decode.config import load_config
from dlm_decode.decoder import Decoder
from dlm_decode.dispatch import FULL_LOGITS_ENV
from dlm_decode.loop import run_steps

sys.path.insert(0, str(Path(__file__).parent))
from real_size import SPECIALS, TOKENIZER_SIZE, prompts, synthetic_tokenizer  # noqa: E402

VOCAB, MASK_ID, EOS_ID = 126464, 126336, 126081
#: (preset, overrides): blocks of 32 at the generation length.
SETTINGS = [
    ("fast-dllm", ["decoder.window.size=32", "decoder.cache=none"]),
    ("llada", ["decoder.window.size=32"]),
    ("wino", ["decoder.window.size=32"]),
]


def save_model(directory: Path, hidden: int, layers: int) -> None:
    """A random-weight float32 bidirectional Llama with LLaDA's vocabulary, and its tokenizer, in ``directory``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        is_causal=False,
    )
    LlamaForCausalLM(config).save_pretrained(directory)
    synthetic_tokenizer("llada", TOKENIZER_SIZE["llada"]).save_pretrained(directory)


def memory_kb(field: str) -> int:
    """A ``/proc/self/status`` field in kB (``VmRSS``, ``VmHWM``)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def one_step(directory: Path, preset: str, overrides: list[str], args) -> dict:
    """Build the decoder and a batch, take one step; the step's resident-memory growth and time."""
    config = load_config(
        f"configs/decoders/{preset}.yaml",
        [
            *overrides,
            f"model.dllm.path={directory}",
            f"model.dllm.mask_token_id={MASK_ID}",
            f"model.dllm.eos_token_ids=[{EOS_ID}]",
            "model.dllm.chat_template=false",
            f"generation.max_new_tokens={args.new_tokens}",
            "generation.stop_at_eos=false",
        ],
    )
    decoder = Decoder(config)
    dllm = decoder.dllm
    rows = prompts(args.batch, args.prompt_tokens, min(SPECIALS["llada"]), seed=args.batch)
    texts = [" ".join(f"<t{i}>" for i in row) for row in rows]  # the synthetic tokenizer's words for these ids
    state = decoder.initial_state(decoder.dllm.encode(texts), 0, args.new_tokens, list(range(len(rows))))
    assert [row[-len(ids) :] for row, ids in zip(state.canvas[:, : state.gen_start].tolist(), rows)] == rows
    with torch.inference_mode():
        steps = run_steps(decoder.roles, dllm, state, max_steps=10 * args.new_tokens)
        before = memory_kb("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident size
        started = time.perf_counter()
        next(steps)
        seconds = time.perf_counter() - started
        peak = memory_kb("VmHWM")
    return {"canvas": state.width, "growth_mb": (peak - before) / 1024, "rss_mb": before / 1024, "step_s": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--child", nargs=2, metavar=("DIRECTORY", "SETTING"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child is not None:
        directory, index = Path(args.child[0]), int(args.child[1])
        print(json.dumps(one_step(directory, *SETTINGS[index], args)))
        return
    print(
        f"batch {args.batch}, prompts ~{args.prompt_tokens} tokens, {args.new_tokens} new, vocabulary {VOCAB}, "
        f"body {args.layers} x {args.hidden}, float32, torch {torch.__version__}, CPU"
    )
    print("| preset | head at | canvas | step peak (MB, RSS growth) | step (s) |\n|---|---|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as scratch:
        save_model(Path(scratch), args.hidden, args.layers)
        for index, (preset, _) in enumerate(SETTINGS):
            for label, full in (("every input column (before)", True), ("needed columns (after)", False)):
                env = {key: value for key, value in os.environ.items() if key != FULL_LOGITS_ENV}
                if full:
                    env[FULL_LOGITS_ENV] = "1"
                forwarded = [f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items() if k != "child"]
                command = [sys.executable, __file__, *forwarded, "--child", scratch, str(index)]
                result = json.loads(subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout)
                print(
                    f"| {preset} | {label} | {result['canvas']} | {result['growth_mb']:.0f} | {result['step_s']:.1f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
