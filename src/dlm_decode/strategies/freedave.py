"""FreeDave: lossless draft-and-verify, the one-token-per-step output in fewer forwards.

FreeDave ("Free Draft-and-Verification: Toward Lossless Parallel Decoding for Diffusion Large Language Models", Wu
et al., arXiv 2510.00294; official code ``cychomatica/FreeDave`` at 8b48121, ``generation/core.py``,
``block_decode_with_full_attention_FreeDave``) reproduces greedy one-token-per-step decoding (LLaDA's
low-confidence remasking with one token per step: the most confident masked position of the current block, its
argmax token) while committing several tokens per forward.

*The pipeline.* The one-token rule applied to the logits of a canvas gives its next token exactly. The logits of the
last forward also rank the other masked positions; the next one-token steps are guessed from that ranking (the
*drafts* ``d_1, d_2, ...``, the most confident remaining positions with their argmax tokens), and each guess is
checked by the model itself in the next forward: besides the current canvas ``x`` (whose one-token step ``a_0`` is
exact), the forward runs the drafted canvases ``x + d_1``, ``x + d_1 + d_2``, ... (``draft_steps - 1`` of them,
appended as extra batch rows of the same inputs: the official ``batch_expanding`` mode). Canvas ``x + d_1`` is the
canvas one token per step would reach if ``d_1 == a_0``; then its own one-token step ``a_1`` is exact too, and so on.
A step commits ``a_0, a_1, ..., a_J``, where ``J`` is the number of drafted canvases verified in a chain; the
ranking of the last verified canvas gives the next step's drafts. Every committed token is a token the
one-token-per-step decoder commits, in the same order, so the output is the same (given a model whose rows do not
depend on the other rows of the batch, which the project's batch-invariance tests check) and the number of
forwards is never larger. ``draft_steps: 1`` is one token per step.

*Equivalences with the official code.* The official loop keeps the logits of the canvas it accepted and, per forward,
runs ``draft_steps`` canvases: that canvas plus the ``k + 1`` most confident positions (``k = 0, ..., D - 1``); it
accepts the longest chain whose next draft equals the verified canvas's own one-token step (its ``subset`` rule on
these nested drafts is exact equality of that step). The canvases forwarded here are the same ones: the current
canvas is the official draft 0 (its last accepted canvas plus the exact next step), the drafted canvases are its
drafts 1 to ``D - 1``, and committing ``a_J`` here is committing the official accepted draft plus the token its next
draft 0 would add. Departures: (1) the official code starts every block with a forward of the canvas alone (a cache
refresh) and commits a block's last token from the logits it already has; here the drafts of a block's first step
come from the last forward of the block before (that forward ranks the next block's positions too), so a block
costs no extra forward, and a block's last token takes one (the rule needs the canvas that holds it); the official
code may then use fewer or more forwards than this one, never different tokens. (2) The official code takes the
mask id into its softmax; here, as everywhere in the core, it is excluded (the tokens agree where the model gives
the mask id no mass). (3) Not offered: the official ``tree_attention`` mode (the same canvases, sharing a prefix
cache through a tree mask), its ``eager_acceptance_mode`` (drafting into future blocks before the current one is
finished) and its confidence-threshold variant ("FreeDave++", which verifies threshold steps, not one-token
steps).

*Scope.* The rule needs the window to be the masked positions of the current block (``full`` or ``blocks``, whose
eligible positions on a drafted canvas are the same block's remaining masks), greedy proposals (the verified step
is the argmax), and cache ``none`` (the drafted canvases are extra batch rows with no key/value rows of their
own); the factory refuses anything else with the reason. On a block-causal model the core keeps every step inside
the current model block, so the chain stops at the model block's end as at a window block's. With
``generation.stop_at_eos`` a drafted canvas is settled as the core settles a decision (the columns after its first
EOS are filled and not decided), so EOS commits are drafted and verified like any other token.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dlm_decode.api import (
    ConfigError,
    Decision,
    DecodeState,
    ForwardOutput,
    ForwardPlan,
    ModelInputs,
    Proposal,
    StrategyError,
    Window,
    check_field,
    hookimpl,
    select_top,
)

#: Windows whose eligible positions are the current block's masks (so a drafted canvas keeps the same block).
BLOCK_WINDOWS = ("full", "blocks")


@dataclass
class FreeDaveConfig:
    draft_steps: int = 4
    """D: canvases per forward, the current one and ``D - 1`` drafted ones, so at most D tokens per forward (the
    official default for LLaDA; 8 for Dream and SDAR/TraDo). 1 is one token per step."""

    def __post_init__(self) -> None:
        check_field(
            self.draft_steps >= 1,
            "draft_steps",
            f"must be at least 1, got {self.draft_steps}",
            "1 decodes one token per step; the official code uses 4 for LLaDA, 8 for Dream",
        )


@dataclass
class Drafts:
    """The drafted canvases of one step (``C = draft_steps - 1``).

    :ivar canvases: ``[C, B, N]`` long, canvas ``j`` holds the current canvas plus drafts ``1..j + 1``, settled as
        the core settles a decision (EOS fill).
    :ivar cols: ``[B, C]`` long, the column of draft ``j + 1`` (0 where ``valid`` is false).
    :ivar tokens: ``[B, C]`` long, its token.
    :ivar valid: ``[B, C]`` bool, the row has a draft ``j + 1`` (fewer eligible positions, or no ranking yet).
    """

    canvases: torch.Tensor
    cols: torch.Tensor
    tokens: torch.Tensor
    valid: torch.Tensor


@dataclass
class FreeDaveMemory:
    """Per batch: the ranking the next drafts come from, and this step's drafts.

    :ivar confidence: ``[B, N]`` float32, the one-token rule's confidence at every column of the last verified
        canvas's forward (``-inf`` where none was computed); None before the batch's first forward.
    :ivar tokens: ``[B, N]`` long, the argmax tokens of that forward.
    :ivar drafts: the drafts appended to this step's inputs (None when the step runs the current canvas alone).
    """

    confidence: torch.Tensor | None = None
    tokens: torch.Tensor | None = None
    drafts: Drafts | None = None


def draft(state: DecodeState, window: Window, confidence: torch.Tensor, tokens: torch.Tensor, count: int) -> Drafts:
    """The ``count`` most confident eligible positions of each row, in rank order (ties: leftmost first), and the
    nested canvases holding the first ``1..count`` of them.

    :param confidence: ``[B, N]`` float32, the ranking (from the last verified forward).
    :param tokens: ``[B, N]`` long, the token drafted at each column.
    """
    count = min(count, state.width)
    ranked = torch.where(window.eligible, confidence, float("-inf"))
    order = ranked.argsort(dim=-1, descending=True, stable=True)[:, :count]  # [B, C]
    valid = window.eligible.gather(1, order) & ranked.gather(1, order).isfinite()
    cols = order.masked_fill(~valid, 0)
    drafted = tokens.gather(1, cols)
    steps = torch.arange(count, device=cols.device)
    # canvas j writes drafts 0..j: a [C, B, C] mask of which drafts each canvas holds
    holds = (steps[None, None, :] <= steps[:, None, None]) & valid[None]
    written = torch.zeros((count, *state.canvas.shape), dtype=torch.bool, device=cols.device)
    written.scatter_(2, cols.expand(count, -1, -1), holds)  # invalid drafts scatter False onto column 0
    values = torch.zeros_like(state.canvas).scatter(1, cols, drafted)
    canvases = torch.where(written, values, state.canvas)
    if state.stop_at_eos:
        canvases = canvases.masked_fill(state.after_first_eos(canvases), state.fill_token_id)
    return Drafts(canvases=canvases, cols=cols, tokens=drafted, valid=valid)


class FreeDave:
    """The ``freedave`` verification strategy (see the module docstring).

    :param scorer: the scoring backend (the one-token rule's confidence on the drafted canvases).
    """

    def __init__(self, config: FreeDaveConfig, scorer):
        self.draft_steps = config.draft_steps
        self.scorer = scorer

    @hookimpl(wrapper=True)
    def dlm_model_inputs(self, state: DecodeState, window: Window, plan: ForwardPlan):
        """Append the drafted canvases as extra batch rows: ``[B * D, S]`` ids, positions and masks, rows
        ``B * j .. B * (j + 1)`` holding canvas ``j`` (0: the current one); the logits of every column are read (the
        ranking covers the next block's positions too)."""
        inputs = yield
        memory = state.memory(self, lambda state: FreeDaveMemory())
        memory.drafts = None
        if self.draft_steps == 1 or memory.confidence is None:  # nothing ranked yet: the current canvas alone
            return inputs.reading_all()  # the ranking reads every column (the next block's too)
        if plan.cache is not None:
            raise StrategyError(
                "the drafted canvases are extra batch rows with no keys/values of their own, but the "
                "cache strategy reuses keys/values",
                "set decoder.cache=none",
            )
        assert memory.tokens is not None  # set with confidence
        memory.drafts = drafts = draft(state, window, memory.confidence, memory.tokens, self.draft_steps - 1)
        copies = self.draft_steps
        return ModelInputs(
            input_ids=torch.cat([inputs.input_ids, *drafts.canvases[:, :, inputs.start : inputs.end]]),
            position_ids=inputs.position_ids.repeat(copies, 1),
            attention_mask=inputs.attention_mask.repeat(copies, 1, 1, 1),
            start=inputs.start,
            end=inputs.end,
        )

    def ranking(
        self, state: DecodeState, forward: ForwardOutput, window: Window, rows: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The one-token rule's confidence and argmax at every column of every forwarded canvas.

        :return: ``[R, B, N]`` float32 (``-inf`` outside the columns the forward computes for the row alone,
            :meth:`DecodeState.own_columns`) and ``[R, B, N]`` long, ``R`` canvases.
        """
        batch, width = state.canvas.shape
        span = forward.inputs.end - forward.start
        logits = forward.columns(forward.start, forward.inputs.end)
        confidence, tokens = self.scorer.max_prob(logits.reshape(-1, logits.shape[-1]))
        full_confidence = torch.full((rows, batch, width), float("-inf"), device=confidence.device)
        full_tokens = torch.zeros((rows, batch, width), dtype=torch.long, device=confidence.device)
        full_confidence[:, :, forward.start : forward.inputs.end] = confidence.view(rows, batch, span)
        full_tokens[:, :, forward.start : forward.inputs.end] = tokens.view(rows, batch, span)
        return full_confidence.masked_fill(~state.own_columns(window), float("-inf")), full_tokens

    @hookimpl
    def dlm_verify(self, state: DecodeState, forward: ForwardOutput, proposal: Proposal, window: Window) -> Decision:
        """Commit the current canvas's one-token step and each verified drafted canvas's, every ``[B, N]`` mask per
        row; keep the last verified canvas's ranking for the next drafts."""
        memory = state.memory(self, lambda state: FreeDaveMemory())
        drafts = memory.drafts
        first = select_top(proposal.confidence, window.eligible, None)  # a_0: exact, from the current canvas
        rows = 1 if drafts is None else self.draft_steps
        confidence, tokens = self.ranking(state, forward, window, rows)
        if drafts is None:
            memory.confidence, memory.tokens = confidence[0], tokens[0]
            return Decision(commit=first, tokens=proposal.tokens)
        eligible = window.eligible & (drafts.canvases == state.mask_token_id)  # [C, B, N]
        steps = select_top(confidence[1:].flatten(0, 1), eligible.flatten(0, 1), None).view_as(eligible)
        # chain: canvas j (holding drafts 1..j+1) is verified when every draft up to j + 1 equals the step before it
        choices = torch.cat([first[None], steps[:-1]])  # [C, B, N], the step each draft must equal
        chosen = choices.gather(2, drafts.cols.T[:, :, None]).squeeze(2)  # [C, B]
        agrees = (
            drafts.valid.T & chosen & (tokens[:-1].gather(2, drafts.cols.T[:, :, None]).squeeze(2) == drafts.tokens.T)
        )
        verified = agrees.long().cumprod(0).bool()  # [C, B]
        commit = first | (steps & verified[:, :, None]).any(0)
        step_tokens = torch.where(steps & verified[:, :, None], tokens[1:], 0).sum(0)  # one step per column at most
        committed = torch.where(first, proposal.tokens, step_tokens)
        last = verified.sum(0)  # [B], the last verified canvas (0: the current one)
        index = last[None, :, None].expand(1, -1, state.width)
        memory.confidence = confidence.gather(0, index)[0]
        memory.tokens = tokens.gather(0, index)[0]
        state.add_row_stat("freedave.verified_drafts", last)
        return Decision(commit=commit, tokens=torch.where(commit, committed, state.canvas))


def freedave(config: FreeDaveConfig, context) -> FreeDave:
    """``freedave``, refused with a window, proposal or cache under which it would not reproduce one token per step."""
    window, cache, proposal = (context.resolved.strategies[role][0] for role in ("window", "cache", "proposal"))
    if config.draft_steps > 1:
        if window not in BLOCK_WINDOWS:
            raise ConfigError(
                "decoder.window",
                f"{window!r} is not a block window: FreeDave verifies "
                "a drafted canvas by the one-token step on the same block's remaining masks, which "
                f"only the {' and '.join(BLOCK_WINDOWS)} windows keep",
                "set decoder.window=blocks",
            )
        if proposal != "greedy":
            raise ConfigError(
                "decoder.proposal",
                f"{proposal!r}: FreeDave reproduces greedy one-token decoding (each verified step is an argmax)",
                "set decoder.proposal=greedy",
            )
        if cache != "none":
            raise ConfigError(
                "decoder.cache",
                f"{cache!r}: the drafted canvases are extra batch rows "
                "of the forward with no cached keys/values of their own",
                "set decoder.cache=none",
            )
    return FreeDave(config, context.scorer)


@hookimpl
def dlm_register(registry) -> None:
    registry.add("verification", "freedave", FreeDaveConfig, freedave)
