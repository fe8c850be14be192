"""Verification strategies that commit a per-row quota of the best-scored proposals.

* ``topk(score, steps_per_block, tokens_per_step)``: LLaDA's low-confidence remasking. In each block a row
  commits ``m // s + (j < m % s)`` tokens at its step ``j`` of the block, where ``m`` is the number of masks
  in the block when the row entered it and ``s`` the steps per block: the linear schedule with the remainder
  front-loaded (LLaDA's ``get_num_transfer_tokens``), computed per row. ``s`` is ``steps_per_block``, or
  ``ceil(m / tokens_per_step)`` when that is null. Positions are ranked by ``score``: ``confidence`` (the
  proposed token's probability), ``margin`` (top-1 minus top-2 probability), ``entropy`` (lowest first) or
  ``random`` (uniform, from the row's generator).
  With ``schedule: dream`` the quota follows Dream's sampler instead (Ye et al. 2025, ``diffusion_generate``):
  with ``t = linspace(1, eps, s + 1)`` (float32) and ``m`` the masks left in the row's block, step ``i`` commits
  ``int(m * (1 - t[i + 1] / t[i]))``, and the last step all ``m``. Dream spends a forward on each step whose quota
  is 0 (its first step when ``s`` equals the canvas length, more when ``s`` exceeds the masks); here the row skips
  such steps (the canvas, and so the logits, would not change), so every step commits and the tokens are Dream's.
  Dream's batched sampler sizes the quota from the batch's mean mask count; here every row uses its own, so a row
  decodes as it would alone.
* ``left_to_right(k)``: commit the ``k`` leftmost eligible positions per row.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import torch

from dlm_decode.api import (
    Decision,
    DecodeState,
    Proposal,
    Relayout,
    Window,
    check_field,
    check_step_schedule,
    first_true_columns,
    hookimpl,
    select_top,
)


class Score(enum.Enum):
    confidence = "confidence"
    margin = "margin"
    entropy = "entropy"
    random = "random"


class Schedule(enum.Enum):
    linear = "linear"
    dream = "dream"


@dataclass
class TopKConfig:
    score: Score = Score.confidence
    """How eligible positions are ranked: confidence, margin, entropy or random."""
    steps_per_block: int | None = None
    """Steps to fill a block (LLaDA's ``steps / num_blocks``, Dream's ``steps``); null: derive it from
    tokens_per_step (linear schedule only)."""
    tokens_per_step: int = 1
    """Tokens per step when steps_per_block is null (1: one token per step)."""
    schedule: Schedule = Schedule.linear
    """How many tokens each step commits: linear (LLaDA's ``m // s``, remainder first) or dream (Dream's
    timestep schedule, see the module docstring)."""
    eps: float = 1e-3
    """Dream's last timestep (schedule dream)."""

    def __post_init__(self) -> None:
        check_step_schedule(self.steps_per_block, self.tokens_per_step)
        check_field(
            self.schedule is not Schedule.dream or self.steps_per_block is not None,
            "steps_per_block",
            "must be set for schedule dream (Dream's `steps`)",
            "e.g. steps_per_block: 256",
        )
        check_field(0 < self.eps < 1, "eps", f"must be in (0, 1), got {self.eps}")
        check_field(
            self.schedule is Schedule.dream or self.eps == TopKConfig.eps,
            "eps",
            "is used only by schedule dream",
            "set schedule: dream, or leave eps out",
        )


@dataclass
class LeftToRightConfig:
    k: int = 1
    """Tokens committed per step, leftmost first."""

    def __post_init__(self) -> None:
        check_field(self.k >= 1, "k", f"must be >= 1, got {self.k}")


@dataclass
class TopKMemory:
    """Per batch and row (``[B]`` long each): the block the row was in at its last step, that block's mask count
    when the row entered it (read by the linear schedule only; Dream's reads the masks left), and the row's next
    step of the block's schedule."""

    block_start: torch.Tensor
    size: torch.Tensor
    step: torch.Tensor

    def relayout(self, change: Relayout, state: DecodeState) -> TopKMemory:
        """A joining row is in no block yet (-1), so its first step starts its block's schedule."""
        return TopKMemory(
            change.columns_of(self.block_start, -1), change.rows_of(self.size, 0), change.rows_of(self.step, 0)
        )


