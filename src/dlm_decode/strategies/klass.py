"""KLASS: commit the positions whose prediction is both confident and stable across steps.

KLASS ("KL-Adaptive Stability Sampling"; "KLASS: KL-Guided Fast Inference in Masked Diffusion Models", Seo Hyun
Kim, Sunwoo Hong, Hojung Jung, Youngrok Park, Se-Young Yun; arXiv 2511.05664; official code ``shkim0116/KLASS`` at
commit ad87ecb, ``src/model/llada_klass.py`` ``stable_confident_decode`` with ``alg="klass"`` and
``src/model/dream_klass.py``) watches every masked position's predictive distribution from step to step.

*The rule, per row and step* (the ``klass`` verification):

1. **Stability.** For every generated column the forward computes, ``KL_t = KL(p_t || p_{t-1})`` between this
   step's and the previous step's full softmax distributions at that column (``sum_v p_t(v) (log p_t(v) - log
   p_{t-1}(v))``; excluded ids, the mask id and ids the tokenizer cannot decode, carry no mass, as everywhere in the
   project). A column is *stable* when its last ``history_length`` KLs are all below ``kl_threshold``; its first
   forward has no previous distribution and counts as unstable (the official code compares it with zeros, a huge
   KL). The history is kept for every masked generated column in each row's ``state.memory``, across blocks; a
   column the forward does not compute (outside a cache's span) loses its history. With ``block_warmup`` (the
   official LLaDA code) the rule also waits for the row's ``history_length - 1``-th step (0-based) inside its
   current block: the official block loop gates it by the in-block step although the history runs on.
2. **Confidence.** The proposed token's probability exceeds ``conf_threshold`` (``> `` as the official LLaDA code;
   ``inclusive: true`` is Dream's ``>=``).
3. **Commit.** The eligible positions that are stable and confident (``unmask: all``, the default), or only the
   most confident of them (``max_conf``) or the one of lowest KL (``min_kl``). A row with none falls back to LLaDA's
   low-confidence schedule: the ``m // s + (j < m % s)`` most confident at its block step ``j`` (``m`` the block's
   masks when the row entered it, ``s`` = ``steps_per_block``, or ``ceil(m / tokens_per_step)`` when null;
   ``tokens_per_step: 1`` is Dream-KLASS's fallback, the single most confident mask).

Row statistics: ``klass.stable_commits`` (tokens committed by the KL rule) and ``klass.fallback_steps`` (steps
where the row fell back).

*Departures of the official code from the paper, and what the project does.* The paper states the rule (stable over
the recent steps and confident, else the base schedule); the official code fixes details the project follows:
full-vocabulary softmax in float64 (here float32 log-softmax), ``eps = 1e-12`` inside both logs (here exact logs:
the two differ only where a probability is below 1e-12, far from any threshold), the in-block warm-up gate of the
LLaDA code (``block_warmup``), and LLaDA's ``>`` against Dream's ``>=`` (``inclusive``). Where the two official
decoders differ the project offers both: the LLaDA code falls back to its per-block schedule, the Dream code to one
token (``tokens_per_step: 1`` without ``steps_per_block``, on a ``full`` window). Further departures, all for
batches and robustness: the official decoders run one prompt at a time (Dream's batched fallback commits nothing for
a row with stable positions when another row has none); here every counter and threshold is per row. The official
LLaDA code gives each block exactly ``steps_per_block`` steps, so when KL commits of fewer tokens than the schedule's
quota leave masks at the block's last step they stay masked in its output; here the row stays in the block until it
is full. It hard-codes LLaDA's mask id (126336) in place of its ``mask_id`` argument. The history costs ``[B, G, V]``
float32 (``G`` generated columns) of memory per batch.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch

from dlm_decode.api import (
    Decision,
    DecodeState,
    ForwardOutput,
    Proposal,
    Window,
    check_field,
    check_probability,
    check_step_schedule,
    hookimpl,
    select_top,
)


class Unmask(enum.Enum):
    all = "all"
    max_conf = "max_conf"
    min_kl = "min_kl"


@dataclass
class KlassConfig:
    conf_threshold: float = 0.9
    """A position's proposed token must have probability above this (the official default)."""
    kl_threshold: float = 0.01
    """Each of the last history_length step-to-step KL divergences must be below this."""
    history_length: int = 2
    """How many consecutive KLs must be below kl_threshold."""
    unmask: Unmask = Unmask.all
    """Which stable, confident positions to commit: all, the most confident (max_conf) or the lowest KL (min_kl)."""
    steps_per_block: int | None = None
    """Fallback: LLaDA's steps per block (``steps / num_blocks``); null: from tokens_per_step."""
    tokens_per_step: int = 1
    """Fallback: tokens per step when steps_per_block is null (1: the single most confident, Dream-KLASS)."""
    inclusive: bool = False
    """Compare the confidence with ``>=`` (the Dream code) instead of ``>`` (the LLaDA code)."""
    block_warmup: bool = True
    """Apply the KL rule only from the row's (history_length - 1)-th step inside its block (the LLaDA code)."""

    def __post_init__(self) -> None:
        check_probability(self.conf_threshold, "conf_threshold", "confidences are probabilities, e.g. 0.9")
        check_field(
            self.kl_threshold > 0.0,
            "kl_threshold",
            f"must be > 0, got {self.kl_threshold}",
            "a KL divergence is never negative; the official scripts use 0.001 to 0.015",
        )
        check_field(self.history_length >= 1, "history_length", f"must be at least 1, got {self.history_length}")
        check_step_schedule(self.steps_per_block, self.tokens_per_step)


