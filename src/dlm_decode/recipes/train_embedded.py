"""Train the embedded model pair on the task suite.

* ``dllm``: a bidirectional Llama (``config.is_causal=False``) trained with the masked-diffusion objective
  (LLaDA's, without its ``1/t`` weight) on the decoder's canvas layout ``[pads][BOS prompt \\n][answer EOS ... EOS]``.
* ``ar``: a smaller causal Llama trained with next-token loss on ``[pads][BOS prompt \\n][answer EOS]``.

Both are plain ``LlamaForCausalLM`` checkpoints sharing :func:`~dlm_decode.models.tokenizer.build_char_tokenizer`.
Training data is drawn on the fly from the train split of :mod:`dlm_decode.eval.tasks`; step counts and seeds are
fixed, so a run is reproducible up to floating-point nondeterminism. :func:`quick_eval` is a small greedy
evaluator for development only; official numbers come from ``dlm-decode eval``.

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
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from dlm_decode.eval.tasks import TASKS, Example, get_task
from dlm_decode.masks import bidirectional_mask, position_ids_from_mask
from dlm_decode.models.tokenizer import build_char_tokenizer

logger = logging.getLogger("dlm_decode.train")

#: Architectures (Llama, tied embeddings). The AR model is the cheap one, as APD assumes.
DLLM_ARCH = {"hidden_size": 128, "num_hidden_layers": 4, "num_attention_heads": 4, "intermediate_size": 384}
AR_ARCH = {"hidden_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 384}
#: Standard deviation of the initial weights. HF's default (0.02) leaves a masked position's attention nearly
#: uniform, and the masked-diffusion loss then sits on a long plateau (a masked position sees only the mask token
#: through its residual stream, unlike a next-token position); 0.1 leaves it several times sooner.
INIT_STD = 0.1
MAX_POSITIONS = 128
#: The dLLM's generated region (answer + EOS padding) is at most this long in training.
MAX_REGION = 64
#: Fraction of dLLM training rows whose generated region is cut inside the answer (no EOS), the view a
#: lookahead window that truncates the canvas gives the model.
TRUNCATED_FRACTION = 0.1
#: Training batches are split into forwards of this many rows of similar length (less padding; 16 rows per
#: forward made a step of batch 64 about 18% faster than 32 on 2 cores).
ROWS_PER_FORWARD = 16
#: Relative frequency of each task in training. Arithmetic and pick (whose test problems pair a phrasing with a
#: category never seen together in training) need more data than reversing or sudoku, which the dLLM learns early.
TASK_WEIGHTS = {"arith": 2.0, "gsm": 1.25, "sort": 1.25, "reverse": 1.0, "pick": 1.5, "sudoku": 0.75}
#: LLaDA's lower bound on the masking ratio ``t``.
MIN_MASK_RATIO = 1e-3


def model_config(tokenizer: PreTrainedTokenizerFast, arch: dict[str, int], *, causal: bool) -> LlamaConfig:
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


def draw_examples(rng: random.Random, n: int, weights: dict[str, float]) -> list[Example]:
    """``n`` training examples, each from a task drawn with the relative frequencies ``weights``."""
    names = rng.choices(list(weights), weights=list(weights.values()), k=n)
    return [get_task(name).draw(rng, "train") for name in names]


@dataclass
class Schedule:
    """AdamW with linear warmup then cosine decay to ``min_lr_ratio * lr``."""

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
    schedule: Schedule,
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


def allowed_logits(logits: torch.Tensor, tokenizer: PreTrainedTokenizerFast) -> torch.Tensor:
    """Forbid pad, BOS and mask as outputs. ``logits``: ``[..., V]``."""
    banned = [tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.mask_token_id]
    return logits.index_fill(-1, torch.tensor(banned), float("-inf"))


def decode_region(tokenizer: PreTrainedTokenizerFast, region: torch.Tensor) -> list[str]:
    """Text before the first EOS of each row of ``region`` ``[B, L]``."""
    texts = []
    for row in region.tolist():
        end = row.index(tokenizer.eos_token_id) if tokenizer.eos_token_id in row else len(row)
        texts.append(tokenizer.decode(row[:end]))
    return texts


@torch.no_grad()
def dllm_generate_greedy(
    model: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    prompts: Sequence[str],
    max_new_tokens: int,
    tokens_per_step: int | None,
) -> list[str]:
    """LLaDA low-confidence remasking, greedy: each step commits the ``tokens_per_step`` most confident masked
    positions of each row (all of them when ``None``); after a committed EOS, every later position is EOS."""
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


#: ``max_new_tokens`` for the task suite: every answer (at most 25 characters) plus its EOS fits.
EVAL_MAX_NEW_TOKENS = 32
#: Tokens committed per step in the dLLM trade-off table (``None``: the whole canvas at once).
TRADEOFF_KS: tuple[int | None, ...] = (1, 2, 4, None)


def train(
    kind: str, tokenizer: PreTrainedTokenizerFast, *, steps: int, batch_size: int, lr: float, seed: int,
    log_every: int, device: str = "cpu", compile: bool = False, arch: dict[str, int] | None = None,
) -> tuple[LlamaForCausalLM, float]:  # fmt: skip
    """Train the ``"dllm"`` or ``"ar"`` model from a fixed seed; return it (on the CPU) and the training wall time.

    :param device: where the model trains; data and masks are drawn on the CPU either way.
    :param compile: run the forwards through ``torch.compile`` (dynamic shapes; needs a C++ compiler on the
        CPU): about 1.3x faster steps on the 2-core machine after about half a minute of compilation, which the
        wall time includes. Same data and masks; the weights differ from an eager run by floating-point rounding.
    :param arch: the architecture (default: ``DLLM_ARCH`` or ``AR_ARCH``).
    """
    torch.manual_seed(seed)
    causal = kind == "ar"
    arch = arch or (AR_ARCH if causal else DLLM_ARCH)
    model = LlamaForCausalLM(model_config(tokenizer, arch, causal=causal)).to(device)
    forward_model = torch.compile(model, dynamic=True) if compile else model
    rng = random.Random(f"{kind}/{seed}")
    generator = torch.Generator().manual_seed(seed)

    def loss_fn(step: int) -> torch.Tensor:
        examples = draw_examples(rng, batch_size, TASK_WEIGHTS)
        rows = ar_rows(examples, tokenizer) if causal else dllm_rows(examples, tokenizer, rng)
        total = torch.zeros((), device=device)
        for batch in make_batches(rows, tokenizer.pad_token_id, ROWS_PER_FORWARD):
            batch = batch.to(device)
            if causal:
                loss = ar_loss(forward_model, batch)
            else:
                loss = masked_diffusion_loss(forward_model, batch, tokenizer.mask_token_id, generator)
            total = total + loss * (batch.input_ids.shape[0] / len(rows))
        return total

    logger.info("%s: %s parameters, %d steps of batch %d", kind, f"{count_parameters(model):,}", steps, batch_size)
    schedule = Schedule(steps=steps, lr=lr, warmup=max(1, steps // 20))
    seconds = train_model(model, loss_fn, schedule, label=kind, log_every=log_every)
    return model.to("cpu"), seconds


def count_parameters(model: torch.nn.Module) -> int:
    """Unique parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in model.parameters())


