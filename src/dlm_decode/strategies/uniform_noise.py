"""The sampler of a uniform-noise block-diffusion model, as transformers' ``DiffusionGemmaForBlockDiffusion.generate``
runs it by default (transformers 5.25: ``EntropyBoundSampler``, ``LinearTemperatureScheduleLogitsProcessor``,
``StableAndConfidentStoppingCriteria``), on a noise canvas (:attr:`~dlm_decode.api.DecodeState.noise_vocab`).

* ``linear_temperature(t_max, t_min, steps)``: a multinomial sample of ``softmax(logits / t)`` at every eligible
  position, drawn by ``torch.multinomial`` from each row's own generator, where ``t`` falls linearly over the
  ``steps`` denoising steps of a block: at the row's step ``i`` (0 at the block's first) of ``steps``,
  ``t = t_min + (t_max - t_min) * (steps - i) / steps``, computed in float32 from an int32 step count as
  transformers does (``t_max`` at the first step, ``t_min + (t_max - t_min) / steps`` at the last).
* ``entropy_bound_redraw(entropy_bound, steps, stability, confidence)``: each step, in each unfinished row's block,
  the positions with the lowest entropy of the tempered distribution are *accepted* while the sum of their
  entropies minus the largest stays within ``entropy_bound`` (the entropy-bounded sampler, Ben-Hamu et al. 2025,
  "Accelerated Sampling from Masked Diffusion Models via Entropy Bounded Unmasking", arXiv 2505.24857; the lowest
  is always accepted); the block is then *redrawn*: accepted positions hold their sample, the others fresh uniform
  noise from the row's generator (drawn every step, as transformers draws it). Nothing is decided until the row's
  stop rule holds: the argmax of the tempered logits equals that of each of the ``stability`` steps before it in
  the block and their mean entropy over the block is below ``confidence``, or the block has had ``steps`` steps;
  the whole block is then committed with that argmax.

At batch 1 with the same seed this gives the tokens of transformers' ``generate`` (its global generator draws, per
block, the starting noise, then per step the samples and the renoising noise: the row's generator draws the same,
in the same order; ``tests/test_diffusion_gemma_loop.py``). In a batch each row draws from its own generator, so a
row decodes as alone, which transformers' single global draw over the batch does not give.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dlm_decode.api import (
    ConfigError,
    Decision,
    DecodeState,
    ForwardOutput,
    Proposal,
    StrategyError,
    Window,
    check_field,
    hookimpl,
)


def _check_steps(steps: int) -> None:
    check_field(steps >= 1, "steps", f"must be >= 1, got {steps}", "transformers' default is 48")


@dataclass
class LinearTemperatureConfig:
    """``t_max``: the temperature of a block's first step; ``t_min``: the temperature the schedule falls towards
    (reached after ``steps`` steps; the last step is just above); ``steps``: the length of the schedule, the most
    denoising steps of a block (``entropy_bound_redraw.steps``)."""

    t_max: float = 0.8
    t_min: float = 0.4
    steps: int = 48

    def __post_init__(self) -> None:
        _check_steps(self.steps)
        check_field(
            0 <= self.t_min < self.t_max < float("inf"),
            "t_max",
            f"needs 0 <= t_min < t_max, got t_min={self.t_min}, t_max={self.t_max}",
            "transformers refuses t_min = t_max too (there is no temperature 0 here: use greedy for argmax)",
        )


@dataclass
class EntropyBoundRedrawConfig:
    """``entropy_bound``: accept the lowest-entropy positions while the sum of their entropies minus the largest stays
    within it; ``steps``: the most denoising steps of a block (its argmax is committed after them whatever the stop
    rule says); ``stability``: steps whose argmax must equal the current one (0: no stability condition);
    ``confidence``: the mean entropy (nats) of the block's tempered distributions must be below it."""

    entropy_bound: float = 0.1
    steps: int = 48
    stability: int = 1
    confidence: float = 0.005

    def __post_init__(self) -> None:
        _check_steps(self.steps)
        check_field(self.entropy_bound > 0, "entropy_bound", f"must be > 0, got {self.entropy_bound}")
        check_field(self.stability >= 0, "stability", f"must be >= 0, got {self.stability}")
        check_field(self.confidence > 0, "confidence", f"must be > 0, got {self.confidence}")


