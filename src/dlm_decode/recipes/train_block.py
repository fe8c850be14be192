"""Train the embedded block-diffusion model on the task suite.

``block`` is a Llama over the embedded character tokenizer whose attention is *block-causal*: bidirectional inside
a block of ``BLOCK_SIZE`` generated columns, causal across blocks, and the prompt one block before the first (the
pattern of block diffusion, Arriola et al. 2025, BD3-LM, arXiv 2503.09573; SDAR and Fast-dLLM v2 adapt AR models
to it). It is adapted from the embedded bidirectional dLLM (``--init``), as those models are adapted from pretrained
ones, with the block-diffusion objective: clean earlier blocks as context and the current block noised.

**Objective.** Every row is fed twice side by side, ``[noisy copy | clean copy]`` (BD3-LM's vectorised training):
in the noisy copy every generated token is masked with probability ``t``, drawn per (row, block) from
``U(MIN_MASK_RATIO, 1)``; a noisy query of block ``b`` attends to the prompt, to the clean copy's blocks before
``b`` and to the noisy copy's block ``b``; a clean query of block ``b`` attends to the prompt and the clean copy's
blocks up to ``b``. So every block of every row is trained in one forward, each seeing exactly what the decoder
shows it: decided earlier blocks and its own partly masked block. The loss is the mean cross-entropy over the
masked tokens (without the ``1/t`` weight, as for the bidirectional model: see
:func:`~dlm_decode.recipes.train_embedded.masked_diffusion_loss`).

Data, schedule and optimiser are those of :mod:`dlm_decode.recipes.train_embedded` (both trainers take them from
:mod:`dlm_decode.recipes.common`); a run is reproducible from its seed up to floating-point nondeterminism
(``--compile``). Usage::

    python -m dlm_decode.recipes.train_block --out src/dlm_decode/models/embedded --init embedded:dllm
    python -m dlm_decode.recipes.train_block --out /tmp/block --smoke
"""

from __future__ import annotations

import argparse
import json
import logging
import random
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from dlm_decode.masks import AttentionPattern, block_mask, position_ids_from_mask
from dlm_decode.models.families import BLOCK_SIZE_KEY, PATTERN_KEY
from dlm_decode.models.tokenizer import build_char_tokenizer
from dlm_decode.recipes.common import (
    EVAL_MAX_NEW_TOKENS,
    MIN_MASK_RATIO,
    OPTIMIZER_TEXT,
    Batch,
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
    tradeoff_table,
    train_on_tasks,
    trained_on,
)

logger = logging.getLogger("dlm_decode.train")

#: Columns per block, counted from the first generated column.
BLOCK_SIZE = 8


def region_blocks(targets: torch.Tensor, block_size: int) -> torch.Tensor:
    """Block ids of training rows whose generated region is their last ``targets`` columns.

    :param targets: ``[B, N]`` bool, true on each row's generated region (a suffix of the row).
    :return: ``[B, N]`` long: ``-1`` outside the region, ``(column - region start) // block_size`` inside it.
    """
    offsets = targets.long().cumsum(-1) - 1
    return torch.where(targets, offsets.div(block_size, rounding_mode="floor"), -1)


def two_stream_mask(attention_mask: torch.Tensor, targets: torch.Tensor, blocks: torch.Tensor) -> torch.Tensor:
    """The ``[B, 1, 2N, 2N]`` bool mask of ``[noisy copy | clean copy]`` (see the module docstring).

    The clean copy's prompt and padding columns are unused: they attend only to themselves and nobody attends to
    them (the noisy copy's prompt serves both copies).

    :param attention_mask: ``[B, N]`` bool, false on padding. :param targets: ``[B, N]`` bool, the region.
    :param blocks: ``[B, N]`` long, :func:`region_blocks`.
    """
    prompt = attention_mask & ~targets
    q, k = blocks[:, :, None], blocks[:, None, :]  # [B, N, 1], [B, 1, N]
    noisy_noisy = attention_mask[:, None, :] & (prompt[:, None, :] | (k == q))
    noisy_clean = targets[:, None, :] & (k < q)
    clean_noisy = prompt[:, None, :] & targets[:, :, None]
    clean_clean = targets[:, None, :] & (k <= q) & targets[:, :, None]
    mask = torch.cat([torch.cat([noisy_noisy, noisy_clean], -1), torch.cat([clean_noisy, clean_clean], -1)], 1)
    real = torch.cat([attention_mask, targets], -1)
    eye = torch.eye(mask.shape[-1], dtype=torch.bool, device=mask.device)
    return (mask & real[:, :, None] | eye & ~real[:, :, None])[:, None]


