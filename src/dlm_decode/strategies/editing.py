"""LLaDA 2.1's token editing: threshold commits of masks plus token-to-token edits of decided tokens in the block.

LLaDA 2.1 ("LLaDA2.1: Speeding Up Text Diffusion via Token Editing", inclusionAI, arXiv 2602.08676) decodes its
blocks as LLaDA 2.0 does and, in the same forward, *edits* tokens it already decided. Each step over a row's block:

* **mask commits** — every mask whose greedy token has probability above ``threshold``; when fewer than
  ``min_tokens`` are, the ``min_tokens`` most confident masks instead (``threshold`` with ``min_tokens``);
* **edits** — every decided generated position of the block whose greedy token differs from the one it holds and
  has probability above ``editing_threshold`` takes that token (it stays decided);
* **post-steps** — once a step leaves the block without masks, the block stays open (:attr:`Decision.hold`) for
  steps that only edit, until one edits nothing or ``max_post_steps`` of them have run; then the next block starts.

The rule reads the greedy token and its probability at every column of the block from the step's logits (a
proposal covers only the masks). SGLang serves this as ``JointThreshold``.

Why a verification of its own and not WINO's machinery: WINO revokes committed tokens back to masks, to be decided
again by later steps; LLaDA 2.1 replaces a decided token by another in one step, and it needs the block to stay
current after its last mask, which is the model block's business. The core offers both as decision fields
(``edit``, ``hold``), which any verification may use.

Official code: the ``generate`` of LLaDA 2.1's ``modeling_llada2_moe.py`` (published with ``inclusionAI/LLaDA2.1-
mini``; the copy recorded is ``lingjiechen2/dllm`` 9268328, see ``tests/reference/record_llada2.py``). Where it
departs from what the project does:

* its ``editing_threshold`` argument defaults to 0.9 while its docstring says 0.5: the argument (0.9) is followed;
* it passes its block-diffusion mask as 0/1 additive scores, so earlier blocks also attend to the current one;
  the project attends block-causally (the fixture holds both; the test compares with the corrected mask);
* its greedy token may be the mask id; the core never proposes the mask id (it is excluded from every logit row);
* with ``eos_early_stop`` it stops after the block holding an EOS; the project's ``generation.stop_at_eos`` stops
  deciding a row's columns after its first EOS at once (``stop_at_eos: false`` decodes every block, the official
  default).

**Bidirectional models**: the rule edits the decided columns of the window's block while the block has masks; there
is no model block to hold open, so there are no post-steps.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from dlm_decode.api import (
    Decision,
    DecodeState,
    ForwardOutput,
    Proposal,
    Window,
    check_field,
    check_probability,
    hookimpl,
    threshold_commit,
)


@dataclass
class EditingConfig:
    """LLaDA 2.1's ``generate`` defaults (its ``threshold``, ``num_to_transfer``, ``editing_threshold`` and
    ``max_post_steps`` arguments)."""

    threshold: float = 0.95
    """A mask is committed when its greedy token's probability is at least this."""
    min_tokens: int = 1
    """At least this many masks per step (the most confident), when fewer pass ``threshold``."""
    editing_threshold: float = 0.9
    """A decided token is replaced when the greedy token differs and its probability exceeds this."""
    max_post_steps: int = 16
    """Steps that only edit a block after its last mask, at most (0: none)."""

    def __post_init__(self) -> None:
        check_probability(self.threshold, "threshold", "LLaDA 2.1 uses 0.95 (its default) to 0.5")
        check_probability(self.editing_threshold, "editing_threshold", "LLaDA 2.1 uses 0.9 (its default) to 0.5")
        check_field(self.min_tokens >= 1, "min_tokens", f"must be >= 1, got {self.min_tokens}", "use 1 (default)")
        check_field(
            self.max_post_steps >= 0,
            "max_post_steps",
            f"must be >= 0, got {self.max_post_steps}",
            "use 16 (LLaDA 2.1's default), or 0 for no post-steps",
        )