def evaluate_pair(
    dllm: LlamaForCausalLM | None, ar: LlamaForCausalLM | None, tokenizer: PreTrainedTokenizerFast, n_per_task: int
) -> dict[str, dict[str, float]]:
    """The quick_eval table: one row per dLLM ``tokens_per_step`` (``dllm k=...``) and one for the AR model."""
    table = {}
    if dllm is not None:
        for k in TRADEOFF_KS:
            label = f"dllm k={'all' if k is None else k}"
            started = time.perf_counter()
            table[label] = quick_eval(
                lambda prompts, k=k: dllm_generate_greedy(dllm, tokenizer, prompts, EVAL_MAX_NEW_TOKENS, k),
                n_per_task=n_per_task,
            )
            logger.info("%s: %s (%.0f s)", label, _format_row(table[label]), time.perf_counter() - started)
    if ar is not None:
        started = time.perf_counter()
        table["ar"] = quick_eval(
            lambda prompts: ar_generate_greedy(ar, tokenizer, prompts, EVAL_MAX_NEW_TOKENS), n_per_task=n_per_task
        )
        logger.info("ar: %s (%.0f s)", _format_row(table["ar"]), time.perf_counter() - started)
    return table


def _format_row(row: dict[str, float]) -> str:
    return " ".join(f"{name} {100 * value:.1f}" for name, value in row.items())