def block_diffusion_loss(
    model: LlamaForCausalLM, batch: Batch, mask_id: int, block_size: int, generator: torch.Generator
) -> torch.Tensor:
    """Mean cross-entropy over the masked tokens of the noisy copy (see the module docstring).

    ``t`` is drawn per (row, block) on the CPU, so the masks do not depend on the device.
    """
    blocks = region_blocks(batch.targets, block_size)  # [B, N]
    rows, width = batch.input_ids.shape
    t = MIN_MASK_RATIO + (1 - MIN_MASK_RATIO) * torch.rand((rows, width // block_size + 2), generator=generator)
    draws = torch.rand((rows, width), generator=generator)
    t, draws = t.to(blocks.device), draws.to(blocks.device)
    masked = batch.targets & (draws < t.gather(1, blocks.clamp(min=0)))
    noisy = batch.input_ids.masked_fill(masked, mask_id)
    positions = position_ids_from_mask(batch.attention_mask)
    output = model(
        input_ids=torch.cat([noisy, batch.input_ids], -1),
        attention_mask=two_stream_mask(batch.attention_mask, batch.targets, blocks),
        position_ids=torch.cat([positions, positions], -1),
    )
    logits = output.logits[:, :width].float()
    token_loss = F.cross_entropy(logits[masked], batch.input_ids[masked], reduction="sum")
    return token_loss / masked.sum().clamp(min=1)


@torch.no_grad()
def block_generate_greedy(
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    prompts: Sequence[str],
    max_new_tokens: int,
    tokens_per_step: int | None,
    block_size: int = BLOCK_SIZE,
) -> list[str]:
    """Block by block, low-confidence remasking inside the block, greedy: each step commits the
    ``tokens_per_step`` most confident masked positions of each row's current block (the whole block when
    ``None``); after a committed EOS, every later position is EOS. Full forwards with the block-causal mask (a
    development evaluator, beside the decoder for the reasons
    :func:`~dlm_decode.recipes.train_embedded.dllm_generate_greedy` gives; the decoder's exact caches make this
    cheaper)."""
    mask_id, eos_id = tokenizer.mask_token_id, tokenizer.eos_token_id
    rows = [p + [mask_id] * max_new_tokens for p in prompt_ids(tokenizer, prompts)]
    input_ids, attention_mask = left_pad(rows, tokenizer.pad_token_id)
    gen_start = input_ids.shape[1] - max_new_tokens
    blocks = AttentionPattern(block_size).blocks(attention_mask, gen_start)
    mask, positions = block_mask(attention_mask, blocks), position_ids_from_mask(attention_mask)
    k = block_size if tokens_per_step is None else tokens_per_step
    region_blocks_ = blocks[gen_start:]
    while True:
        region = input_ids[:, gen_start:]  # [B, L], a view
        masked = region == mask_id
        if not masked.any():
            return decode_region(tokenizer, region)
        current = region_blocks_.masked_fill(~masked, 1 << 30).min(-1, keepdim=True).values  # [B, 1]
        eligible = masked & (region_blocks_ == current)
        logits = model(input_ids=input_ids, attention_mask=mask, position_ids=positions).logits[:, gen_start:]
        confidence, predicted = allowed_logits(logits.float(), tokenizer).softmax(-1).max(-1)  # [B, L]
        confidence = confidence.masked_fill(~eligible, -1.0)
        top = confidence.topk(min(k, max_new_tokens), dim=-1).indices
        commit = torch.zeros_like(masked).scatter_(1, top, True) & eligible
        region[commit] = predicted[commit]
        region[(region == eos_id).long().cumsum(1) > 0] = eos_id


def train(
    tokenizer: PreTrainedTokenizerFast, init: Path, run: TrainingRun, block_size: int = BLOCK_SIZE
) -> tuple[LlamaForCausalLM, float]:
    """Adapt the bidirectional checkpoint ``init`` to block diffusion as ``run`` says; return the model (on the
    CPU, its config declaring the pattern) and the training wall time."""
    torch.manual_seed(run.seed)
    # the ignore below: transformers' wrapper of nn.Module.to is typed as taking the model, not the device
    model = LlamaForCausalLM.from_pretrained(init, dtype=torch.float32).to(run.device)  # type: ignore[arg-type]
    model.config.update({PATTERN_KEY: "block_causal", BLOCK_SIZE_KEY: block_size})  # read by the adapter
    rng = random.Random(f"block/{run.seed}")
    generator = torch.Generator().manual_seed(run.seed)

    def loss(model: LlamaForCausalLM, batch: Batch) -> torch.Tensor:
        return block_diffusion_loss(model, batch, tokenizer.mask_token_id, block_size, generator)

    parameters = f"{count_parameters(model):,}"
    logger.info("block: %s parameters from %s, %d steps of batch %d", parameters, init, run.steps, run.batch_size)
    rows = partial(dllm_rows, tokenizer=tokenizer, rng=rng)
    seconds = train_on_tasks(model, rows, loss, run, pad_id=tokenizer.pad_token_id, rng=rng, label="block")
    return model.to("cpu"), seconds


def evaluate(
    model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, n_per_task: int, block_size: int
) -> dict[str, dict[str, float]]:
    """The quick_eval table: one row per ``tokens_per_step`` inside a block."""
    generate = partial(
        block_generate_greedy, model, tokenizer, max_new_tokens=EVAL_MAX_NEW_TOKENS, block_size=block_size
    )
    return tradeoff_table("block", "block", generate, n_per_task)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m dlm_decode.recipes.train_block", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--out", type=Path, required=True, help="directory that receives block/")
    parser.add_argument(
        "--init", default="embedded:dllm", help="bidirectional checkpoint to adapt: a directory or embedded:<name>"
    )
    parser.add_argument("--block-size", type=int, default=BLOCK_SIZE)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=1e-3)
    add_run_arguments(parser)
    args = parser.parse_args(argv)
    if args.smoke:
        args.steps, args.batch_size, args.eval_n, args.log_every = 3, 8, 2, 1
    return args


