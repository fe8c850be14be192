"""Speed of every preset on LLaDA-8B-, Dream-7B- and SDAR-8B-sized models, next to the official Fast-dLLM decoder.

Random weights need no download: the models are built from the real checkpoints' dimensions (LLaDA-8B-Instruct's,
Dream-v0-Instruct-7B's and SDAR-8B-Chat's ``config.json``, the last a block-diffusion model with blocks of 4, through
the same native mapping that loads the real weights; Qwen2.5-0.5B's for APD's verifier) in bfloat16 on the GPU,
with a tokenizer holding the real special ids. For each preset at ``--new-tokens`` (256) and each batch size (1 and
16, prompts of ``--prompt-tokens`` +- 25%), it decodes ``--warmup`` steps, then times ``--steps`` steps:

* ``ms/step`` and ``tok/s`` (tokens committed per second over the timed steps; random weights are never confident,
  so thresholds commit one token per step: the numbers compare the cost of a step, not the parallelism);
* ``idle``: the share of the GPU timeline, from the first kernel of the timed steps to the last, in which no
  kernel runs (``torch.profiler``'s CUDA activity, overlaps merged): the time the GPU waits for the host between
  and around forwards. Target: at most 5% at batch 1 for every preset.

``--fast-dllm PATH`` (a checkout of NVlabs/Fast-dLLM, read from there, never copied) adds the official
``generate_with_dual_cache`` on a LLaDA model built by the official modeling file with the *same* weights (batch 1,
its only batch size; blocks of 32, threshold 0.9, as the ``fast-dllm`` row). It needs ``einops``.

On the lent H200 (see docs/results.md). Its image has torch, Triton, pluggy, einops and transformers 5.17; this
project needs transformers >= 5.24 and OmegaConf, which travel as wheels, and Fast-dLLM's code travels as files (both
in folders ``.git/info/exclude`` ignores, named in the device tool's ``carry``). Here, from the repository root::

    printf '/.whl/\n/.official/\n' >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl \
        transformers==5.24.0 omegaconf==2.4.0
    mkdir -p .official/Fast-dLLM && git --git-dir=<a clone of NVlabs/Fast-dLLM>/.git archive HEAD llada \
        | tar -x -C .official/Fast-dLLM

then on the device (``carry: [".whl", ".official"]``), in one command (its time was estimated, not measured: about
5 to 8 minutes for LLaDA and Dream, a few more for SDAR; ``--models llada``, ``--models dream`` and ``--models sdar``
split it)::

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && \
    PYTHONPATH=/tmp/site:src python3 benchmarks/real_size.py --device cuda --fast-dllm .official/Fast-dLLM \
        --out $OUT/real_size.json

``--scale tiny`` runs the same code on small models (a CPU check that the script works).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import random
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from dlm_decode.config import load_config
from dlm_decode.decoder import Decoder
from dlm_decode.loop import run_steps
from dlm_decode.models.adapter import DiffusionLM
from dlm_decode.models.families import FAMILIES
from dlm_decode.models.native import ARCHITECTURES, LLADA_KEYS

#: Dimensions of the published checkpoints' config.json (LLaDA-8B-Instruct, Dream-v0-Instruct-7B, Qwen2.5-0.5B).
REAL = {
    "llada": {
        "model_type": "llada",
        "d_model": 4096,
        "n_heads": 32,
        "n_kv_heads": 32,
        "n_layers": 32,
        "mlp_hidden_size": 12288,
        "vocab_size": 126464,
        "embedding_size": 126464,
        "max_sequence_length": 4096,
        "rope_theta": 500000.0,
        "rms_norm_eps": 1e-5,
        "weight_tying": False,
        "block_type": "llama",
        "layer_norm_type": "rms",
        "activation_type": "silu",
        "rope": True,
        "include_qkv_bias": False,
        "mask_token_id": 126336,
        "eos_token_id": 126081,
        "pad_token_id": 126081,
    },
    "dream": {
        "model_type": "Dream",
        "hidden_size": 3584,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "intermediate_size": 18944,
        "vocab_size": 152064,
        "rope_theta": 1000000.0,
        "rms_norm_eps": 1e-6,
        "max_position_embeddings": 131072,
        "tie_word_embeddings": False,
        "mask_token_id": 151666,
        "eos_token_id": 151643,
        "pad_token_id": 151643,
    },
    "sdar": {
        "model_type": "sdar",
        "hidden_size": 4096,
        "num_hidden_layers": 36,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "head_dim": 128,
        "intermediate_size": 12288,
        "vocab_size": 151936,
        "rope_theta": 1000000.0,
        "rms_norm_eps": 1e-6,
        "max_position_embeddings": 32768,
        "tie_word_embeddings": False,
        "block_size": 4,
        "mask_token_id": 151669,
        "eos_token_id": 151643,
    },
    "qwen2": {
        "model_type": "qwen2",
        "hidden_size": 896,
        "num_hidden_layers": 24,
        "num_attention_heads": 14,
        "num_key_value_heads": 2,
        "intermediate_size": 4864,
        "vocab_size": 151936,
        "rope_theta": 1000000.0,
        "rms_norm_eps": 1e-6,
        "max_position_embeddings": 32768,
        "tie_word_embeddings": True,
    },
}
#: Small stand-ins with the same special ids (``--scale tiny``): only the dimensions shrink.
TINY = {
    "llada": {"d_model": 64, "n_heads": 4, "n_kv_heads": 4, "n_layers": 2, "mlp_hidden_size": 128},
    "dream": {
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 128,
    },
    "sdar": {
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "intermediate_size": 128,
    },
    "qwen2": {
        "hidden_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "intermediate_size": 64,
    },
}
#: Special tokens of each family's tokenizer, at their real ids.
SPECIALS = {
    "llada": {126080: "<|startoftext|>", 126081: "<|endoftext|>", 126336: "<|mdm_mask|>", 126348: "<|eot_id|>"},
    "dream": {
        151643: "<|endoftext|>",
        151644: "<|im_start|>",
        151645: "<|im_end|>",
        151665: "<|beginoftext|>",
        151666: "<|mask|>",
    },
    "sdar": {151643: "<|endoftext|>", 151644: "<|im_start|>", 151645: "<|im_end|>", 151669: "<|MASK|>"},
}
TOKENIZER_SIZE = {"llada": 126349, "dream": 151667, "sdar": 151670, "qwen2": 151665}

#: (preset, model, overrides at 256 new tokens: the papers' block sizes and APD's W and M).
PRESETS = [
    ("llada", "llada", ["decoder.window.size=32"]),
    ("fast-dllm", "llada", ["decoder.window.size=32"]),
    ("fast-dllm+prefix", "llada", ["decoder.window.size=32", "decoder.cache=prefix"]),
    ("fast-dllm+none", "llada", ["decoder.window.size=32", "decoder.cache=none"]),
    ("fast-dllm-prefix", "llada", ["decoder.window.size=32"]),
    ("wino", "llada", ["decoder.window.size=128"]),
    ("dream-entropy", "llada", []),
    ("left-to-right", "llada", []),
    ("llada", "dream", ["decoder.window.size=32"]),
    ("fast-dllm", "dream", ["decoder.window.size=32"]),
    ("dream-entropy", "dream", []),
    ("left-to-right", "dream", []),
    ("apd", "dream", ["decoder.window.max_lookahead=100", "decoder.cache.window=16"]),
    ("llada", "sdar", ["decoder.window.size=4"]),
    ("fast-dllm+prefix", "sdar", ["decoder.window.size=4", "decoder.cache=prefix"]),
    ("fast-dllm+none", "sdar", ["decoder.window.size=4", "decoder.cache=none"]),
    ("wino", "sdar", ["decoder.window.size=4"]),
    ("left-to-right", "sdar", []),
]


def synthetic_tokenizer(family: str, size: int):
    """A word-level tokenizer of ``size`` ids (``<t{i}>``), the family's special tokens at their real ids."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = SPECIALS.get(family, SPECIALS["dream"])
    vocab = {specials.get(i, f"<t{i}>"): i for i in range(size)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<t0>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.add_special_tokens([AddedToken(t, special=True) for t in specials.values() if vocab.get(t) is not None])
    eos = "<|endoftext|>"
    return PreTrainedTokenizerFast(tokenizer_object=core, eos_token=eos, pad_token=eos)


def build(name: str, scale: str, device: torch.device):
    """``(model, config.json dict)`` with random bfloat16 weights built directly on ``device``."""
    config = {**REAL[name], **(TINY[name] if scale == "tiny" else {})}
    if name == "qwen2":
        from transformers import Qwen2Config, Qwen2ForCausalLM

        hf_config = Qwen2Config(**{k: v for k, v in config.items() if k != "model_type"})
        model_class = Qwen2ForCausalLM
    else:
        architecture = ARCHITECTURES[name]
        hf_config = architecture.convert(config, f"model.{name}")
        model_class = architecture.model_class
    with torch.device(device):
        model = model_class._from_config(hf_config, dtype=torch.bfloat16)
    return model.eval(), config


@dataclass
class Measure:
    steps: int
    seconds: float
    tokens: int
    idle: float | None

    @property
    def ms_per_step(self) -> float:
        return 1000 * self.seconds / self.steps

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds


def gpu_idle_share(profile) -> float | None:
    """1 - (time covered by CUDA kernels) / (first kernel start .. last kernel end), overlaps merged."""
    spans = sorted(
        (e.time_range.start, e.time_range.end)
        for e in profile.events()
        if e.device_type == torch.autograd.DeviceType.CUDA and e.time_range.end > e.time_range.start
    )
    if not spans:
        return None
    busy, (start, end) = 0.0, spans[0]
    first = start
    for s, e in spans[1:]:
        if s > end:
            busy += end - start
            start, end = s, e
        else:
            end = max(end, e)
    busy += end - start
    return 1 - busy / (end - first)


def prompts(batch: int, tokens: int, vocab: int, seed: int) -> list[list[int]]:
    """``batch`` prompts of random ids below ``vocab`` (no special token), ``tokens`` long (+- 25% when batched)."""
    rng = random.Random(seed)
    lengths = [tokens] if batch == 1 else [rng.randint(int(0.75 * tokens), int(1.25 * tokens)) for _ in range(batch)]
    return [[rng.randrange(vocab) for _ in range(length)] for length in lengths]


def time_decoder(decoder: Decoder, dllm: DiffusionLM, rows: list[list[int]], args) -> Measure:
    """Warm up, time ``args.steps`` steps, then profile as many for the GPU's idle share."""
    sync = torch.cuda.synchronize if dllm.device.type == "cuda" else (lambda: None)

    def fresh_steps():
        state = decoder.initial_state(rows, 0, args.new_tokens, list(range(len(rows))))  # stop_at_eos false (config)
        return state, run_steps(decoder.roles, dllm, state, max_steps=10 * args.new_tokens)

    with torch.inference_mode():
        state, steps = fresh_steps()
        for _ in range(args.warmup):
            next(steps)
        sync()
        committed = int(torch.stack(state.commits).sum())
        started = time.perf_counter()
        done = 0
        for _ in range(args.steps):
            if next(steps, None) is None:
                break
            done += 1
        sync()
        seconds = time.perf_counter() - started
        tokens = int(torch.stack(state.commits).sum()) - committed
        idle = None
        if dllm.device.type == "cuda":
            state, steps = fresh_steps()
            for _ in range(args.warmup):
                next(steps)
            sync()
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as profile:
                for _ in range(args.steps):
                    if next(steps, None) is None:
                        break
                sync()
            idle = gpu_idle_share(profile)
    return Measure(done, seconds, tokens, idle)


def official_dual_cache(path: Path, native_model, config: dict, rows: list[list[int]], args) -> Measure:
    """Fast-dLLM's own ``generate_with_dual_cache`` on its own LLaDA class, loaded with ``native_model``'s weights."""
    sys.path.insert(0, str(path / "llada"))
    modeling = importlib.import_module("model.modeling_llada")
    configuration = importlib.import_module("model.configuration_llada")
    spec = importlib.util.spec_from_file_location("fast_dllm_generate", path / "llada" / "generate.py")
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    device = next(native_model.parameters()).device
    official_config = configuration.LLaDAConfig(**{**config, "init_device": "meta"})
    with torch.device("meta"):
        model = modeling.LLaDAModelLM(official_config)
    native = native_model.state_dict()
    model.load_state_dict({name: native[_native_name(name)] for name in model.state_dict()}, assign=True)
    model = model.to(device).eval()
    prompt = torch.tensor([rows[0]], device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    kwargs = dict(
        steps=args.new_tokens,
        gen_length=args.new_tokens,
        block_length=32,
        threshold=0.9,
        mask_id=config["mask_token_id"],
    )
    with torch.inference_mode():
        generate.generate_with_dual_cache(model, prompt, **kwargs)  # warm-up (and torch.compile)
        sync()
        started = time.perf_counter()
        out, nfe = generate.generate_with_dual_cache(model, prompt, **kwargs)
        sync()
        seconds = time.perf_counter() - started
    return Measure(int(nfe), seconds, args.new_tokens, None)


def _native_name(name: str) -> str:
    """The native (Llama) name of a LLaDA weight name (:data:`~dlm_decode.models.native.LLADA_KEYS`)."""
    import re

    for pattern, replacement in LLADA_KEYS.items():
        if re.search(pattern, name):
            return re.sub(pattern, replacement, name)
    return name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--scale", choices=("real", "tiny"), default="real")
    parser.add_argument("--models", default="llada,dream,sdar")
    parser.add_argument("--batch-sizes", default="1,16")
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--fast-dllm", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    batches = [int(b) for b in args.batch_sizes.split(",")]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device: {name}, torch {torch.__version__}, scale {args.scale}, {args.new_tokens} new tokens")
    rows_out = []
    with tempfile.TemporaryDirectory() as scratch:
        verifier = None
        for family in args.models.split(","):
            started = time.perf_counter()
            model, config = build(family, args.scale, device)
            size = sum(p.numel() for p in model.parameters()) / 1e9
            tokenizer = synthetic_tokenizer(family, TOKENIZER_SIZE[family])
            dllm = DiffusionLM(model, tokenizer, family=FAMILIES[family], chat_template=False)
            print(f"{family}: {size:.2f}B parameters built in {time.perf_counter() - started:.0f} s")
            for preset, model_family, overrides in PRESETS:
                if model_family != family:
                    continue
                extra = [f"generation.max_new_tokens={args.new_tokens}", "generation.stop_at_eos=false"]
                if preset == "apd":
                    if verifier is None:
                        ar_model, _ = build("qwen2", args.scale, device)
                        verifier = Path(scratch) / "qwen2"
                        ar_model.save_pretrained(verifier)
                        synthetic_tokenizer("qwen2", TOKENIZER_SIZE["qwen2"]).save_pretrained(verifier)
                        del ar_model
                    extra += [f"model.ar.path={verifier}", f"model.ar.device={args.device}", "model.ar.dtype=bfloat16"]
                config_obj = load_config(f"configs/decoders/{preset.split('+')[0]}.yaml", [*overrides, *extra])
                decoder = Decoder(config_obj, dllm=dllm)
                for batch in batches:
                    rows = prompts(batch, args.prompt_tokens, min(SPECIALS[family]), seed=batch)
                    measure = time_decoder(decoder, dllm, rows, args)
                    rows_out.append({"model": family, "preset": preset, "batch": batch, **_fields(measure)})
                    _print_row(rows_out[-1])
            if args.fast_dllm is not None and family == "llada":
                rows = prompts(1, args.prompt_tokens, min(SPECIALS[family]), seed=1)
                measure = official_dual_cache(args.fast_dllm, model, config, rows, args)
                rows_out.append(
                    {
                        "model": family,
                        "preset": "official Fast-dLLM generate_with_dual_cache",
                        "batch": 1,
                        **_fields(measure),
                    }
                )
                _print_row(rows_out[-1])
            del model, dllm
            if device.type == "cuda":
                torch.cuda.empty_cache()
    if args.out is not None:
        args.out.write_text(
            json.dumps(
                {
                    "device": name,
                    "torch": torch.__version__,
                    "args": vars(args) | {"fast_dllm": str(args.fast_dllm), "out": str(args.out)},
                    "rows": rows_out,
                },
                indent=2,
            )
        )


def _fields(measure: Measure) -> dict:
    return {
        "steps": measure.steps,
        "ms_per_step": round(measure.ms_per_step, 2),
        "tokens_per_s": round(measure.tokens_per_s, 1),
        "idle_pct": None if measure.idle is None else round(100 * measure.idle, 1),
    }


def _print_row(row: dict) -> None:
    idle = "-" if row["idle_pct"] is None else f"{row['idle_pct']:.1f}%"
    print(
        f"| {row['model']} | {row['preset']} | {row['batch']} | {row['ms_per_step']:.2f} | "
        f"{row['tokens_per_s']:.1f} | {idle} |",
        flush=True,
    )


if __name__ == "__main__":
    main()