class TopK:
    """LLaDA-style per-block linear schedule over a chosen score (see the module docstring)."""

    def __init__(self, config: TopKConfig):
        self.score = config.score
        self.steps_per_block = config.steps_per_block
        self.tokens_per_step = config.tokens_per_step
        self.schedule = config.schedule
        self.eps = config.eps
        self._ratios: dict[torch.device, torch.Tensor] = {}

    def quota(self, state: DecodeState, window: Window) -> torch.Tensor | None:
        """``[B]`` long tokens each row commits this step (None: one per row, the schedule needs no state)."""
        if self.schedule is Schedule.linear and self.steps_per_block is None and self.tokens_per_step == 1:
            return None
        masks = window.eligible.sum(-1)  # [B]
        memory = state.memory(self, lambda state: TopKMemory(window.block_start, masks, torch.zeros_like(masks)))
        new_block = window.block_start != memory.block_start
        step = torch.where(new_block, 0, memory.step)
        if self.schedule is Schedule.dream:
            quota, step = self.dream_quota(masks, step)
        else:
            memory.size = torch.where(new_block, masks, memory.size)
            quota = self.linear_quota(memory.size, step)
        memory.block_start, memory.step = window.block_start, step + 1
        return quota.clamp(min=1)

    def linear_quota(self, size: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        """LLaDA's quota at schedule ``step`` of a block that held ``size`` masks (``[B]`` long each)."""
        if self.steps_per_block is None:
            steps = (size + self.tokens_per_step - 1).div(self.tokens_per_step, rounding_mode="floor").clamp(min=1)
        else:
            steps = torch.full_like(size, self.steps_per_block)
        return size.div(steps, rounding_mode="floor") + (step < size.remainder(steps)).long()

    def dream_ratios(self, device: torch.device) -> torch.Tensor:
        """``[s]`` float32, ``1 - t[i + 1] / t[i]`` for ``t = linspace(1, eps, s + 1)``, in Dream's arithmetic
        (made once per device)."""
        assert self.steps_per_block is not None  # TopKConfig requires it for schedule dream
        if device not in self._ratios:
            timesteps = torch.linspace(1, self.eps, self.steps_per_block + 1, device=device)
            self._ratios[device] = 1 - timesteps[1:] / timesteps[:-1]
        return self._ratios[device]

    def dream_quota(self, masks: torch.Tensor, step: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Dream's quota for ``masks`` left in the block, at the first schedule step from ``step`` on whose quota is
        not 0 (module docstring); ``[B]`` long each.

        :return: the quota and the schedule step it belongs to.
        """
        steps = self.steps_per_block
        assert steps is not None  # TopKConfig requires it for schedule dream
        quotas = (masks.float()[:, None] * self.dream_ratios(masks.device)).long()  # [B, s], Dream's int(float)
        index = torch.arange(steps, device=masks.device)
        usable = (index >= step[:, None]) & ((quotas >= 1) | (index == steps - 1))
        current = first_true_columns(usable, steps - 1)  # the row's next usable step
        return torch.where(current >= steps - 1, masks, quotas.gather(1, current[:, None])[:, 0]), current

    def scores(self, state: DecodeState, proposal: Proposal) -> torch.Tensor:
        if self.score is Score.confidence:
            return proposal.confidence
        if self.score is Score.margin:
            return proposal.margin
        if self.score is Score.entropy:
            return -proposal.entropy
        # uniform draws for the generated columns only: how many a row draws does not depend on the batch's padding
        scores = torch.zeros(state.canvas.shape, device=state.canvas.device)
        scores[:, state.gen_start :] = torch.stack(
            [
                torch.rand(state.width - state.gen_start, generator=generator, device=state.canvas.device)
                for generator in state.generators
            ]
        )
        return scores

    @hookimpl
    def dlm_verify(self, state: DecodeState, proposal: Proposal, window: Window) -> Decision:
        commit = select_top(self.scores(state, proposal), window.eligible, self.quota(state, window))
        return Decision(commit=commit, tokens=proposal.tokens)


class LeftToRight:
    """Commit the ``k`` leftmost eligible positions of every row."""

    def __init__(self, config: LeftToRightConfig):
        self.k = config.k

    @hookimpl
    def dlm_verify(self, state: DecodeState, proposal: Proposal, window: Window) -> Decision:
        leftmost_first = -state.columns.float().expand(state.batch_size, -1)
        quota = None if self.k == 1 else torch.full((state.batch_size,), self.k, device=state.canvas.device)
        return Decision(commit=select_top(leftmost_first, window.eligible, quota), tokens=proposal.tokens)


@hookimpl
def dlm_register(registry) -> None:
    registry.add("verification", "topk", TopKConfig, lambda config, context: TopK(config))
    registry.add("verification", "left_to_right", LeftToRightConfig, lambda config, context: LeftToRight(config))