@dataclass
class KlassMemory:
    """Per batch: ``log_probs`` ``[B, G, V]`` float32, the last log-distribution of each generated column;
    ``known`` ``[B, G]`` bool, whether it is from the previous step; ``run`` ``[B, G]`` long, consecutive KLs below
    the threshold; and, ``[B]`` long each, the row's block, its mask count when entered, the row's step in it."""

    log_probs: torch.Tensor | None = None
    known: torch.Tensor | None = None
    run: torch.Tensor | None = None
    block_start: torch.Tensor | None = None
    size: torch.Tensor | None = None
    block_step: torch.Tensor | None = None


def kl_divergence(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """``KL(p || q)`` over the last dim of log-distributions ``[..., V]`` -> ``[...]``; ids where ``p`` is 0 (``-inf``
    log, an excluded id) contribute nothing."""
    p = log_p.exp()
    return (p * torch.where(p > 0, log_p - log_q, 0.0)).sum(-1)


class KlassVerifier:
    """The ``klass`` verification strategy (see the module docstring)."""

    def __init__(self, config: KlassConfig):
        self.config = config

    @hookimpl(wrapper=True)
    def dlm_model_inputs(self):
        """The history compares every generated column of the span with the last step's: read all their logits."""
        inputs = yield
        return inputs.reading_all()

    def stable_runs(
        self, state: DecodeState, forward: ForwardOutput, window: Window, memory: KlassMemory
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Update the history with this step's forward, at the columns it computes for each row as alone
        (:meth:`DecodeState.own_columns`; on a block-causal model a batch's forward also covers later blocks of
        rows behind the others).

        :return: ``run`` ``[B, N]`` long (consecutive KLs below the threshold, 0 on prompt columns) and ``kl``
            ``[B, N]`` float32 (this step's KL, ``inf`` where there is none).
        """
        first_gen = state.gen_start
        low, high = max(forward.start, first_gen), forward.inputs.end
        log_probs = torch.log_softmax(forward.columns(low, high).float(), dim=-1)
        batch, generated = state.batch_size, state.width - first_gen
        if memory.log_probs is None:
            memory.log_probs = log_probs.new_zeros(batch, generated, log_probs.shape[-1])
            memory.known = torch.zeros(batch, generated, dtype=torch.bool, device=log_probs.device)
            memory.run = torch.zeros(batch, generated, dtype=torch.long, device=log_probs.device)
        assert memory.known is not None and memory.run is not None  # set with log_probs
        span = slice(low - first_gen, high - first_gen)
        own = state.own_columns(window)[:, low:high]
        kl = torch.where(memory.known[:, span] & own, kl_divergence(log_probs, memory.log_probs[:, span]), float("inf"))
        run = torch.zeros_like(memory.run)  # a column outside the span loses its history
        run[:, span] = torch.where(kl < self.config.kl_threshold, memory.run[:, span] + 1, 0)
        known = torch.zeros_like(memory.known)
        known[:, span] = own
        memory.log_probs[:, span] = log_probs
        memory.run, memory.known = run, known
        full_run = torch.zeros_like(state.canvas)
        full_run[:, first_gen:] = run
        full_kl = torch.full(state.canvas.shape, float("inf"), device=kl.device)
        full_kl[:, low:high] = kl
        return full_run, full_kl

    def block_schedule(self, memory: KlassMemory, window: Window) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The row's step in its block (``[B]`` long) and LLaDA's fallback quota (``[B]`` long, None: one token)."""
        config = self.config
        masks = window.eligible.sum(-1)
        if memory.block_start is None:
            memory.block_start, memory.size, memory.block_step = window.block_start, masks, torch.zeros_like(masks)
        assert memory.size is not None and memory.block_step is not None  # set with block_start
        new_block = window.block_start != memory.block_start
        step = torch.where(new_block, 0, memory.block_step)
        size = memory.size = torch.where(new_block, masks, memory.size)
        memory.block_start, memory.block_step = window.block_start, step + 1
        if config.steps_per_block is None and config.tokens_per_step == 1:
            return step, None
        steps = (
            torch.full_like(size, config.steps_per_block)
            if config.steps_per_block is not None
            else (size + config.tokens_per_step - 1).div(config.tokens_per_step, rounding_mode="floor")
        )
        steps = steps.clamp(min=1)
        quota = size.div(steps, rounding_mode="floor") + (step < size.remainder(steps)).long()
        return step, quota.clamp(min=1)

    @hookimpl
    def dlm_verify(self, state: DecodeState, forward: ForwardOutput, proposal: Proposal, window: Window) -> Decision:
        config = self.config
        memory = state.memory(self, lambda state: KlassMemory())
        run, kl = self.stable_runs(state, forward, window, memory)
        step, quota = self.block_schedule(memory, window)
        stable = run >= config.history_length
        if config.block_warmup:
            stable = stable & (step >= config.history_length - 1)[:, None]
        confidence = proposal.confidence
        confident = confidence >= config.conf_threshold if config.inclusive else confidence > config.conf_threshold
        ready = stable & confident & window.eligible
        if config.unmask is Unmask.max_conf:
            ready = select_top(confidence, ready, None)
        elif config.unmask is Unmask.min_kl:
            ready = select_top(-kl, ready, None)
        fallback = ~ready.any(-1)
        commit = torch.where(fallback[:, None], select_top(confidence, window.eligible, quota), ready)
        state.add_row_stat("klass.stable_commits", ready.sum(-1))
        state.add_row_stat("klass.fallback_steps", (fallback & ~state.finished).long())
        return Decision(commit=commit, tokens=proposal.tokens)


@hookimpl
def dlm_register(registry) -> None:
    registry.add("verification", "klass", KlassConfig, lambda config, context: KlassVerifier(config))
