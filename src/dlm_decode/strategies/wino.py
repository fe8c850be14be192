"""WINO verification: draft wide, verify narrow, with a shadow block in the same forward.

WINO ("Wide-In, Narrow-Out: Revokable Decoding for Efficient and Effective DLLMs", Hong et al., arXiv 2507.18578;
official code ``Feng-Hong/WINO-DLLM``, ``LLaDA/decoding.py``, ``decoding_wino``) commits aggressively and takes
back the committed tokens the model no longer supports.

*Shadow block.* The plugin wraps ``dlm_model_inputs``: after the canvas span it appends, per row, one mask token
(a *shadow slot*) per column of the row's current block (``window.block_start`` to ``window.block_end``; shorter
blocks are padded to the batch's longest, and no slot sees a padding slot, whose logits are ignored). A slot
repeats its column's position id and attends to every real key that column may see *except the column itself*;
slots attend to each other (the official layout; ``shadows_attend_each_other: false`` lets a slot see only
itself, which makes its first layer exactly the forward with that column masked); no real query attends to a
slot, so the canvas logits are those of the plain forward. Slot ``i`` of row ``b`` reads
``forward.extra(b, i)`` (query ``end - start + i``; the wrapper adds the slots to the output queries) and predicts
column ``block_start[b] + i`` without looking at the token there: its probability of the committed token is the
token's *leave-one-out* support. In deeper layers the other columns still carry that token (they attend to it),
so the support is leave-one-out at the input, as in the official code. One forward both drafts and verifies; it
needs cache ``none`` and logits aligned to the inputs (a shifted-logit adapter such as Dream's would have to
realign the shadow block too).

*Each step, per row* (``m``: eligible masked positions of the block, ``a``: tokens drafted this step):

1. **Wide in.** Draft the eligible positions whose confidence exceeds ``draft_threshold`` (tau1), at most the
   ``clamp(int(max_accept_ratio * m), min_accept, max_accept)`` most confident; if none passes, the single most
   confident one.
2. **Narrow out.** Candidates are the committed generated tokens of the block (committed at earlier steps, so a
   token drafted now is verified from the next step on; with ``generation.stop_at_eos`` a row's EOS and the fill
   tokens after it are excluded, since revoking the EOS would turn its whole filled tail back into masks). Those
   with shadow support below ``verify_threshold`` (tau2) are turned back into masks, lowest first, and only when
   this step drafted more than one token (the official ``if num_accept > 1``). ``revoke_limit`` bounds how many:
   ``progress`` (the default) at most ``min(last_accept, a) - 1``, where ``last_accept`` is the row's accept count
   at its previous step (``initial_last_accept`` at its first step), so every step makes net progress
   (``a - revoked >= 1``); ``official`` at most ``last_accept - 1``, the official code's bound, which lets one step
   revoke more than it commits. The official code also resets ``last_accept`` to 30 at each block, but a block's
   first step has nothing to revoke, so carrying the count over (which suits sliding windows) changes nothing
   for blocks. With ``revoke_limit: official`` and ``generation.stop_at_eos: false`` the decoder reproduces
   ``decoding_wino`` token for token (tests/test_reference.py).

The official heuristics (0.7, clamp 5..20, 30) are the defaults of the named parameters; the paper's settings
are blocks of 128 for 256 generated tokens, tau2 = 0.9 and tau1 = 0.5 to 0.8 by task (0.6 for GSM8K). Unlike the
official code (batch size 1), every quota and threshold applies per row, so a batch decodes each row as it would
alone. The official softmax includes the mask token; here, as everywhere in the core, it is excluded.

*Flip-flops* (COVER, arXiv 2602.06161): a token revoked and later committed again unchanged. Per row, the
totals are published as the row statistics ``wino.revocations`` and ``wino.flip_flops`` (``state.add_row_stat``,
``[B]`` long, added up every step); ``max_revocations_per_position`` stops revoking a position once it has been
revoked that many times.
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
    Relayout,
    StrategyError,
    Window,
    check_field,
    hookimpl,
    select_top,
)


class RevokeLimit(enum.Enum):
    progress = "progress"
    official = "official"


@dataclass
class WinoConfig:
    draft_threshold: float = 0.6
    """tau1: draft the eligible positions whose confidence exceeds it (wide in)."""
    verify_threshold: float = 0.9
    """tau2: revoke committed block tokens whose leave-one-out probability is below it (narrow out)."""
    max_accept_ratio: float = 0.7
    """At most ``int(ratio * masked positions of the block)`` drafts per step (before the clamp)."""
    min_accept: int = 5
    """Lower clamp of the per-step draft cap."""
    max_accept: int = 20
    """Upper clamp of the per-step draft cap."""
    initial_last_accept: int = 30
    """The accept count assumed before a row's first step (bounds its first revocations)."""
    max_revocations_per_position: int | None = None
    """Never revoke a position again once it was revoked this many times (null: no limit; 0: never revoke)."""
    shadows_attend_each_other: bool = True
    """Shadow slots see each other (the official code) or only themselves (exact first-layer leave-one-out)."""
    revoke_limit: RevokeLimit = RevokeLimit.progress
    """progress: revoke at most ``min(last_accept, drafted) - 1`` (every step gains a token); official: at most
    ``last_accept - 1``, as WINO's code."""

    def __post_init__(self) -> None:
        for name in ("draft_threshold", "verify_threshold"):
            value = getattr(self, name)
            check_field(0 <= value <= 1, name, f"must be a probability in [0, 1], got {value}")
        check_field(
            0 < self.max_accept_ratio <= 1, "max_accept_ratio", f"must be in (0, 1], got {self.max_accept_ratio}"
        )
        check_field(self.min_accept >= 1, "min_accept", f"must be at least 1, got {self.min_accept}")
        check_field(
            self.max_accept >= self.min_accept,
            "max_accept",
            f"must be at least min_accept ({self.min_accept}), got {self.max_accept}",
        )
        check_field(
            self.initial_last_accept >= 1, "initial_last_accept", f"must be at least 1, got {self.initial_last_accept}"
        )
        check_field(
            self.max_revocations_per_position is None or self.max_revocations_per_position >= 0,
            "max_revocations_per_position",
            f"must be >= 0 or null, got {self.max_revocations_per_position}",
        )