@dataclass
class EditingMemory:
    """Per batch: each row's block start (``[B]`` long) and its post-steps in that block (``[B]`` long)."""

    block_start: torch.Tensor
    post_steps: torch.Tensor


class TokenEditing:
    """Threshold commits of masks and edits of decided tokens in each row's block (see the module docstring)."""

    revokes = True  # edits decided tokens of the row's block (streams hold the block back)

    def __init__(self, config: EditingConfig, scorer):
        self.config, self.scorer = config, scorer

    @staticmethod
    def block_columns(state: DecodeState, window: Window) -> torch.Tensor:
        """``[B, W]`` long, each row's block columns from ``window.block_start`` at a width fixed per batch, no host
        read: the model's block size for a block-causal model (a held row's block is its whole model block); for a
        bidirectional model the window's width bound (a ``blocks`` window's size), else the generated length."""
        width = state.attention.block_size or window.width or state.width - state.gen_start
        return window.block_start[:, None] + torch.arange(width, device=state.canvas.device)

    @hookimpl(wrapper=True)
    def dlm_model_inputs(self, state: DecodeState, window: Window):
        """Add every column of each row's block to the output queries: edits read decided columns too."""
        inputs = yield
        if inputs.outputs is None:
            return inputs
        span = inputs.end - inputs.start
        queries = (self.block_columns(state, window) - inputs.start).clamp(0, span - 1)
        return replace(inputs, outputs=torch.cat([inputs.outputs, queries], dim=1))

    def greedy_block(
        self, state: DecodeState, forward: ForwardOutput, window: Window
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The greedy token and its probability at every column of each row's block, ``[B, N]`` long and float
        (the canvas and 0 outside the blocks)."""
        cols = self.block_columns(state, window)  # [B, W]
        last = window.block_end.clamp(max=forward.inputs.end) - 1
        inside = cols <= last[:, None]
        rows = torch.arange(state.batch_size, device=cols.device)[:, None].expand_as(cols)
        read = torch.minimum(cols, last[:, None]).clamp(min=forward.start)  # columns the forward computed
        confidence, tokens = self.scorer.max_prob(forward.at(rows.flatten(), read.flatten()))  # [B * W]
        # written one past the canvas where outside the block, then cut: no clamped column overwrites a real one
        cols = torch.where(inside, cols, state.width)
        wide = state.width + 1
        best = state.canvas.new_zeros((state.batch_size, wide)).scatter_(1, cols, tokens.view_as(cols))
        scores = confidence.new_zeros((state.batch_size, wide)).scatter_(1, cols, confidence.view_as(cols))
        return best[:, : state.width], scores[:, : state.width]

    @hookimpl
    def dlm_verify(self, state: DecodeState, forward: ForwardOutput, proposal: Proposal, window: Window) -> Decision:
        config = self.config
        commit = threshold_commit(proposal.confidence, window.eligible, config.threshold, config.min_tokens)
        block = (state.columns >= window.block_start[:, None]) & (state.columns < window.block_end[:, None])
        editable = block & ~state.masked & ~state.filled & state.generated_columns & ~state.finished[:, None]
        best, scores = self.greedy_block(state, forward, window)
        edit = editable & (scores > config.editing_threshold) & (best != state.canvas)
        tokens = torch.where(edit, best, proposal.tokens)
        if not state.attention.block_causal or config.max_post_steps == 0:
            return Decision(commit=commit, tokens=tokens, edit=edit)
        memory = state.memory(self, lambda s: EditingMemory(window.block_start, torch.zeros_like(window.block_start)))
        had_masks = (state.masked & block).any(-1)
        post = memory.post_steps.masked_fill(window.block_start != memory.block_start, 0) + ~had_masks
        memory.block_start, memory.post_steps = window.block_start, post
        full = ~(state.masked & block & ~commit).any(-1)
        hold = full & (had_masks | edit.any(-1)) & (post < config.max_post_steps)
        return Decision(commit=commit, tokens=tokens, edit=edit, hold=hold)


@hookimpl
def dlm_register(registry) -> None:
    registry.add("verification", "editing", EditingConfig, lambda config, context: TokenEditing(config, context.scorer))
