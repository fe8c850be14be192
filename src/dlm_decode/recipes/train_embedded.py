"""Train the embedded model pair on the task suite.

* ``dllm``: a bidirectional Llama (``config.is_causal=False``) trained with the masked-diffusion objective
  (LLaDA's, without its ``1/t`` weight) on the decoder's canvas layout ``[pads][BOS prompt \\n][answer EOS ... EOS]``.
* ``ar``: a smaller causal Llama trained with next-token loss on ``[pads][BOS prompt \\n][answer EOS]``.

Both are plain ``LlamaForCausalLM`` checkpoints sharing :func:`~dlm_decode.models.tokenizer.build_char_tokenizer`.
Training data is drawn on the fly from the train split of :mod:`dlm_decode.eval.tasks`; step counts and seeds are
fixed, so a run is reproducible up to floating-point nondeterminism. The data, the optimisation loop and the quick
evaluation (:func:`~dlm_decode.recipes.common.quick_eval`, with the greedy decoders below: for development only;
official numbers come from ``dlm-decode eval``) are shared with the block trainer in :mod:`dlm_decode.recipes.common`.

Usage::

    python -m dlm_decode.recipes.train_embedded --out src/dlm_decode/models/embedded --which both
    python -m dlm_decode.recipes.train_embedded --out /tmp/pair --smoke

``--compile`` runs the forwards through ``torch.compile``, which makes a step faster on a CPU (docs/results.md
gives the measurement), so more steps fit into the same time. The shipped pair was trained with it (the model card
gives the command); compiled runs are not bit-identical from one run to the next, eager runs are.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from dlm_decode.eval.tasks import TASKS, Example
from dlm_decode.masks import bidirectional_mask, position_ids_from_mask
from dlm_decode.models.tokenizer import build_char_tokenizer
from dlm_decode.recipes.common import (
    EVAL_MAX_NEW_TOKENS,
    MAX_REGION,
    MIN_MASK_RATIO,
    OPTIMIZER_TEXT,
    ROWS_PER_FORWARD,
    TASK_WEIGHTS,
    TRUNCATED_FRACTION,
    Batch,
    Row,
    TrainingRun,
    add_run_arguments,
    allowed_logits,
    count_parameters,
    decode_region,
    dllm_rows,
    left_pad,
    prompt_ids,
    quick_eval_section,
    run_words,
    save_trained,
    timed_quick_eval,
    tradeoff_table,
    train_on_tasks,
    trained_on,
)

logger = logging.getLogger("dlm_decode.train")

#: Architectures (Llama, tied embeddings). The AR model is the cheap one, as APD assumes.
DLLM_ARCH = {"hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 384}
AR_ARCH = {"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 384}
#: Standard deviation of the initial weights. HF's default (0.02) leaves a masked position's attention nearly
#: uniform, and the masked-diffusion loss then sits on a long plateau (a masked position sees only the mask token
#: through its residual stream, unlike a next-token position); 0.1 leaves it several times sooner.
INIT_STD = 0.1
MAX_POSITIONS = 128


def model_config(tokenizer: PreTrainedTokenizerFast, arch: Mapping[str, Any], *, causal: bool) -> LlamaConfig:
    """A Llama config over the char tokenizer; ``causal=False`` saves ``is_causal=False`` into ``config.json``."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        num_key_value_heads=arch["num_attention_heads"],
        max_position_embeddings=MAX_POSITIONS,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        initializer_range=INIT_STD,
        **arch,
    )
    config.is_causal = causal
    return config


def ar_rows(examples: Sequence[Example], tokenizer: PreTrainedTokenizerFast) -> list[Row]:
    """Rows ``[BOS prompt \\n][answer EOS]``; the targets are the answer tokens and the EOS."""
    prompts = prompt_ids(tokenizer, [e.prompt for e in examples])
    answers = tokenizer([e.answer for e in examples], add_special_tokens=False)["input_ids"]
    eos = tokenizer.eos_token_id
    return [(p + a + [eos], len(a) + 1) for p, a in zip(prompts, answers, strict=True)]