def command_line(args: argparse.Namespace) -> str:
    words = ["--out", str(args.out), "--init", args.init, "--seed", str(args.seed)]
    if args.smoke:
        words.append("--smoke")
    else:
        words += [
            "--block-size",
            str(args.block_size),
            "--steps",
            str(args.steps),
            "--lr",
            f"{args.lr:g}",
            *run_words(args),
        ]
    return "python -m dlm_decode.recipes.train_block " + " ".join(words)


def write_model_card(directory: Path, args: argparse.Namespace, run: dict, table: dict[str, dict[str, float]]):
    """``directory/MODEL_CARD.md``: origin, objective, command, size, time and the quick_eval table."""
    lines = [
        "# Embedded block-diffusion model (`embedded:block`)",
        "",
        f"A Llama over the embedded character tokenizer with block-causal attention: blocks of {args.block_size}"
        " generated columns, bidirectional inside a block, causal across blocks, the prompt one block before the",
        f"first (`config.json`: `attention_pattern: block_causal`, `diffusion_block_size: {args.block_size}`)."
        f" Adapted from `{args.init}` with the block-diffusion objective of `dlm_decode.recipes.train_block`",
        "(clean earlier blocks as context, the current block noised; every block of a row trained in one forward",
        "over `[noisy copy | clean copy]`), on the task suite's train split drawn on the fly, as the pair was.",
        "",
        "```",
        command_line(args),
        "```",
        "",
        "| layers | hidden | parameters | safetensors | steps | batch | lr | seed | wall time |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {run['layers']} | {run['hidden']} | {run['parameters']:,} | {run['bytes'] / 1e6:.2f} MB | {args.steps} "
        f"| {args.batch_size} | {args.lr:g} | {args.seed} | {run['seconds'] / 60:.1f} min |",
        "",
        f"{OPTIMIZER_TEXT}, {trained_on(args)}.",
    ]
    lines += quick_eval_section(
        args.eval_n,
        table,
        (
            "`block k=n`: blocks left to right, committing the n most confident masked positions of the block per"
            " step (`block`: the whole block in one forward), EOS fill after a committed EOS. Measured by"
            " `evaluate` in `dlm_decode.recipes.train_block`"
        ),
    )
    (directory / "MODEL_CARD.md").write_text("\n".join(lines) + "\n")


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    """Adapt, save (model + tokenizer), quick-evaluate and write the model card; return the quick_eval table."""
    from dlm_decode.models.checkpoint import resolve_path

    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(args.threads)
    tokenizer = build_char_tokenizer()
    init = Path(resolve_path(args.init, "--init"))
    training = TrainingRun.from_args(args, steps=args.steps, lr=args.lr)
    model, seconds = train(tokenizer, init, training, args.block_size)
    directory = args.out / "block"
    run = {"layers": model.config.num_hidden_layers, "hidden": model.config.hidden_size}
    run.update(save_trained(model, tokenizer, directory, seconds))
    table = evaluate(model, tokenizer, args.eval_n, args.block_size) if args.eval_n else {}
    write_model_card(directory, args, run, table)
    logger.info("results:\n%s", json.dumps({"run": run, "quick_eval": table}, indent=1))
    return table


if __name__ == "__main__":
    main()
