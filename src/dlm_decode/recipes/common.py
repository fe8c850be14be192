"""What the embedded trainers share: training data, optimisation, the quick evaluation and model-card pieces.

:mod:`dlm_decode.recipes.train_embedded` trains the bidirectional dLLM and the AR model from scratch,
:mod:`dlm_decode.recipes.train_block` adapts the dLLM to block diffusion; both draw the same data (canvases of the
task suite's train split), optimise with the same schedule and loop, score with the same quick evaluation and
write model cards with the same sections and command-line options.
"""

from __future__ import annotations

import argparse
import logging
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import cast

import torch
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from dlm_decode.eval.tasks import TASKS, Example, get_task

logger = logging.getLogger("dlm_decode.train")

#: The dLLM's generated region (answer + EOS padding) is at most this long in training.
MAX_REGION = 64
#: Fraction of dLLM training rows whose generated region is cut inside the answer (no EOS), the view a
#: lookahead window that truncates the canvas gives the model.
TRUNCATED_FRACTION = 0.1
#: Training batches are split into forwards of this many rows of similar length: less padding than one forward of
#: the whole batch, and on a CPU a step of forwards of 16 rows ran faster than one of forwards of 32 (the
#: measurement is in docs/results.md).
ROWS_PER_FORWARD = 16
#: Relative frequency of each task in training. Arithmetic and pick (whose test problems pair a phrasing with a
#: category never seen together in training) need more data than reversing or sudoku, which the dLLM learns early.
TASK_WEIGHTS = {"arith": 2.0, "gsm": 1.25, "sort": 1.25, "reverse": 1.0, "pick": 1.5, "sudoku": 0.75}
#: LLaDA's lower bound on the masking ratio ``t``.
MIN_MASK_RATIO = 1e-3


# --- training data ----------------------------------------------------------------------------------------------------