@dataclass
class BlockStepsMemory:
    """Per batch: each row's block start at the last step and its step within that block (``[B]`` long)."""

    start: torch.Tensor | None = None
    steps: torch.Tensor | None = None


class BlockSteps:
    """Counts each row's steps within its current model block; a strategy owns one (its per-batch memory is this
    object's)."""

    def __call__(self, state: DecodeState) -> torch.Tensor:
        """``[B]`` long, each row's step within its current model block (0 at its first); call once per step."""
        memory = state.memory(self, lambda state: BlockStepsMemory())
        start = state.model_block()[0]
        steps = torch.zeros_like(start)
        if memory.start is not None and memory.steps is not None:
            steps = torch.where(start == memory.start, memory.steps + 1, steps)
        memory.start, memory.steps = start, steps
        return steps


def require_noise_canvas(context, role: str, name: str) -> None:
    """Raise :class:`ConfigError` unless the decoder's dLLM is a uniform-noise model."""
    if getattr(context.dllm, "noise_vocab", None) is None:
        raise ConfigError(
            f"decoder.{role}",
            f"{name!r} samples a uniform-noise model (DiffusionGemma), whose undecided positions hold noise; this "
            "dLLM fills them with masks",
            fix="use it with model.dllm.family diffusion_gemma, or another strategy (e.g. threshold) on this model",
        )


def categorical_entropy(logits: torch.Tensor) -> torch.Tensor:
    """``[...]`` float entropy (nats) of ``softmax(logits)`` over the last dimension, computed as
    ``torch.distributions.Categorical(logits=...).entropy()`` does (without its argument validation, a host
    synchronisation), so that the acceptance and stop decisions fall as transformers' do."""
    normalized = logits - logits.logsumexp(-1, keepdim=True)
    clamped = normalized.clamp(min=torch.finfo(logits.dtype).min)
    return -(clamped * normalized.softmax(-1)).sum(-1)


class LinearTemperatureSample:
    """The ``linear_temperature`` proposal (see the module docstring)."""

    def __init__(self, config: LinearTemperatureConfig, scorer):
        self.config, self.scorer = config, scorer
        self.block_steps = BlockSteps()

    @hookimpl
    def dlm_propose(self, state: DecodeState, forward: ForwardOutput, window: Window) -> Proposal:
        config = self.config
        remaining = (config.steps - self.block_steps(state)).clamp(min=1).to(torch.int32)  # transformers' cur_step
        temperature = config.t_min + (config.t_max - config.t_min) * (remaining / config.steps)  # [B] float32
        rows, cols = window.eligible.nonzero(as_tuple=True)
        logits = forward.at(rows, cols).float()
        tempered = logits / temperature[rows, None]
        probs = torch.softmax(tempered, dim=-1, dtype=torch.float32)
        counts = window.eligible.sum(-1).tolist()
        parts = probs.split(counts)
        sampled = torch.cat(
            [
                torch.multinomial(part, 1, generator=generator).squeeze(-1)
                for part, count, generator in zip(parts, counts, state.generators)
                if count
            ]
        )
        confidence = self.scorer.token_prob(logits, sampled)
        tokens = state.canvas.index_put((rows, cols), sampled)
        return Proposal(
            tokens=tokens,
            confidence=torch.zeros_like(state.canvas, dtype=torch.float32).index_put((rows, cols), confidence),
            rows=rows,
            cols=cols,
            logits=logits,
            temperature=config.t_max,
            noise=None,
            scorer=self.scorer,
            sampling_logits=tempered,
        )


@dataclass
class RedrawMemory:
    """Per batch: the argmax of each row's block at its last ``stability`` steps (``[stability, B, L]`` long, -1
    before a block's first steps)."""

    history: torch.Tensor | None = None