def shadow_slots(window: Window) -> tuple[torch.Tensor, torch.Tensor]:
    """The canvas column each shadow slot shadows.

    :return: ``cols`` ``[B, L]`` long (``block_start + i``; ``block_start`` on padding slots) and ``valid``
        ``[B, L]`` bool (false on padding), ``L`` the longest block of the batch.
    """
    lengths = (window.block_end - window.block_start).clamp(min=0)
    offsets = torch.arange(int(lengths.max()), device=lengths.device)
    valid = offsets < lengths[:, None]
    cols = torch.where(valid, window.block_start[:, None] + offsets, window.block_start[:, None])
    return cols, valid


def append_shadow(state: DecodeState, window: Window, inputs: ModelInputs, each_other: bool) -> ModelInputs:
    """Append the shadow block to inputs built without a cache (keys = queries = canvas ``[start, end)``).

    :return: inputs with ``input_ids`` and ``position_ids`` ``[B, S + L]`` and ``attention_mask``
        ``[B, 1, S + L, S + L]``; ``start`` and ``end`` unchanged; the ``L`` slots appended to ``outputs``.
    """
    cols, valid = shadow_slots(window)
    valid = valid & state.attention_mask.gather(1, cols)  # a regrouped batch's right padding shadows nothing
    batch, span = inputs.input_ids.shape
    outside = valid & ((cols < inputs.start) | (cols >= inputs.end))
    if bool(outside.any()):
        raise StrategyError(
            f"the current block of rows {outside.any(-1).nonzero().flatten().tolist()} lies outside "
            f"the forward's columns [{inputs.start}, {inputs.end})",
            "use a window whose model input covers its blocks",
        )
    queries = torch.where(valid, cols - inputs.start, 0)  # [B, L] the real query at each slot's column
    real = inputs.attention_mask[:, 0]  # [B, S, S]
    seen = real.gather(1, queries[:, :, None].expand(-1, -1, span))  # [B, L, S] what that query sees
    own = torch.arange(span, device=seen.device) == queries[:, :, None]
    to_real = seen & ~own
    eye = torch.eye(cols.shape[1], dtype=torch.bool, device=seen.device)
    to_shadow = eye | (valid[:, :, None] & valid[:, None, :]) if each_other else eye.expand(batch, -1, -1)
    hidden = torch.zeros(batch, span, cols.shape[1], dtype=torch.bool, device=seen.device)
    mask = torch.cat([torch.cat([real, hidden], -1), torch.cat([to_real, to_shadow], -1)], 1)
    outputs = inputs.outputs
    if outputs is not None:  # the shadow slots' logits are read too
        outputs = torch.cat([outputs, span + torch.arange(cols.shape[1], device=cols.device).expand_as(cols)], 1)
    return ModelInputs(
        input_ids=torch.cat([inputs.input_ids, torch.full_like(cols, state.mask_token_id)], 1),
        position_ids=torch.cat([inputs.position_ids, state.position_ids.gather(1, cols)], 1),
        attention_mask=mask[:, None],
        start=inputs.start,
        end=inputs.end,
        outputs=outputs,
    )


@dataclass
class WinoMemory:
    """Per-batch WINO state (the batch's ``state.memory`` of the strategy).

    :ivar last_accept: ``[B]`` long, the row's accept count at its previous step.
    :ivar revocations: ``[B, N]`` long, times each position was revoked.
    :ivar revoked_token: ``[B, N]`` long, the token a position held when revoked, until it is committed again
        (-1: none).
    """

    last_accept: torch.Tensor
    revocations: torch.Tensor
    revoked_token: torch.Tensor
    initial_last_accept: int = 1

    @classmethod
    def new(cls, state: DecodeState, initial_last_accept: int) -> WinoMemory:
        rows = torch.zeros(state.batch_size, dtype=torch.long, device=state.canvas.device)
        return cls(
            last_accept=rows + initial_last_accept,
            revocations=torch.zeros_like(state.canvas),
            revoked_token=torch.full_like(state.canvas, -1),
            initial_last_accept=initial_last_accept,
        )

    def relayout(self, change: Relayout, state: DecodeState) -> WinoMemory:
        return WinoMemory(
            last_accept=change.rows_of(self.last_accept, self.initial_last_accept),
            revocations=change.apply(self.revocations, 0),
            revoked_token=change.apply(self.revoked_token, -1),
            initial_last_accept=self.initial_last_accept,
        )