def markdown_table(table: dict[str, dict[str, float]]) -> str:
    """The quick_eval table as Markdown, accuracies in percent."""
    columns = [*TASKS, "mean"]
    lines = ["| decoding | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for label, row in table.items():
        lines.append(f"| {label} | " + " | ".join(f"{100 * row[c]:.1f}" for c in columns) + " |")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m dlm_decode.recipes.train_embedded", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="directory that receives dllm/, ar/, MODEL_CARD.md")
    parser.add_argument("--which", choices=("dllm", "ar", "both"), default="both")
    parser.add_argument("--dllm-steps", type=int, default=16000)
    parser.add_argument("--ar-steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--dllm-lr", type=float, default=3e-3)
    parser.add_argument("--ar-lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--device", default="cpu", help="where to train (cpu, cuda); evaluation runs on the CPU")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the forwards: about 1.3x faster on 2 CPU cores (needs a C++ compiler)")
    parser.add_argument("--eval-n", type=int, default=100, help="test examples per task for quick_eval (0: skip)")
    parser.add_argument("--log-every", type=int, default=100)
    parser.add_argument("--smoke", action="store_true", help="a few tiny steps (CI): overrides steps, batch, eval")
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
        "format is the tokenizer's chat template, `BOS + prompt + \"\\n\"`.",
        f"Recommended `max_new_tokens`: {EVAL_MAX_NEW_TOKENS} (every answer is at most 25 characters, plus its EOS).",
        "",
        "## Data",
        "",
        "Six tasks, fresh examples every step from the train split (a hash of the prompt decides the split, so no",
        "test prompt is ever trained on), drawn with the relative frequencies "
        + ", ".join(f"{name} {weight:g}" for name, weight in TASK_WEIGHTS.items()) + ".",
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
        " tokens, without LLaDA's `1/t` weight (see `masked_diffusion_loss`). The region is the answer plus a log-uniform"
        f" number of EOS tokens, up to {MAX_REGION} in all; {TRUNCATED_FRACTION:.0%} of rows instead keep only a"
        " prefix of the answer (a canvas cut by a lookahead window).",
    ]
    lines += quick_eval_section(args.eval_n, table, (
        "`dllm k=n`: low-confidence remasking committing the n most confident masked positions per step"
        " (`all`: the whole canvas in one forward), EOS fill after a committed EOS. `ar`: greedy left to right."
        " Measured by `quick_eval` in `dlm_decode.recipes.train_embedded`"))
    (out / "MODEL_CARD.md").write_text("\n".join(lines) + "\n")


#: How every embedded model is optimised (the trainers share :class:`Schedule` and :func:`train_model`).
OPTIMIZER_TEXT = ("AdamW (betas 0.9/0.98, weight decay 0.01), 5% linear warmup then cosine decay, gradient clipping"
                  " 1.0, float32")


def trained_on(args: argparse.Namespace) -> str:
    """Where a trainer ran, for a model card: ``--threads`` / ``--device`` and ``--compile``."""
    where = f"{args.threads} CPU threads" if args.device == "cpu" else f"trained on {args.device}"
    return where + (", forwards through `torch.compile`" if args.compile else "")


def quick_eval_section(eval_n: int, table: dict[str, dict[str, float]], legend: str) -> list[str]:
    """A model card's quick-evaluation section (none for an empty table); ``legend`` explains its row labels and
    names the evaluator."""
    if not table:
        return []
    return ["", "## Quick evaluation (greedy, test split)", "",
            f"{eval_n} test examples per task, `max_new_tokens={EVAL_MAX_NEW_TOKENS}`, accuracy in percent. {legend};"
            " `dlm-decode eval` gives the official numbers.", "", markdown_table(table)]


def _card_examples() -> dict[str, Example]:
    return {name: task.generate("train", 1, seed=0)[0] for name, task in TASKS.items()}


def _command_line(args: argparse.Namespace) -> list[str]:
    words = ["--out", str(args.out), "--which", args.which, "--seed", str(args.seed)]
    if args.smoke:
        return [*words, "--smoke"]
    return [*words, "--dllm-steps", str(args.dllm_steps), "--ar-steps", str(args.ar_steps),
            "--dllm-lr", f"{args.dllm_lr:g}", "--ar-lr", f"{args.ar_lr:g}",
            "--batch-size", str(args.batch_size), "--threads", str(args.threads),
            *(["--device", args.device] if args.device != "cpu" else []),
            *(["--compile"] if args.compile else [])]  # fmt: skip


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
        model, seconds = train(
            kind, tokenizer, steps=steps, batch_size=args.batch_size, lr=lr, seed=args.seed,
            log_every=args.log_every, device=args.device, compile=args.compile,
        )  # fmt: skip
        directory = args.out / kind
        model.save_pretrained(directory)
        tokenizer.save_pretrained(directory)
        models[kind] = model
        runs[kind] = {
            "arch": DLLM_ARCH if kind == "dllm" else AR_ARCH, "parameters": count_parameters(model), "steps": steps,
            "lr": lr, "seconds": seconds, "bytes": (directory / "model.safetensors").stat().st_size,
        }  # fmt: skip
        logger.info("%s saved to %s after %.1f min", kind, directory, seconds / 60)
    table = evaluate_pair(models.get("dllm"), models.get("ar"), tokenizer, args.eval_n) if args.eval_n else {}
    write_model_card(args.out, args, runs, table)
    logger.info("results:\n%s", json.dumps({"runs": runs, "quick_eval": table}, indent=1))
    return table


if __name__ == "__main__":
    main()