class EntropyBoundRedraw:
    """The ``entropy_bound_redraw`` verification (see the module docstring)."""

    def __init__(self, config: EntropyBoundRedrawConfig, block_size: int):
        self.config, self.block_size = config, block_size
        self.block_steps = BlockSteps()

    @hookimpl
    def dlm_verify(self, state: DecodeState, forward: ForwardOutput, proposal: Proposal, window: Window) -> Decision:
        config, size = self.config, self.block_size
        steps = self.block_steps(state)
        # one host read: the running rows, whose generators draw the noise (the proposal's own reads aside)
        running_rows = [row for row, finished in enumerate(state.finished.tolist()) if not finished]
        if proposal.sampling_logits is None or len(proposal.rows) != len(running_rows) * size:
            raise StrategyError(
                "entropy_bound_redraw needs every undecided position of each unfinished row's block eligible and "
                "proposed by sampling (its tempered logits)",
                "use decoder.window=full (or blocks of the model's block size) with decoder.proposal="
                "linear_temperature",
            )
        running = proposal.rows.view(-1, size)[:, 0]  # [R] on the device: the eligible positions are row-major
        start = state.model_block()[0][running]
        columns = start[:, None] + torch.arange(size, device=start.device)  # [R, L]
        tempered = proposal.sampling_logits.view(len(running_rows), size, -1)
        entropy = categorical_entropy(tempered)  # [R, L]
        ordered, order = torch.sort(entropy, dim=-1)
        accepted = torch.zeros_like(order, dtype=torch.bool).scatter(
            -1, order, ordered.cumsum(-1) - ordered <= config.entropy_bound
        )
        noise = state.noise_tokens(running_rows, size)  # a noise canvas: checked when the decoder was built
        redrawn = torch.where(accepted, proposal.tokens[running[:, None], columns], noise)
        argmax = tempered.argmax(-1)  # [R, L]
        done = self._stop(state, running, steps[running], argmax, entropy)
        values = torch.where(done[:, None], argmax, redrawn)
        index = (running[:, None].expand_as(columns), columns)
        block = torch.zeros_like(state.masked).index_put(index, torch.ones_like(columns, dtype=torch.bool))
        commit = block & done.new_zeros(state.batch_size).index_put((running,), done)[:, None]
        return Decision(commit=commit, tokens=state.canvas.index_put(index, values), redraw=block & ~commit)

    def _stop(
        self, state: DecodeState, running: torch.Tensor, steps: torch.Tensor, argmax: torch.Tensor, entropy
    ) -> torch.Tensor:
        """``[R]`` bool: the stop rule of each running row (see the module docstring); keeps the argmax history."""
        config = self.config
        confident = entropy.mean(-1) < config.confidence
        if config.stability == 0:
            return confident | (steps + 1 >= config.steps)
        memory = state.memory(self, lambda state: RedrawMemory())
        if memory.history is None:
            memory.history = torch.full(
                (config.stability, state.batch_size, self.block_size), -1, dtype=torch.long, device=argmax.device
            )
        history = memory.history[:, running].masked_fill((steps == 0)[None, :, None], -1)  # a new block: none yet
        stable = (history == argmax[None]).all(-1).all(0)
        memory.history[:, running] = torch.cat([history[1:], argmax[None]])
        return (stable & confident) | (steps + 1 >= config.steps)


def linear_temperature(config: LinearTemperatureConfig, context) -> LinearTemperatureSample:
    require_noise_canvas(context, "proposal", "linear_temperature")
    return LinearTemperatureSample(config, context.scorer)


def entropy_bound_redraw(config: EntropyBoundRedrawConfig, context) -> EntropyBoundRedraw:
    require_noise_canvas(context, "verification", "entropy_bound_redraw")
    return EntropyBoundRedraw(config, context.dllm.attention.block_size)


@hookimpl
def dlm_register(registry) -> None:
    registry.add("proposal", "linear_temperature", LinearTemperatureConfig, linear_temperature)
    registry.add("verification", "entropy_bound_redraw", EntropyBoundRedrawConfig, entropy_bound_redraw)