class WinoVerifier:
    """The ``wino`` verification strategy (see the module docstring).

    :param scorer: the scoring backend (shadow probabilities).
    """

    revokes = True  # narrow-out revocations, inside the row's current block

    def __init__(self, config: WinoConfig, scorer):
        self.config = config
        self.scorer = scorer

    @hookimpl(wrapper=True)
    def dlm_model_inputs(self, state: DecodeState, window: Window, plan: ForwardPlan):
        """Wrap the default inputs: append this step's shadow block (see :func:`append_shadow`)."""
        if plan.cache is not None:
            raise StrategyError(
                "the shadow block needs the whole canvas recomputed each step, but the cache "
                "strategy reuses keys/values",
                "set decoder.cache=none",
            )
        inputs = yield
        return append_shadow(state, window, inputs, self.config.shadows_attend_each_other)

    def draft(self, proposal: Proposal, window: Window) -> torch.Tensor:
        """Wide in: ``[B, N]`` bool, the capped confident drafts (the most confident one when none passes)."""
        eligible, confidence = window.eligible, proposal.confidence
        masks = eligible.sum(-1)  # [B]; times a float it is float32, truncated as in the official code
        cap = (self.config.max_accept_ratio * masks).long().clamp(self.config.min_accept, self.config.max_accept)
        passing = eligible & (confidence > self.config.draft_threshold)
        drafted = select_top(confidence, passing, cap)
        return torch.where(passing.any(-1, keepdim=True), drafted, select_top(confidence, eligible, None))

    def revocable(self, state: DecodeState, window: Window, memory: WinoMemory) -> torch.Tensor:
        """``[B, N]`` bool: committed generated tokens of unfinished rows' blocks that may still be revoked (with
        ``stop_at_eos``, not a row's EOS: revoking it would reopen the whole filled tail after it)."""
        columns = state.columns
        block = (columns >= window.block_start[:, None]) & (columns < window.block_end[:, None])
        settled = state.masked | state.filled | state.finished[:, None]
        if state.stop_at_eos:
            settled = settled | state.is_eos(state.canvas)
        candidates = block & (columns >= state.gen_start) & state.attention_mask & ~settled  # no right padding
        if self.config.max_revocations_per_position is not None:
            candidates &= memory.revocations < self.config.max_revocations_per_position
        return candidates

    def support(
        self, state: DecodeState, forward: ForwardOutput, window: Window, candidates: torch.Tensor
    ) -> torch.Tensor:
        """Leave-one-out support of the current tokens from the shadow block.

        :param candidates: ``[B, N]`` bool, positions inside each row's block.
        :return: ``[B, N]`` float32, the shadow slot's probability of the canvas token at ``candidates``,
            ``+inf`` elsewhere.
        """
        rows, cols = candidates.nonzero(as_tuple=True)
        shadow = forward.extra(rows, cols - window.block_start[rows])  # [K, V]
        probs = self.scorer.token_prob(shadow, state.canvas[rows, cols])
        support = torch.full(state.canvas.shape, float("inf"), device=probs.device)
        support[rows, cols] = probs
        return support

    @hookimpl
    def dlm_verify(self, state: DecodeState, forward: ForwardOutput, proposal: Proposal, window: Window) -> Decision:
        """Commit the drafts and revoke the weakest unsupported block tokens, every ``[B, N]`` mask per row."""
        memory = state.memory(self, lambda state: WinoMemory.new(state, self.config.initial_last_accept))
        commit = self.draft(proposal, window)
        accepted = commit.sum(-1)
        candidates = self.revocable(state, window, memory)
        support = self.support(state, forward, window, candidates)
        if self.config.revoke_limit is RevokeLimit.official:
            limit = torch.where(accepted > 1, memory.last_accept - 1, 0)
        else:
            limit = (torch.minimum(memory.last_accept, accepted) - 1).clamp(min=0)  # [B], 0 unless accepted > 1
        revoke = select_top(-support, candidates & (support < self.config.verify_threshold), limit)

        state.add_row_stat("wino.flip_flops", (commit & (proposal.tokens == memory.revoked_token)).sum(-1))
        state.add_row_stat("wino.revocations", revoke.sum(-1))
        memory.revoked_token = torch.where(revoke, state.canvas, memory.revoked_token.masked_fill(commit, -1))
        memory.revocations += revoke
        memory.last_accept = torch.where(state.finished, memory.last_accept, accepted)
        return Decision(commit=commit, tokens=proposal.tokens, revoke=revoke)


@hookimpl
def dlm_register(registry) -> None:
    registry.add("verification", "wino", WinoConfig, lambda config, context: WinoVerifier(config, context.scorer))
