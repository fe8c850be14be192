"""Prophet: early answer commit on top of a base verification rule.

Prophet ("Diffusion Language Models Know the Answer Before Decoding", Pengxiang Li, Yefan Zhou, Dilxat Muhtar, Lu
Yin, Shilin Yan, Li Shen, Yi Liang, Soroush Vosoughi, Shiwei Liu; arXiv 2508.19982; official code
``pixeli99/Prophet`` at commit 460afe4, ``generate_earlyexit.py``) watches how sure the model is of the answer
and, once it is sure enough, stops refining: it commits every remaining mask at once with its greedy token.

*The rule, per row and step* (the ``prophet`` verification):

1. **Gap.** ``g`` is the mean, over the *answer region*, of the top-1 minus top-2 **logit** (raw logits, not
   probabilities) of this step's forward. The region is ``answer_length`` columns from ``answer_start`` generated
   columns after the first generated one (a negative ``answer_start`` counts from the canvas end), cut at the canvas
   end. As in the official code it covers those columns whether they are still masked or already decided (a
   decided column's logit gap is the model's support for its token), and excluded ids (the mask id, ids the
   tokenizer cannot decode) are no candidates, as everywhere in the project (the official logits include them; the
   real models give them no mass). Columns of the region outside the forward's span (a prefix cache's reused
   prefix) are left out of the mean; a row none of whose region is in the span does not exit that step.
2. **Threshold by progress.** With ``p`` the row's progress, the row exits when ``g >= tau(p)``:
   ``early_threshold`` (7.5) while ``p < early_until`` (0.33), ``mid_threshold`` (5.0) while ``p < mid_until``
   (0.67), ``late_threshold`` (2.5) after. ``progress: steps`` (the official rule) is ``t / T``: ``t`` the row's
   step counting this one (1 at its first step), ``T`` = ``total_steps``, or when null the base schedule's steps
   (``base: topk``: ``steps_per_block`` times the number of blocks, or ``ceil(block / tokens_per_step)`` summed over
   the blocks; the blocks are the row's window blocks at its first step). ``progress: decoded`` is the share of the
   row's generated columns decided before this step (for adaptive bases, whose step count is not known ahead).
3. **Commit.** A row that exits commits every mask it can reach this step with this step's proposal (greedy: the
   argmax), all blocks included: the verification wraps ``dlm_window`` and widens each row's eligible set to all
   its masked columns the model sees (``input_end``, ``visible``), while the base rule still decides only among
   the window's own eligible positions. Otherwise the row commits what the base rule commits:

   * ``base: topk`` (LLaDA's low-confidence remasking, the official base): per block, ``m // s + (j < m % s)``
     tokens at the row's block step ``j`` (``m`` the block's masks when the row entered it, ``s`` =
     ``steps_per_block``, or ``ceil(m / tokens_per_step)`` when null), the best by ``score`` (confidence, margin,
     entropy);
   * ``base: threshold`` (Fast-dLLM's rule): every eligible position with confidence ``>= threshold``, and at
     least the ``min_tokens`` most confident.

   On a block-causal model the core keeps every step inside the row's current model block, so an exit commits that
   block, and the row then commits each later block whole in one step (its masks are still "remaining"; a later
   block cannot be predicted before the model sees it as current).

Row statistics (``state.add_row_stat``): ``prophet.exits`` (1 for a row that exited early) and
``prophet.early_tokens`` (tokens committed beyond the base rule's choice because of the exit).

*Departures of the official code from the paper, and what the project does.* The paper describes the gap over the
answer tokens with a threshold that decreases with progress; the official code fixes the details the project
follows: the gap is on raw logits; the answer region is 5 columns (the evaluation's ``answer_length`` argument is
parsed but never passed on, so 5 is hard-coded) starting two columns after the last token the evaluation forces
into the canvas (``"The answer is"`` at offsets 200-202 of 256, region 204-208; the project forces no tokens, so
``answer_start`` names the offset); the phase bounds are 0.33 and 0.67 of ``global_step / steps`` with the
1-based step; the test comes before the step's own commit and the exit fills every mask of the canvas, later
blocks included. The official decoder runs one prompt at a time; here every counter, threshold and progress is per
row, so a row decodes as it would alone. Costs of the widened window: the proposal scores every reachable mask each
step (not only the block's), so a sampling proposal draws noise for them too (its random stream differs from the
base rule's alone); and the cache must compute every column the window reaches, which the ``dual`` cache does not
(refused).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch

from dlm_decode.api import (
    ConfigError,
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


class Base(enum.Enum):
    topk = "topk"
    threshold = "threshold"


class Score(enum.Enum):
    confidence = "confidence"
    margin = "margin"
    entropy = "entropy"


class Progress(enum.Enum):
    steps = "steps"
    decoded = "decoded"


@dataclass
class ProphetConfig:
    base: Base = Base.topk
    """The rule a row follows until it exits: topk (LLaDA's per-block schedule, the official base) or threshold
    (Fast-dLLM's confidence threshold)."""
    score: Score = Score.confidence
    """base topk: how eligible positions are ranked (confidence, margin or entropy)."""
    steps_per_block: int | None = None
    """base topk: steps to fill a block (LLaDA's ``steps / num_blocks``); null: from tokens_per_step."""
    tokens_per_step: int = 1
    """base topk: tokens per step when steps_per_block is null."""
    threshold: float = 0.9
    """base threshold: commit every eligible position whose confidence is at least this."""
    min_tokens: int = 1
    """base threshold: always commit at least this many of the most confident positions."""
    answer_start: int = 0
    """First column of the answer region, counted from the first generated column (negative: from the canvas
    end)."""
    answer_length: int = 5
    """Columns in the answer region (the official code's hard-coded 5)."""
    early_threshold: float = 7.5
    """Logit gap needed to exit while progress < early_until."""
    mid_threshold: float = 5.0
    """Logit gap needed to exit while early_until <= progress < mid_until."""
    late_threshold: float = 2.5
    """Logit gap needed to exit once progress >= mid_until."""
    early_until: float = 0.33
    """Progress where the early phase ends."""
    mid_until: float = 0.67
    """Progress where the middle phase ends."""
    progress: Progress = Progress.steps
    """steps: the row's step / total steps (the official rule); decoded: share of the row's generated columns
    decided before the step."""
    total_steps: int | None = None
    """progress steps: the step budget T (LLaDA's ``steps``); null: the topk base's schedule."""

    def __post_init__(self) -> None:
        topk, threshold = self.base is Base.topk, self.base is Base.threshold
        check_step_schedule(self.steps_per_block, self.tokens_per_step)
        for name in ("score", "steps_per_block", "tokens_per_step"):
            check_field(
                topk or getattr(self, name) == getattr(ProphetConfig, name),
                name,
                f"is a knob of base topk, but base is {self.base.value}",
                f"leave {name} out, or set base: topk",
            )
        for name in ("threshold", "min_tokens"):
            check_field(
                threshold or getattr(self, name) == getattr(ProphetConfig, name),
                name,
                f"is a knob of base threshold, but base is {self.base.value}",
                f"leave {name} out, or set base: threshold",
            )
        check_probability(self.threshold, "threshold", "confidences are probabilities; 0.9 is Fast-dLLM's default")
        check_field(
            self.min_tokens >= 1,
            "min_tokens",
            f"must be at least 1, got {self.min_tokens}",
            "every unfinished row commits at least one token per step",
        )
        check_field(self.answer_length >= 1, "answer_length", f"must be at least 1, got {self.answer_length}")
        check_field(
            0.0 <= self.early_until <= self.mid_until <= 1.0,
            "mid_until",
            f"the phase bounds must satisfy 0 <= early_until <= mid_until <= 1, got {self.early_until} and "
            f"{self.mid_until}",
            "e.g. the official 0.33 and 0.67",
        )
        check_field(
            self.total_steps is None or self.total_steps >= 1,
            "total_steps",
            f"must be >= 1 or null, got {self.total_steps}",
        )
        check_field(
            self.progress is not Progress.steps or topk or self.total_steps is not None,
            "total_steps",
            "must be set for progress steps with base threshold (an adaptive base has no step count known ahead)",
            "set total_steps (e.g. max_new_tokens), or progress: decoded",
        )
        check_field(
            self.progress is Progress.steps or self.total_steps is None,
            "total_steps",
            "is used only by progress steps",
            "leave total_steps out, or set progress: steps",
        )


@dataclass
class ProphetMemory:
    """Per batch (``[B]`` tensors): the inner window's eligible set of the step (``[B, N]`` bool), the row's steps
    taken, its step budget (``total``, progress steps), whether it exited, and LLaDA's schedule position (the block
    it was in, that block's mask count when entered, its step in the block)."""

    base_eligible: torch.Tensor | None
    steps: torch.Tensor
    total: torch.Tensor | None
    exited: torch.Tensor
    block_start: torch.Tensor | None = None
    size: torch.Tensor | None = None
    block_step: torch.Tensor | None = None

    @classmethod
    def new(cls, state: DecodeState) -> ProphetMemory:
        rows = torch.zeros(state.batch_size, dtype=torch.long, device=state.canvas.device)
        return cls(base_eligible=None, steps=rows, total=None, exited=rows.bool())


def ceil_div(a: torch.Tensor, b: int | torch.Tensor) -> torch.Tensor:
    return (a + b - 1).div(b, rounding_mode="floor")


def logit_gap(logits: torch.Tensor) -> torch.Tensor:
    """Top-1 minus top-2 logit: ``[..., V]`` -> ``[...]`` float32."""
    top = logits.float().topk(2, dim=-1).values
    return top[..., 0] - top[..., 1]


def phase_threshold(progress: torch.Tensor, config: ProphetConfig) -> torch.Tensor:
    """``[B]`` float progress -> ``[B]`` the gap each row needs to exit."""
    late = torch.full_like(progress, config.late_threshold)
    mid = torch.where(progress < config.mid_until, config.mid_threshold, late)
    return torch.where(progress < config.early_until, config.early_threshold, mid)


class ProphetVerifier:
    """The ``prophet`` verification strategy (see the module docstring)."""

    def __init__(self, config: ProphetConfig):
        self.config = config

    def memory(self, state: DecodeState) -> ProphetMemory:
        return state.memory(self, ProphetMemory.new)

    @hookimpl(wrapper=True)
    def dlm_window(self, state: DecodeState):
        """Keep the inner window's eligible set for the base rule; widen eligible to every mask the model sees."""
        window = yield
        self.memory(state).base_eligible = window.eligible
        reach = state.masked & (state.columns < window.input_end)  # masks are generated columns of unfinished rows
        if window.visible is not None:
            reach = reach & window.visible
        return Window(
            eligible=window.eligible | reach,
            input_end=window.input_end,
            block_start=window.block_start,
            block_end=window.block_end,
            visible=window.visible,
        )

    # --- the base rules ---------------------------------------------------------------------------------------

    def topk_quota(self, memory: ProphetMemory, eligible: torch.Tensor, window: Window) -> torch.Tensor | None:
        """LLaDA's per-block linear quota (``[B]`` long), None for one token per step."""
        config = self.config
        if config.steps_per_block is None and config.tokens_per_step == 1:
            return None
        masks = eligible.sum(-1)
        if memory.block_start is None:
            memory.block_start, memory.size, memory.block_step = window.block_start, masks, torch.zeros_like(masks)
        assert memory.size is not None and memory.block_step is not None  # set with block_start
        new_block = window.block_start != memory.block_start
        step = torch.where(new_block, 0, memory.block_step)
        size = memory.size = torch.where(new_block, masks, memory.size)
        steps = (
            torch.full_like(size, config.steps_per_block)
            if config.steps_per_block is not None
            else ceil_div(size, config.tokens_per_step).clamp(min=1)
        )
        memory.block_start, memory.block_step = window.block_start, step + 1
        quota = size.div(steps, rounding_mode="floor") + (step < size.remainder(steps)).long()
        return quota.clamp(min=1)

    def base_commit(
        self, memory: ProphetMemory, proposal: Proposal, eligible: torch.Tensor, window: Window
    ) -> torch.Tensor:
        config = self.config
        if config.base is Base.threshold:
            quota = None if config.min_tokens == 1 else torch.full_like(memory.steps, config.min_tokens)
            return ((proposal.confidence >= config.threshold) & eligible) | select_top(
                proposal.confidence, eligible, quota
            )
        if config.score is Score.confidence:
            scores = proposal.confidence
        elif config.score is Score.margin:
            scores = proposal.margin
        else:
            scores = -proposal.entropy
        return select_top(scores, eligible, self.topk_quota(memory, eligible, window))

    # --- the early commit -------------------------------------------------------------------------------------

    def schedule_steps(self, state: DecodeState, window: Window) -> torch.Tensor:
        """``[B]`` long, the base topk schedule's steps over the whole generation (module docstring)."""
        config = self.config
        generated = torch.full_like(window.block_start, state.width - state.gen_start)
        block = (window.block_end - window.block_start).clamp(min=1)
        if config.steps_per_block is not None:
            return ceil_div(generated, block) * config.steps_per_block
        full, rest = generated.div(block, rounding_mode="floor"), generated.remainder(block)
        return full * ceil_div(block, config.tokens_per_step) + ceil_div(rest, config.tokens_per_step)

    def progress(self, state: DecodeState, memory: ProphetMemory, window: Window) -> torch.Tensor:
        """``[B]`` float32, each row's progress at this step."""
        if self.config.progress is Progress.decoded:
            generated = state.width - state.gen_start
            return 1.0 - state.masked.sum(-1).float() / generated
        if memory.total is None:
            memory.total = (
                torch.full_like(memory.steps, self.config.total_steps)
                if self.config.total_steps is not None
                else self.schedule_steps(state, window)
            )
        return memory.steps.float() / memory.total.float()

    def answer_gap(self, state: DecodeState, forward: ForwardOutput) -> torch.Tensor:
        """``[B]`` float32, the mean logit gap over the answer region's columns inside the forward's span (-inf
        when none is)."""
        config = self.config
        first = state.gen_start + config.answer_start if config.answer_start >= 0 else state.width + config.answer_start
        last = min(first + config.answer_length, state.width, forward.inputs.end)
        first = max(first, state.gen_start, forward.start)
        if last <= first:
            return torch.full((state.batch_size,), float("-inf"), device=state.canvas.device)
        return logit_gap(forward.columns(first, last)).mean(-1)

    @hookimpl
    def dlm_verify(self, state: DecodeState, forward: ForwardOutput, proposal: Proposal, window: Window) -> Decision:
        memory = self.memory(state)
        eligible = window.eligible if memory.base_eligible is None else memory.base_eligible & window.eligible
        active = ~state.finished
        memory.steps = memory.steps + active.long()
        commit = self.base_commit(memory, proposal, eligible, window)
        gap = self.answer_gap(state, forward)
        exit_now = (gap >= phase_threshold(self.progress(state, memory, window), self.config)) & active
        exit_now = exit_now & ~memory.exited
        memory.exited = memory.exited | exit_now
        early = window.eligible & memory.exited[:, None]
        state.add_row_stat("prophet.exits", exit_now.long())
        state.add_row_stat("prophet.early_tokens", (early & ~commit).sum(-1))
        return Decision(commit=commit | early, tokens=proposal.tokens)


def prophet_verifier(config: ProphetConfig, context) -> ProphetVerifier:
    """``prophet``, refused with a cache whose forward does not cover every mask it reaches."""
    cache = context.resolved.strategies["cache"][0]
    if cache == "dual":
        raise ConfigError(
            "decoder.cache",
            "the dual cache recomputes only the current block, but Prophet's early "
            "commit needs this step's logits of every remaining mask (all blocks)",
            "set decoder.cache to none or prefix",
        )
    return ProphetVerifier(config)


@hookimpl
def dlm_register(registry) -> None:
    registry.add("verification", "prophet", ProphetConfig, prophet_verifier)
