"""SlowFast sampling: alternate an exploratory (slow) phase and an accelerated (fast) phase, per row.

SlowFast Sampling ("Accelerating Diffusion Large Language Models with SlowFast Sampling: The Three Golden
Principles", Wei, Zhang, Liu, Liu and Zhang, arXiv 2506.10848; official code ``LiangrunFlora/Slow-Fast-Sampling``
at commit dd9958f, ``slow-fast-sampling/sampling_utils/generate_slow_fast_sampling.py``, the LLaDA sampler) decides
*when* to decode in parallel (certainty: confidence above a high threshold), *where* (position: a contiguous span
starting where the previous span ended) and *how far* (convergence: the span's end stops moving over recent steps).

Each row of each window block (``window.block_start`` to ``window.block_end``, length ``L``) is decoded in
*sub-cycles*. A sub-cycle starts at the end ``s`` of the previous one (the block start at first; columns are
relative to the block start below):

1. **Slow (exploratory) phase**, exactly ``exploration_steps`` (K) steps. The scope is ``[s, L)``. At each step,
   while the span end is not yet settled, it is *estimated* from this step's confidences: ``e = s + f + 1`` with
   ``f`` the offset of the farthest eligible position of the scope whose confidence is at least
   ``span_threshold`` (``e = s + 1`` when none is), clamped to ``[1, L]``. The last ``stability_window`` (W)
   estimates of the sub-cycle are kept; once there are W of them, the end is settled at the latest estimate if
   their (population) standard deviation is below ``stability_std``; otherwise it is their floored mean, settled
   only at the phase's last step. (With K < W the end is the floored mean of the estimates at the last step.)
   Commit: every eligible position of the scope with confidence at least ``threshold`` when there are at least
   two of them, else the scope's most confident one (which is the same set as ``threshold_commit`` over the
   scope).
2. **Fast (accelerated) phase** over the span ``[s, e)``, as long as it holds masks: the same commit rule inside
   the span only. Its first forward sees the whole canvas; later ones see only the columns before the span's end
   (``fast_context: prefix``, the official code, which feeds ``x[:, :prompt + e]``; here that row's keys past
   ``e`` are hidden from every query, which gives the span the same logits). ``fast_context: full`` keeps the
   whole canvas visible.
3. Then ``s = e`` and the next sub-cycle begins; a row moving to its next window block starts afresh at ``s = 0``.

Every row keeps its own phase, step counters, estimates and span in the batch's memory (``state.memory``), so rows
switch phases independently and a row decodes as it would alone. The row statistics ``slow_fast.slow_steps`` and
``slow_fast.fast_steps`` count each row's steps in either phase, and ``slow_fast.fast_phases`` its fast phases.

Defaults are the official ones (K = 6, ``span_threshold`` 0.3, W = 2, ``stability_std`` 1.0, ``threshold`` 0.9;
the evaluation scripts decode 256 tokens in one block of 256). Departures from the official code:

* only the sampler is implemented; the official repository composes it with dLLM-Cache (feature caching), which
  is not part of this strategy (choose a ``cache`` strategy separately);
* the official code always spends its K slow forwards, even after the block has no mask left (forwards that
  commit nothing); here a row whose block is complete moves on, so the tokens are the same and the NFE is lower;
* the official batched code shares one list of span bounds across rows (its phase-2 bookkeeping indexes a list
  that grows every iteration, and a row with an empty span would call ``topk`` on an empty tensor); the
  evaluation runs batch size 1, which this strategy reproduces for every row of a batch;
* the official softmax includes the mask id; here, as everywhere in the core, it is excluded;
* the official Dream sampler (``dream_generation_utils.py``, ``_slow_fast_sample``) is a different variant (other
  constants, rounded means); it is not implemented.

The paper describes the same two phases and three principles; only its abstract and a summary were read here
(the PDF in the repository could not be parsed on this machine), so no paper-vs-code departure is claimed.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch

from dlm_decode.api import (
    Decision,
    DecodeState,
    ForwardOutput,
    ForwardPlan,
    ModelInputs,
    Proposal,
    Window,
    check_field,
    check_probability,
    hookimpl,
    select_top,
)


class FastContext(enum.Enum):
    prefix = "prefix"
    full = "full"


@dataclass
class SlowFastConfig:
    exploration_steps: int = 6
    """K: steps of every slow (exploratory) phase."""
    span_threshold: float = 0.3
    """The span end estimate reaches the farthest eligible position of the scope with at least this confidence."""
    stability_window: int = 2
    """W: the span end settles over the last W estimates."""
    stability_std: float = 1.0
    """The span end settles when the (population) standard deviation of the last W estimates is below this."""
    threshold: float = 0.9
    """Commit every in-scope position with at least this confidence when at least two have it, else the best one."""
    fast_context: FastContext = FastContext.prefix
    """prefix: fast-phase forwards after the first see only the columns before the span end (the official code);
    full: they see the whole canvas."""

    def __post_init__(self) -> None:
        check_field(
            self.exploration_steps >= 1,
            "exploration_steps",
            f"must be at least 1, got {self.exploration_steps}",
            "every sub-cycle starts with at least one slow step; 6 is the official default",
        )
        for name in ("span_threshold", "threshold"):
            check_probability(getattr(self, name), name)
        check_field(
            self.stability_window >= 1,
            "stability_window",
            f"must be at least 1, got {self.stability_window}",
            "the span end settles over this many estimates; 2 is the official default",
        )
        check_field(
            self.stability_std > 0,
            "stability_std",
            f"must be > 0, got {self.stability_std}",
            "a standard deviation below it settles the span end; 1.0 is the official default",
        )


@dataclass
class SlowFastMemory:
    """Per-batch, per-row phase state (``[B]`` tensors unless noted; columns are canvas columns).

    :ivar block_start: the window block the state belongs to (-1: none yet).
    :ivar span_start: ``s``, where the current sub-cycle starts.
    :ivar span_end: ``e``, where its span ends (meaningful once ``settled``).
    :ivar fast: bool, the row is in its fast phase.
    :ivar slow_steps: slow steps taken in the current sub-cycle.
    :ivar fast_steps: fast steps taken in the current fast phase.
    :ivar estimates: ``[B, W]`` long, the last W span-end estimates (relative to the block start), newest last.
    :ivar count: estimates made in the current sub-cycle.
    :ivar settled: bool, the span end is settled.
    :ivar prepared: the step whose phases were prepared (-1: none).
    """

    block_start: torch.Tensor
    span_start: torch.Tensor
    span_end: torch.Tensor
    fast: torch.Tensor
    slow_steps: torch.Tensor
    fast_steps: torch.Tensor
    estimates: torch.Tensor
    count: torch.Tensor
    settled: torch.Tensor
    prepared: int = -1

    @classmethod
    def new(cls, state: DecodeState, window: int) -> SlowFastMemory:
        longs = torch.zeros(state.batch_size, dtype=torch.long, device=state.canvas.device)
        bools = torch.zeros_like(longs, dtype=torch.bool)
        return cls(
            block_start=longs - 1,
            span_start=longs.clone(),
            span_end=longs.clone(),
            fast=bools,
            slow_steps=longs.clone(),
            fast_steps=longs.clone(),
            estimates=torch.zeros(state.batch_size, window, dtype=torch.long, device=longs.device),
            count=longs.clone(),
            settled=bools.clone(),
        )

    def restart(self, rows: torch.Tensor, start: torch.Tensor) -> None:
        """Begin a new sub-cycle at ``start`` (``[B]`` long) for ``rows`` (``[B]`` bool)."""
        self.span_start = torch.where(rows, start, self.span_start)
        self.span_end = torch.where(rows, start, self.span_end)
        self.fast = self.fast & ~rows
        self.settled = self.settled & ~rows
        self.slow_steps = self.slow_steps.masked_fill(rows, 0)
        self.fast_steps = self.fast_steps.masked_fill(rows, 0)
        self.count = self.count.masked_fill(rows, 0)


def in_columns(columns: torch.Tensor, start: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """``[B, N]`` bool, ``start[b] <= column < end[b]``."""
    return (columns >= start[:, None]) & (columns < end[:, None])


def farthest_confident(confidence: torch.Tensor, scope: torch.Tensor, threshold: float) -> torch.Tensor:
    """``[B]`` long, the last column of ``scope`` whose confidence is at least ``threshold`` (-1: none)."""
    hits = scope & (confidence >= threshold)
    last = hits.shape[-1] - 1 - hits.flip(-1).view(torch.uint8).argmax(-1)
    return torch.where(hits.any(-1), last, -1)


class SlowFastVerifier:
    """The ``slow_fast`` verification strategy (see the module docstring)."""

    def __init__(self, config: SlowFastConfig):
        self.config = config

    def memory(self, state: DecodeState) -> SlowFastMemory:
        return state.memory(self, lambda state: SlowFastMemory.new(state, self.config.stability_window))

    def prepare(self, state: DecodeState, window: Window) -> SlowFastMemory:
        """Settle each row's phase for this step (once per step): end finished phases, start sub-cycles, reset rows
        that moved to a new block."""
        memory = self.memory(state)
        if memory.prepared == state.step:
            return memory
        memory.prepared = state.step
        span = in_columns(state.columns, memory.span_start, memory.span_end)
        span_open = (span & state.masked).any(-1)
        slow_over = ~memory.fast & (memory.slow_steps >= self.config.exploration_steps)
        to_fast = slow_over & span_open
        memory.fast = memory.fast | to_fast
        memory.fast_steps = memory.fast_steps.masked_fill(to_fast, 0)
        state.add_row_stat("slow_fast.fast_phases", to_fast.long())
        memory.restart((slow_over & ~span_open) | (memory.fast & ~span_open), memory.span_end)
        moved = window.block_start != memory.block_start
        memory.restart(moved, window.block_start)
        memory.block_start = window.block_start
        return memory

    @hookimpl(wrapper=True)
    def dlm_model_inputs(self, state: DecodeState, window: Window, plan: ForwardPlan):
        """Hide the keys past the span end from rows in a fast phase after its first forward (``prefix``)."""
        inputs = yield
        memory = self.prepare(state, window)
        if self.config.fast_context is FastContext.full:
            return inputs
        limit = torch.where(memory.fast & (memory.fast_steps >= 1), memory.span_end, state.width)  # [B]
        mask = inputs.attention_mask
        first_key = 0 if plan.cache is not None else inputs.start
        keys = first_key + torch.arange(mask.shape[-1], device=mask.device)
        visible = keys < limit[:, None]  # [B, K]
        return ModelInputs(
            input_ids=inputs.input_ids,
            position_ids=inputs.position_ids,
            attention_mask=mask & visible[:, None, None, :],
            start=inputs.start,
            end=inputs.end,
            outputs=inputs.outputs,
        )

    def estimate(self, memory: SlowFastMemory, confidence: torch.Tensor, scope: torch.Tensor, window: Window) -> None:
        """Update the span-end estimates of the rows exploring an unsettled span (slow phase)."""
        c = self.config
        exploring = ~memory.fast & ~memory.settled
        length = window.block_end - window.block_start
        offset = memory.span_start - window.block_start  # s, relative to the block
        far = farthest_confident(confidence, scope, c.span_threshold)
        step = torch.where(far >= 0, far - memory.span_start + 1, (offset < length).long())
        estimate = torch.minimum(torch.clamp(offset + step, min=1), length)
        estimates = torch.cat([memory.estimates[:, 1:], estimate[:, None]], 1)
        memory.estimates = torch.where(exploring[:, None], estimates, memory.estimates)
        memory.count = memory.count + exploring.long()
        window_size = c.stability_window
        made = memory.count.clamp(max=window_size)  # [B] how many of the W slots hold an estimate (newest last)
        kept = torch.arange(window_size, device=estimate.device) >= window_size - made[:, None]
        values = memory.estimates.to(torch.float64)
        mean = (values * kept).sum(-1) / kept.sum(-1).clamp(min=1)
        std = (((values - mean[:, None]) ** 2) * kept).sum(-1).div(kept.sum(-1).clamp(min=1)).sqrt()
        full = memory.count >= window_size
        stable = full & (std < c.stability_std)
        last = memory.slow_steps == c.exploration_steps - 1
        end = torch.where(stable, estimate, mean.floor().long()).clamp(min=1)
        end = torch.minimum(end, length)
        update = exploring & (full | last)
        memory.span_end = torch.where(update, window.block_start + end, memory.span_end)
        memory.settled = memory.settled | (exploring & (stable | last))

    @hookimpl
    def dlm_verify(self, state: DecodeState, forward: ForwardOutput, proposal: Proposal, window: Window) -> Decision:
        """Commit per row within its phase's scope (slow: ``[s, block end)``, fast: ``[s, e)``)."""
        memory = self.prepare(state, window)
        confidence, eligible = proposal.confidence, window.eligible
        scope_end = torch.where(memory.fast, memory.span_end, window.block_end)
        scope = eligible & in_columns(state.columns, memory.span_start, scope_end)
        self.estimate(memory, confidence, scope, window)
        commit = (scope & (confidence >= self.config.threshold)) | select_top(confidence, scope, None)
        # a row whose scope is empty (not reached with block windows) still progresses on its best eligible one
        commit = torch.where(scope.any(-1, keepdim=True), commit, select_top(confidence, eligible, None))
        active = ~state.finished
        slow, fast = active & ~memory.fast, active & memory.fast
        memory.slow_steps = memory.slow_steps + slow.long()
        memory.fast_steps = memory.fast_steps + fast.long()
        state.add_row_stat("slow_fast.slow_steps", slow.long())
        state.add_row_stat("slow_fast.fast_steps", fast.long())
        return Decision(commit=commit, tokens=proposal.tokens)


@hookimpl
def dlm_register(registry) -> None:
    registry.add("verification", "slow_fast", SlowFastConfig, lambda config, context: SlowFastVerifier(config))