def forward_logits(model: LlamaForCausalLM, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Logits with the decoder's masks and positions (causal iff the model's config is).

    :param input_ids: ``[B, N]`` long.
    :param attention_mask: ``[B, N]`` bool, false on left padding.
    :return: ``[B, N, V]`` float32 logits.
    """
    causal = getattr(model.config, "is_causal", True)
    output = model(
        input_ids=input_ids,
        attention_mask=bidirectional_mask(attention_mask, causal=causal),
        position_ids=position_ids_from_mask(attention_mask),
    )
    return output.logits.float()


def masked_diffusion_loss(
    model: LlamaForCausalLM, batch: Batch, mask_id: int, generator: torch.Generator
) -> torch.Tensor:
    """The masked-diffusion loss, without LLaDA's ``1/t`` weight.

    Per row, ``t ~ U(MIN_MASK_RATIO, 1)``; every target token is replaced by the mask with probability ``t``;
    the loss is the mean cross-entropy over the masked tokens of this forward (the trainer averages its forwards
    weighted by their rows). The rows' ``t`` are stratified (one uniform offset, then evenly spaced, MDLM's
    low-discrepancy sampler): each ``t`` is still uniform and the batch covers the range evenly.

    LLaDA weights each masked token by ``1/t`` (the ELBO). On these tiny models that weight is harmful: a row
    with ``t`` near ``MIN_MASK_RATIO`` weighs up to a thousand times more than the others, its few tokens then
    dominate the clipped gradient, and the rest of the batch barely trains. Measured with this trainer, 1,500
    steps of batch 64: 6.0% mean greedy accuracy with the ``1/t`` weight, 22.3% without it.
    """
    rows = batch.input_ids.shape[0]
    u = (torch.rand(1, generator=generator) + torch.arange(rows) / rows) % 1.0
    t = (MIN_MASK_RATIO + (1 - MIN_MASK_RATIO) * u)[:, None]  # [B, 1]
    draws = torch.rand(batch.input_ids.shape, generator=generator)  # on the CPU: the same masks on any device
    t, draws = t.to(batch.input_ids.device), draws.to(batch.input_ids.device)
    masked = batch.targets & (draws < t)  # [B, N]
    noisy = batch.input_ids.masked_fill(masked, mask_id)
    logits = forward_logits(model, noisy, batch.attention_mask)
    token_loss = F.cross_entropy(logits[masked], batch.input_ids[masked], reduction="sum")
    return token_loss / masked.sum().clamp(min=1)  # a batch with no masked token contributes 0, not NaN


def ar_loss(model: LlamaForCausalLM, batch: Batch) -> torch.Tensor:
    """Mean next-token cross-entropy over the answer tokens and the EOS."""
    logits = forward_logits(model, batch.input_ids, batch.attention_mask)
    predicted = batch.targets[:, 1:]  # [B, N-1]: the token at i+1 is a target, predicted at i
    return F.cross_entropy(logits[:, :-1][predicted], batch.input_ids[:, 1:][predicted])


@torch.no_grad()
def dllm_generate_greedy(
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    prompts: Sequence[str],
    max_new_tokens: int,
    tokens_per_step: int | None,
) -> list[str]:
    """LLaDA low-confidence remasking, greedy: each step commits the ``tokens_per_step`` most confident masked
    positions of each row (all of them when ``None``); after a committed EOS, every later position is EOS.

    A second decoder beside :class:`dlm_decode.Decoder`, on purpose: the model cards' quick evaluation measures
    the checkpoint, not the decoder. This one takes the model in memory as training leaves it (no adapter, no
    config, no checkpoint round trip), is short enough to check by reading, and stays fixed when the decoder's
    strategies, caches or defaults change: a card's figures stay reproducible from its command, and a decoder
    regression can neither pass for a training regression nor hide one (``dlm-decode eval`` measures the decoder
    on the same checkpoints). Full forwards, no cache, one rule: a development evaluator, not a second product.
    """
    mask_id, eos_id = tokenizer.mask_token_id, tokenizer.eos_token_id
    rows = [p + [mask_id] * max_new_tokens for p in prompt_ids(tokenizer, prompts)]
    input_ids, attention_mask = left_pad(rows, tokenizer.pad_token_id)
    k = max_new_tokens if tokens_per_step is None else tokens_per_step
    while True:
        region = input_ids[:, -max_new_tokens:]  # [B, L], a view
        masked = region == mask_id
        if not masked.any():
            return decode_region(tokenizer, region)
        logits = allowed_logits(forward_logits(model, input_ids, attention_mask)[:, -max_new_tokens:], tokenizer)
        confidence, predicted = logits.softmax(-1).max(-1)  # [B, L]
        confidence = confidence.masked_fill(~masked, -1.0)
        top = confidence.topk(min(k, max_new_tokens), dim=-1).indices  # [B, k]
        commit = torch.zeros_like(masked).scatter_(1, top, True) & masked
        region[commit] = predicted[commit]
        after_eos = (region == eos_id).long().cumsum(1) > 0
        region[after_eos] = eos_id


@torch.no_grad()
def ar_generate_greedy(
    model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, prompts: Sequence[str], max_new_tokens: int
) -> list[str]:
    """Greedy left-to-right decoding (full recompute per token; the models are tiny)."""
    input_ids, attention_mask = left_pad(prompt_ids(tokenizer, prompts), tokenizer.pad_token_id)
    start = input_ids.shape[1]
    done = torch.zeros(input_ids.shape[0], dtype=torch.bool)
    for _ in range(max_new_tokens):
        logits = allowed_logits(forward_logits(model, input_ids, attention_mask)[:, -1], tokenizer)
        token = logits.argmax(-1).masked_fill(done, tokenizer.eos_token_id)  # [B]
        input_ids = torch.cat([input_ids, token[:, None]], dim=1)
        attention_mask = torch.cat([attention_mask, torch.ones_like(done)[:, None]], dim=1)
        done |= token == tokenizer.eos_token_id
        if done.all():
            break
    return decode_region(tokenizer, input_ids[:, start:])


def train(
    kind: str, tokenizer: PreTrainedTokenizerFast, run: TrainingRun, arch: dict[str, int] | None = None
) -> tuple[LlamaForCausalLM, float]:
    """Train the ``"dllm"`` or ``"ar"`` model as ``run`` says; return it (on the CPU) and the training wall time.

    :param arch: the architecture (default: ``DLLM_ARCH`` or ``AR_ARCH``).
    """
    torch.manual_seed(run.seed)
    causal = kind == "ar"
    arch = arch or (AR_ARCH if causal else DLLM_ARCH)
    # the ignore below: transformers' wrapper of nn.Module.to is typed as taking the model, not the device
    model = LlamaForCausalLM(model_config(tokenizer, arch, causal=causal)).to(run.device)  # type: ignore[arg-type]
    rng = random.Random(f"{kind}/{run.seed}")
    generator = torch.Generator().manual_seed(run.seed)

    def rows(examples: list[Example]) -> list[Row]:
        return ar_rows(examples, tokenizer) if causal else dllm_rows(examples, tokenizer, rng)

    def loss(model: LlamaForCausalLM, batch: Batch) -> torch.Tensor:
        if causal:
            return ar_loss(model, batch)
        return masked_diffusion_loss(model, batch, tokenizer.mask_token_id, generator)

    logger.info(
        "%s: %s parameters, %d steps of batch %d", kind, f"{count_parameters(model):,}", run.steps, run.batch_size
    )
    seconds = train_on_tasks(model, rows, loss, run, pad_id=tokenizer.pad_token_id, rng=rng, label=kind)
    return model.to("cpu"), seconds


def evaluate_pair(
    dllm: LlamaForCausalLM | None, ar: LlamaForCausalLM | None, tokenizer: PreTrainedTokenizerFast, n_per_task: int
) -> dict[str, dict[str, float]]:
    """The quick_eval table: one row per dLLM ``tokens_per_step`` (``dllm k=...``) and one for the AR model."""
    table = {}
    if dllm is not None:
        generate = partial(dllm_generate_greedy, dllm, tokenizer, max_new_tokens=EVAL_MAX_NEW_TOKENS)
        table.update(tradeoff_table("dllm", "all", generate, n_per_task))
    if ar is not None:
        generate = partial(ar_generate_greedy, ar, tokenizer, max_new_tokens=EVAL_MAX_NEW_TOKENS)
        table["ar"] = timed_quick_eval("ar", generate, n_per_task)
    return table


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m dlm_decode.recipes.train_embedded", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--out", type=Path, required=True, help="directory that receives dllm/, ar/, MODEL_CARD.md")
    parser.add_argument("--which", choices=("dllm", "ar", "both"), default="both")
    parser.add_argument("--dllm-steps", type=int, default=16000)
    parser.add_argument("--ar-steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--dllm-lr", type=float, default=3e-3)
    parser.add_argument("--ar-lr", type=float, default=2e-3)
    add_run_arguments(parser)
    args = parser.parse_args(argv)
    if args.smoke:
        args.dllm_steps, args.ar_steps, args.batch_size, args.eval_n, args.log_every = 3, 3, 8, 2, 1
    return args


def write_model_card(out: Path, args: argparse.Namespace, runs: dict[str, dict], table: dict[str, dict[str, float]]):
    """``out/MODEL_CARD.md``: data, architectures, steps, seeds, sizes, training time and the quick_eval table."""
    lines = [
        "# Embedded model pair",
        "",
        "Two tiny Llama checkpoints sharing the 100-id character tokenizer (`pad`=0, `bos`=1, `eos`=2, `mask`=3),",
        "trained from scratch on the task suite of `dlm_decode.eval.tasks` (train split, drawn on the fly).",
        "",
        "- `dllm/`: bidirectional (`config.is_causal=False`), LLaDA masked-diffusion objective on canvases",
        "  `[pads][BOS prompt \\n][answer EOS ... EOS]`.",
        "- `ar/`: causal (the smaller, cheap model APD assumes), next-token loss on",
        "  `[pads][BOS prompt \\n][answer EOS]`.",
        "",
        "Both load with plain `AutoModelForCausalLM.from_pretrained` / `AutoTokenizer.from_pretrained`; the prompt",
        'format is the tokenizer\'s chat template, `BOS + prompt + "\\n"`.',
        f"Recommended `max_new_tokens`: {EVAL_MAX_NEW_TOKENS} (every answer is at most 25 characters, plus its EOS).",
        "",
        "## Data",
        "",
        "Six tasks, fresh examples every step from the train split (a hash of the prompt decides the split, so no",
        "test prompt is ever trained on), drawn with the relative frequencies "
        + ", ".join(f"{name} {weight:g}" for name, weight in TASK_WEIGHTS.items())
        + ".",
        "Every answer ends with EOS.",
        "",
        "| task | prompt | answer |",
        "|---|---|---|",
        *(f"| {name} | `{example.prompt}` | `{example.answer!r}` |" for name, example in _card_examples().items()),
        "",
        "## Training",
        "",
        "```",
        "python -m dlm_decode.recipes.train_embedded " + " ".join(_command_line(args)),
        "```",
        "",
        "| model | layers | hidden | heads | ffn | parameters | safetensors | steps | batch | lr | seed | wall time |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for kind, run in runs.items():
        arch = run["arch"]
        lines.append(
            f"| {kind} | {arch['num_hidden_layers']} | {arch['hidden_size']} | {arch['num_attention_heads']} "
            f"| {arch['intermediate_size']} | {run['parameters']:,} | {run['bytes'] / 1e6:.2f} MB | {run['steps']} "
            f"| {args.batch_size} | {run['lr']:g} | {args.seed} | {run['seconds'] / 60:.1f} min |"
        )
    lines += [
        "",
        f"{OPTIMIZER_TEXT}, weights initialised with std {INIT_STD}, {trained_on(args)}. dLLM objective (masked"
        f" diffusion): per row `t ~ U({MIN_MASK_RATIO:g}, 1)` (stratified over each forward of {ROWS_PER_FORWARD}"
        " rows), every generated-region token masked with probability `t`, mean cross-entropy over the masked"
        " tokens, without LLaDA's `1/t` weight (see `masked_diffusion_loss`). The region is the answer plus a"
        f" log-uniform number of EOS tokens, up to {MAX_REGION} in all; {TRUNCATED_FRACTION:.0%} of rows instead"
        " keep only a prefix of the answer (a canvas cut by a lookahead window).",
    ]
    lines += quick_eval_section(
        args.eval_n,
        table,
        (
            "`dllm k=n`: low-confidence remasking committing the n most confident masked positions per step"
            " (`all`: the whole canvas in one forward), EOS fill after a committed EOS. `ar`: greedy left to right."
            " Measured by `quick_eval` in `dlm_decode.recipes.train_embedded`"
        ),
    )
    (out / "MODEL_CARD.md").write_text("\n".join(lines) + "\n")


def _card_examples() -> dict[str, Example]:
    return {name: task.generate("train", 1, seed=0)[0] for name, task in TASKS.items()}


def _command_line(args: argparse.Namespace) -> list[str]:
    words = ["--out", str(args.out), "--which", args.which, "--seed", str(args.seed)]
    if args.smoke:
        return [*words, "--smoke"]
    return [*words, "--dllm-steps", str(args.dllm_steps), "--ar-steps", str(args.ar_steps),
            "--dllm-lr", f"{args.dllm_lr:g}", "--ar-lr", f"{args.ar_lr:g}", *run_words(args)]  # fmt: skip


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    """Train, save (model + tokenizer per directory), quick-evaluate and write the model card.

    :return: the quick_eval table (empty when ``--eval-n 0``).
    """
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(args.threads)
    tokenizer = build_char_tokenizer()
    args.out.mkdir(parents=True, exist_ok=True)
    models: dict[str, LlamaForCausalLM] = {}
    runs: dict[str, dict] = {}
    for kind in ("dllm", "ar"):
        if args.which not in (kind, "both"):
            continue
        steps, lr = (args.dllm_steps, args.dllm_lr) if kind == "dllm" else (args.ar_steps, args.ar_lr)
        model, seconds = train(kind, tokenizer, TrainingRun.from_args(args, steps=steps, lr=lr))
        models[kind] = model
        runs[kind] = {"arch": DLLM_ARCH if kind == "dllm" else AR_ARCH, "steps": steps, "lr": lr}
        runs[kind].update(save_trained(model, tokenizer, args.out / kind, seconds))
    table = evaluate_pair(models.get("dllm"), models.get("ar"), tokenizer, args.eval_n) if args.eval_n else {}
    write_model_card(args.out, args, runs, table)
    logger.info("results:\n%s", json.dumps({"runs": runs, "quick_eval": table}, indent=1))
    return table


if __name__ == "__main__":
    main()