def prompt_ids(tokenizer: PreTrainedTokenizerFast, prompts: Sequence[str]) -> list[list[int]]:
    """Token ids of the chat template ``BOS + prompt + "\\n"`` for each prompt (what the decoder builds)."""
    encoded = tokenizer([p + "\n" for p in prompts], add_special_tokens=False)["input_ids"]
    return [[tokenizer.bos_token_id, *ids] for ids in encoded]


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad rows of ids.

    :return: ``input_ids`` ``[B, N]`` long and ``attention_mask`` ``[B, N]`` bool (false on padding),
        ``N`` the longest row.
    """
    width = max(len(row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, row in enumerate(rows):
        if row:
            input_ids[i, width - len(row) :] = torch.tensor(row)
            attention_mask[i, width - len(row) :] = True
    return input_ids, attention_mask


def _batched(items: Sequence, size: int) -> Iterator[Sequence]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


@dataclass
class Batch:
    """A left-padded training batch.

    ``targets`` marks the positions that carry loss, always the last tokens of each row: the generated region
    for the dLLM (answer and EOS padding, each masked with probability ``t``), the answer and its EOS for the AR
    model (each predicted from the position before it).
    """

    input_ids: torch.Tensor  # [B, N] long
    attention_mask: torch.Tensor  # [B, N] bool
    targets: torch.Tensor  # [B, N] bool

    def to(self, device: str | torch.device) -> Batch:
        return Batch(self.input_ids.to(device), self.attention_mask.to(device), self.targets.to(device))


#: A training row: token ids and how many of its last tokens are targets.
Row = tuple[list[int], int]


def make_batches(rows: Sequence[Row], pad_id: int, size: int) -> list[Batch]:
    """Sort rows by length and split them into left-padded batches of ``size`` rows (less padding than one)."""
    ordered = sorted(rows, key=lambda row: len(row[0]))
    batches = []
    for chunk in _batched(ordered, size):
        input_ids, attention_mask = left_pad([ids for ids, _ in chunk], pad_id)
        width = input_ids.shape[1]
        counts = torch.tensor([count for _, count in chunk])
        batches.append(Batch(input_ids, attention_mask, torch.arange(width)[None, :] >= width - counts[:, None]))
    return batches


def dllm_rows(examples: Sequence[Example], tokenizer: PreTrainedTokenizerFast, rng: random.Random) -> list[Row]:
    """Canvases ``[BOS prompt \\n][answer EOS ... EOS]`` whose generated region (the targets) has a random
    length in ``[len(answer) + 1, MAX_REGION]``, so any ``max_new_tokens`` in that range matches training.

    The number of EOS tokens is log-uniform in ``[1, MAX_REGION - len(answer)]``: every length is seen, and short
    tails (cheap rows) are more frequent than long ones, which teach little beyond "EOS continues".

    A ``TRUNCATED_FRACTION`` of rows keeps only a random non-empty prefix of the answer instead (no EOS): the
    view of a canvas that a lookahead window cuts before the answer ends.
    """
    prompts = prompt_ids(tokenizer, [e.prompt for e in examples])
    answers = tokenizer([e.answer for e in examples], add_special_tokens=False)["input_ids"]
    rows = []
    for prompt, answer in zip(prompts, answers, strict=True):
        if rng.random() < TRUNCATED_FRACTION:
            region = answer[: rng.randint(1, len(answer))]
        else:
            eos_count = int((MAX_REGION - len(answer) + 1) ** rng.random())  # log-uniform in [1, MAX - len]
            region = answer + [tokenizer.eos_token_id] * eos_count
        rows.append((prompt + region, len(region)))
    return rows


def draw_examples(rng: random.Random, n: int, weights: dict[str, float]) -> list[Example]:
    """``n`` training examples, each from a task drawn with the relative frequencies ``weights``."""
    names = rng.choices(list(weights), weights=list(weights.values()), k=n)
    return [get_task(name).draw(rng, "train") for name in names]


# --- optimisation -----------------------------------------------------------------------------------------------------


#: How every embedded model is optimised (:class:`LearningRateSchedule` and :func:`train_model`), for the cards.
OPTIMIZER_TEXT = (
    "AdamW (betas 0.9/0.98, weight decay 0.01), 5% linear warmup then cosine decay, gradient clipping 1.0, float32"
)


@dataclass
class LearningRateSchedule:
    """AdamW's learning rate over a run of ``steps``: linear warmup over ``warmup`` steps to ``lr``, then cosine
    decay to ``min_lr_ratio * lr``; :meth:`factor` is the multiplier of ``lr`` at a step."""

    steps: int
    lr: float
    warmup: int
    min_lr_ratio: float = 0.05
    weight_decay: float = 0.01

    def factor(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        progress = (step - self.warmup) / max(1, self.steps - self.warmup)
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def train_model(
    model: LlamaForCausalLM,
    loss_fn: Callable[[int], torch.Tensor],
    schedule: LearningRateSchedule,
    *,
    label: str,
    log_every: int,
) -> float:
    """Run ``schedule.steps`` optimizer steps of ``loss_fn(step)``; return the wall time in seconds."""
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=schedule.lr, betas=(0.9, 0.98), weight_decay=schedule.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule.factor)
    model.train()
    start = last = time.perf_counter()
    window = 0.0
    for step in range(schedule.steps):
        loss = loss_fn(step)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        scheduler.step()
        window += loss.item()
        if (step + 1) % log_every == 0 or step + 1 == schedule.steps:
            now = time.perf_counter()
            count = (step % log_every) + 1
            logger.info(
                "%s step %d/%d loss %.4f lr %.2e %.3f s/step elapsed %.0f s",
                label, step + 1, schedule.steps, window / count, scheduler.get_last_lr()[0],
                (now - last) / count, now - start,
            )  # fmt: skip
            window, last = 0.0, now
    model.eval()
    return time.perf_counter() - start


@dataclass
class TrainingRun:
    """How a trainer runs: ``steps`` optimizer steps of ``batch_size`` examples at peak learning rate ``lr``, from
    ``seed``, logging every ``log_every`` steps, on ``device`` (data and masks are drawn on the CPU either way),
    the forwards through ``torch.compile`` (dynamic shapes; needs a C++ compiler on the CPU) when ``compile``:
    faster steps once compiled (docs/results.md gives the measurement), the same data and masks, weights that
    differ from an eager run by floating-point rounding."""

    steps: int
    batch_size: int
    lr: float
    seed: int = 0
    log_every: int = 100
    device: str = "cpu"
    compile: bool = False

    @classmethod
    def from_args(cls, args: argparse.Namespace, *, steps: int, lr: float) -> TrainingRun:
        """A run of ``steps`` at ``lr`` with ``--batch-size`` and the options of :func:`add_run_arguments`."""
        shared = ("batch_size", "seed", "log_every", "device", "compile")
        return cls(steps=steps, lr=lr, **{name: getattr(args, name) for name in shared})


def train_on_tasks(
    model: LlamaForCausalLM,
    rows: Callable[[list[Example]], list[Row]],
    batch_loss: Callable[[LlamaForCausalLM, Batch], torch.Tensor],
    run: TrainingRun,
    *,
    pad_id: int,
    rng: random.Random,
    label: str,
) -> float:
    """Train ``model`` (already on ``run.device``) with :func:`train_model` as ``run`` says; return the wall time in
    seconds.

    A step draws ``run.batch_size`` examples of the task suite (:func:`draw_examples` with ``TASK_WEIGHTS``, from
    ``rng``), turns them into training ``rows``, and averages ``batch_loss(model, batch)`` over forwards of
    ``ROWS_PER_FORWARD`` rows (:func:`make_batches`, padded with ``pad_id``), each weighted by its share of the rows.
    """
    # the compiled module passes calls and attribute reads on to the model
    forward_model = cast(LlamaForCausalLM, torch.compile(model, dynamic=True)) if run.compile else model

    def loss_fn(step: int) -> torch.Tensor:
        drawn = rows(draw_examples(rng, run.batch_size, TASK_WEIGHTS))
        total = torch.zeros((), device=run.device)
        for batch in make_batches(drawn, pad_id, ROWS_PER_FORWARD):
            loss = batch_loss(forward_model, batch.to(run.device))
            total = total + loss * (batch.input_ids.shape[0] / len(drawn))
        return total

    schedule = LearningRateSchedule(steps=run.steps, lr=run.lr, warmup=max(1, run.steps // 20))
    return train_model(model, loss_fn, schedule, label=label, log_every=run.log_every)


def save_trained(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, directory: Path, seconds: float) -> dict:
    """Save ``model`` and ``tokenizer`` into ``directory``; return the run's figures for the card: parameters,
    training ``seconds`` and the safetensors' ``bytes``."""
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    logger.info("%s saved to %s after %.1f min", directory.name, directory, seconds / 60)
    return {
        "parameters": count_parameters(model),
        "seconds": seconds,
        "bytes": (directory / "model.safetensors").stat().st_size,
    }


def count_parameters(model: torch.nn.Module) -> int:
    """Unique parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in model.parameters())


# --- quick evaluation -------------------------------------------------------------------------------------------------


#: ``max_new_tokens`` for the task suite: every answer (at most 25 characters) plus its EOS fits.
EVAL_MAX_NEW_TOKENS = 32
#: Tokens committed per step in the quick evaluation's trade-off table, one row each (``None``: every masked
#: position of the canvas at once for the dLLM, of the current block for the block model).
TRADEOFF_KS: tuple[int | None, ...] = (1, 2, 4, None)


def allowed_logits(logits: torch.Tensor, tokenizer: PreTrainedTokenizerFast) -> torch.Tensor:
    """Forbid pad, BOS and mask as outputs. ``logits``: ``[..., V]``."""
    banned = [tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.mask_token_id]
    return logits.index_fill(-1, torch.tensor(banned), float("-inf"))


def decode_region(tokenizer: PreTrainedTokenizerFast, region: torch.Tensor) -> list[str]:
    """Text before the first EOS of each row of ``region`` ``[B, L]``."""
    texts = []
    for row in region.tolist():
        end = row.index(tokenizer.eos_token_id) if tokenizer.eos_token_id in row else len(row)
        texts.append(cast(str, tokenizer.decode(row[:end])))  # one sequence of ids decodes to one str
    return texts


def quick_eval(
    generate: Callable[[Sequence[str]], list[str]],
    *,
    n_per_task: int = 100,
    seed: int = 0,
    batch_size: int = 200,
    tasks: Sequence[str] | None = None,
) -> dict[str, float]:
    """Accuracy of ``generate`` (prompts -> outputs) per task (default: all) on the test split, plus their
    ``mean``."""
    tasks = list(TASKS) if tasks is None else tasks
    accuracy = {}
    for name in tasks:
        task = get_task(name)
        examples = task.generate("test", n_per_task, seed)
        outputs = [o for chunk in _batched(examples, batch_size) for o in generate([e.prompt for e in chunk])]
        accuracy[name] = sum(task.check(e, o) for e, o in zip(examples, outputs, strict=True)) / len(examples)
    accuracy["mean"] = sum(accuracy.values()) / len(tasks)
    return accuracy


def timed_quick_eval(label: str, generate: Callable[[Sequence[str]], list[str]], n_per_task: int) -> dict[str, float]:
    """:func:`quick_eval` of ``generate``, logged with ``label`` and its wall time."""
    started = time.perf_counter()
    row = quick_eval(generate, n_per_task=n_per_task)
    logger.info("%s: %s (%.0f s)", label, format_row(row), time.perf_counter() - started)
    return row


def tradeoff_table(
    name: str, everything: str, generate: Callable[..., list[str]], n_per_task: int
) -> dict[str, dict[str, float]]:
    """The quick_eval rows of a greedy decoder ``generate(prompts, tokens_per_step=k)``, one per ``k`` of
    ``TRADEOFF_KS``, labelled ``{name} k={k}`` (``everything`` for ``None``)."""
    table = {}
    for k in TRADEOFF_KS:
        label = f"{name} k={everything if k is None else k}"
        table[label] = timed_quick_eval(label, partial(generate, tokens_per_step=k), n_per_task)
    return table


def format_row(row: dict[str, float]) -> str:
    """A quick_eval row for the log: ``task accuracy%`` pairs."""
    return " ".join(f"{name} {100 * value:.1f}" for name, value in row.items())


def markdown_table(table: dict[str, dict[str, float]]) -> str:
    """The quick_eval table as Markdown, accuracies in percent."""
    columns = [*TASKS, "mean"]
    lines = ["| decoding | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for label, row in table.items():
        lines.append(f"| {label} | " + " | ".join(f"{100 * row[c]:.1f}" for c in columns) + " |")
    return "\n".join(lines)


def quick_eval_section(eval_n: int, table: dict[str, dict[str, float]], legend: str) -> list[str]:
    """A model card's quick-evaluation section (none for an empty table); ``legend`` explains its row labels and
    names the evaluator."""
    if not table:
        return []
    return [
        "",
        "## Quick evaluation (greedy, test split)",
        "",
        f"{eval_n} test examples per task, `max_new_tokens={EVAL_MAX_NEW_TOKENS}`, accuracy in percent. {legend};"
        " `dlm-decode eval` gives the official numbers.",
        "",
        markdown_table(table),
    ]


# --- the run's command line -------------------------------------------------------------------------------------------


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The options both trainers take after their own: seed, where and how to run, evaluation, logging, smoke."""
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--device", default="cpu", help="where to train (cpu, cuda); evaluation runs on the CPU")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the forwards: faster CPU steps, see docs/results.md (needs a C++ compiler)",
    )
    parser.add_argument("--eval-n", type=int, default=100, help="test examples per task for quick_eval (0: skip)")
    parser.add_argument("--log-every", type=int, default=100)
    parser.add_argument("--smoke", action="store_true", help="a few tiny steps (CI): overrides steps, batch, eval")


def run_words(args: argparse.Namespace) -> list[str]:
    """The end of a model card's command line: batch size, threads, and ``--device`` / ``--compile`` when set."""
    return [
        "--batch-size",
        str(args.batch_size),
        "--threads",
        str(args.threads),
        *(["--device", args.device] if args.device != "cpu" else []),
        *(["--compile"] if args.compile else []),
    ]


def trained_on(args: argparse.Namespace) -> str:
    """Where a trainer ran, for a model card: ``--threads`` / ``--device`` and ``--compile``."""
    where = f"{args.threads} CPU threads" if args.device == "cpu" else f"trained on {args.device}"
    return where + (", forwards through `torch.compile`" if args.compile else "")
