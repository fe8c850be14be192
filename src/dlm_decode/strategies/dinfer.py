"""dInfer's two parallel-decoding verifiers: hierarchical decoding and credit decoding.

Both come from dInfer ("dInfer: An Efficient Inference Framework for Diffusion Language Models", Yuxin Ma, Lun Du,
Lanning Wei, Kun Chen, Qian Xu, Kangyu Wang et al., arXiv 2510.08666; official code ``inclusionAI/dInfer`` at commit
fce4e32, ``python/dinfer/decoding/parallel_strategy.py``), where each is a decoder of the block loop
``BlockWiseDiffusionLLM``. Here each is a verification strategy: it reads the proposals of the window's eligible
positions (the masked positions of the current block, with the ``blocks`` window) and commits some of them.

``hierarchy(threshold, low_threshold)``: the official ``HierarchyDecoder``. Per row, ``c`` is the confidence of each
eligible proposal (its probability under the untempered model distribution). The eligible positions fall into
*segments*, maximal runs of adjacent eligible columns (committed tokens split a block's masks into runs). A step
commits, per row:

* every *segment peak* (a position whose confidence equals the maximum of its segment; ties all count) with
  ``c > low_threshold``;
* every position with ``c > threshold`` (strict, unlike Fast-dLLM's ``>=``);
* and always the row's most confident eligible position (the leftmost on ties), so each row progresses.

The hierarchy the name refers to unfolds over steps: a committed peak splits its segment into two, whose own peaks
compete at the next step, so the masked span is divided recursively. Its paper ("Hierarchy Decoding: A Training-free
Parallel Decoding Strategy for Diffusion Large Language Models", ICLR 2026, OpenReview ZsIQUjQtdW, code: dInfer)
presents it as divide and conquer, masked spans being split again and again into smaller regions decoded by
confidence; within one step the code takes one level of segments per forward, and the recursion is the sequence of
steps.
``threshold: null`` keeps only the peaks and the fallback (the official class's default ``threshold=None``);
``low_threshold: null`` commits every peak. (Only the abstracts of the dInfer and Hierarchy papers were at hand when
this was written: the rule follows the code, and the departures below are those visible in the code and abstracts.)

Official departures and variants, and what is followed here:

* ``HierarchyDecoder.get_transfer_index`` asserts batch size 1; here every segment, maximum and fallback is per row.
* ``generate_hierarchy.py`` (``decoding="hierarchy_fast_v2"``, function ``get_transfer_index_hierarchy_fast_v2``)
  holds a second, looped version of the same rule (its fallback: when the block's best confidence is below
  ``low_threshold``, that position alone). It differs in two corner cases: on ties it keeps only the *first*
  maximum of a segment, and when the best confidence equals ``low_threshold`` exactly it commits nothing (its loop
  would then repeat the same step forever). The class, which dInfer's pipeline, benchmarks and serving code use, is
  followed here.
* Defaults: ``threshold = 0.9`` (dInfer's benchmarks and tests); ``low_threshold = 0.4`` (the class default and the
  tests; the benchmark command line defaults to 0.3).

``credit(threshold, alpha, gamma, beta)``: the official ``CreditThresholdParallelDecoder``, CreditDecoding
("CreditDecoding: Accelerating Parallel Decoding in Diffusion Large Language Models with Trace Credit", Kangyu Wang,
Zhiyun Jiang, Haibo Feng, Weijia Zhao, Lin Liu, Jianguo Li, Zhenzhong Lan, Weiyao Lin, arXiv 2510.06133; the v1
title ends "with Trace Credits"). Each position of a row keeps a *trace credit* ``C[v]`` per token ``v``. At every
step, for each eligible position with logits ``z`` ``[V]``:

1. decay: ``C <- beta * C`` (every token of every position of the row's block);
2. accumulate: with ``p = max softmax(z)`` and ``v* = argmax``, ``C[v*] += p ** gamma`` (only the current top-1 token
   of an eligible position gains credit, by its *boosted* probability: ``gamma < 1`` lifts small probabilities);
3. fuse: ``z' = z + alpha * log(1 + C)``, added to the *logits* (not to log-probabilities);
4. decide on ``z'`` as dInfer's threshold decoder does: the token is ``argmax z'`` (at temperature > 0, a Gumbel-max
   sample of ``z' / T`` with the proposal's noise and its top-k/top-p support), its confidence ``softmax(z')`` at that
   token, and the row commits every eligible position with confidence ``>= min(threshold, best - 1e-5)``, ``best``
   the row's best confidence (so at least the best one, and any within 1e-5 of it).

A token's credit is computed before the step's decision, so the current top-1 is always boosted; a token that was
top-1 at earlier steps keeps its decayed credit and may overtake the current top-1 (credit can change the token, not
only the confidence). Credit lives per row in the batch's ``state.memory``; it is cleared when the row's block changes
(``window.block_start`` moves: the official code keys its credit matrix by the block's span, so each block starts at
zero), and a committed position's credit is never read again. With a window that has no blocks (``full``), credit
accumulates over the whole generation. Defaults are the official constructor's: ``alpha = 0.7``, ``gamma = 0.2``,
``beta = 0.8``; ``threshold = 0.9`` (dInfer's benchmarks).

Credit storage: the official code keeps a dense ``[B, L, V]`` matrix per block. Here each position keeps *slots*
(token, credit) for the tokens it has ever ranked first since its block began, ``[B, N, S]`` with one slot column
added per step (``S`` = the batch's steps so far; ``12 * B * N * S`` bytes), so a real vocabulary costs no
``[B, N, V]`` tensor. The decay, the additions and the fusion are the official float32 operations in the official
order, so for the same logits the credit and the fused logits equal the official ones exactly.

Official departures of CreditDecoding and what is followed here:

* The paper's abstract (v1) speaks of accumulating historical *logits*; the official code accumulates the boosted
  top-1 *probability* ``p ** gamma`` of the token predicted at each step. The code is followed.
* The official decoder clears its credit only when a step leaves no mask in the whole canvas. With dInfer's early
  stop (its default) that step never comes when an EOS ends a block before the last: the loop fills the tail with
  EOS and stops without another step. A decoder object reused for a next prompt of the same length then finds its
  blocks' credit (keyed by their spans) already filled. Here credit is per batch (``state.memory``) and starts at
  zero.
* dInfer computes its softmax over the whole head, the mask id included; the core excludes the mask id and the ids
  the tokenizer cannot decode (as for every strategy of this project).

Neither rule needs the whole canvas: both read only the step's proposals, so they work with any window and cache and
on block-causal models (the core keeps each step inside the row's current model block).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dlm_decode.api import Decision, DecodeState, Proposal, Window, check_field, check_probability, hookimpl, select_top

#: The official threshold decoder commits every position within this much of the row's best confidence.
NEAR_BEST = 1e-5


def _probability(value: float | None, key: str) -> None:
    check_field(
        value is None or 0.0 <= value <= 1.0,
        key,
        f"must be in [0, 1] or null, got {value}",
        "confidences are probabilities; null switches this part of the rule off",
    )


# --- hierarchy ---------------------------------------------------------------------------------------------------


@dataclass
class HierarchyConfig:
    threshold: float | None = 0.9
    """Commit every eligible position whose confidence exceeds this (strictly); null: none by this rule."""
    low_threshold: float | None = 0.4
    """A segment peak is committed only if its confidence exceeds this (strictly); null: every peak."""

    def __post_init__(self) -> None:
        _probability(self.threshold, "threshold")
        _probability(self.low_threshold, "low_threshold")


def segment_peaks(confidence: torch.Tensor, eligible: torch.Tensor) -> torch.Tensor:
    """The positions whose confidence is the maximum of their segment (a maximal run of adjacent eligible columns).

    :param confidence: ``[B, N]`` float.
    :param eligible: ``[B, N]`` bool.
    :return: ``[B, N]`` bool, a subset of ``eligible``; every position tied with its segment's maximum.
    """
    before = torch.nn.functional.pad(eligible[:, :-1], (1, 0))  # eligible[:, j - 1], false at column 0
    segment = ((eligible > before).long().cumsum(-1) - 1).clamp(min=0)  # [B, N], 0 for leading ineligible columns
    scores = confidence.float().masked_fill(~eligible, float("-inf"))
    peak = torch.full_like(scores, float("-inf")).scatter_reduce(1, segment, scores, "amax")
    return eligible & (scores == peak.gather(1, segment))


def hierarchy_commit(
    confidence: torch.Tensor, eligible: torch.Tensor, threshold: float | None, low_threshold: float | None
) -> torch.Tensor:
    """dInfer's hierarchical rule: segment peaks above ``low_threshold``, every position above ``threshold``, and
    each row's most confident eligible position (see the module docstring).

    :param confidence: ``[B, N]`` float.
    :param eligible: ``[B, N]`` bool.
    :return: ``[B, N]`` bool, empty only for rows without an eligible position.
    """
    commit = segment_peaks(confidence, eligible)
    if low_threshold is not None:
        commit &= confidence > low_threshold
    if threshold is not None:
        commit |= eligible & (confidence > threshold)
    return commit | select_top(confidence, eligible, None)


class Hierarchy:
    """Commit the segment peaks, the confident positions and the best one (see the module docstring)."""

    def __init__(self, config: HierarchyConfig):
        self.threshold, self.low_threshold = config.threshold, config.low_threshold

    @hookimpl
    def dlm_verify(self, proposal: Proposal, window: Window) -> Decision:
        commit = hierarchy_commit(proposal.confidence, window.eligible, self.threshold, self.low_threshold)
        return Decision(commit=commit, tokens=proposal.tokens)


# --- credit ------------------------------------------------------------------------------------------------------


@dataclass
class CreditConfig:
    threshold: float = 0.9
    """Commit every eligible position whose credit-fused confidence is at least this (and each row's best)."""
    alpha: float = 0.7
    """Fusion weight: the logits gain ``alpha * log(1 + credit)``."""
    gamma: float = 0.2
    """Boost exponent: a step adds ``p ** gamma`` of its top-1 probability ``p`` to that token's credit."""
    beta: float = 0.8
    """Decay: every credit is multiplied by ``beta`` at each step of its block."""

    def __post_init__(self) -> None:
        check_probability(self.threshold, "threshold", "confidences are probabilities; 0.9 is dInfer's default")
        check_field(
            self.alpha >= 0.0,
            "alpha",
            f"must be >= 0, got {self.alpha}",
            "0 turns credit off (plain threshold decoding); 0.7 is the official default",
        )
        check_field(
            self.gamma > 0.0,
            "gamma",
            f"must be > 0, got {self.gamma}",
            "the boost is p ** gamma; 0.2 is the official default, 1 adds the plain probability",
        )
        check_probability(
            self.beta,
            "beta",
            "credit decays by beta per step; 0.8 is the official default, 0 keeps only the current step",
        )


@dataclass
class CreditMemory:
    """Per-batch trace credit (the batch's ``state.memory`` of the strategy).

    :ivar tokens: ``[B, N, S]`` long, the tokens holding credit at each position (-1: an empty slot).
    :ivar credit: ``[B, N, S]`` float32, their credit (0 in empty slots).
    :ivar block_start: ``[B]`` long, each row's block at its previous step (-1 before the first).
    """

    tokens: torch.Tensor
    credit: torch.Tensor
    block_start: torch.Tensor

    @classmethod
    def new(cls, state: DecodeState) -> CreditMemory:
        batch, width = state.canvas.shape
        device = state.canvas.device
        return cls(
            tokens=torch.full((batch, width, 0), -1, dtype=torch.long, device=device),
            credit=torch.zeros((batch, width, 0), dtype=torch.float32, device=device),
            block_start=torch.full((batch,), -1, dtype=torch.long, device=device),
        )

    def step(self, block_start: torch.Tensor, beta: float) -> None:
        """Clear the rows whose block moved, decay every credit, and add one empty slot per position."""
        moved = (block_start != self.block_start)[:, None, None]
        self.block_start = block_start
        batch, width, _ = self.tokens.shape
        empty_tokens = torch.full((batch, width, 1), -1, dtype=torch.long, device=self.tokens.device)
        empty_credit = torch.zeros((batch, width, 1), dtype=torch.float32, device=self.credit.device)
        self.tokens = torch.cat([self.tokens.masked_fill(moved, -1), empty_tokens], -1)
        self.credit = torch.cat([(self.credit * beta).masked_fill(moved, 0.0), empty_credit], -1)

    def add(self, rows: torch.Tensor, cols: torch.Tensor, tokens: torch.Tensor, values: torch.Tensor) -> None:
        """Add ``values`` ``[K]`` to the credit of ``tokens`` ``[K]`` at positions ``(rows, cols)``, taking the first
        empty slot for a token without one (the last slot column is always empty before the call)."""
        slots = self.tokens[rows, cols]  # [K, S]
        match = slots == tokens[:, None]
        slot = torch.where(match.any(-1), match.view(torch.uint8).argmax(-1), (slots < 0).view(torch.uint8).argmax(-1))
        self.credit[rows, cols, slot] += values
        self.tokens[rows, cols, slot] = tokens

    def dense(self, rows: torch.Tensor, cols: torch.Tensor, vocab: int) -> torch.Tensor:
        """``[K, V]`` float32, the credit of every token at positions ``(rows, cols)`` (0 for tokens without)."""
        slots = self.tokens[rows, cols]
        out = torch.zeros((len(rows), vocab), dtype=torch.float32, device=slots.device)
        return out.scatter_add_(1, slots.clamp(min=0), self.credit[rows, cols])  # empty slots add 0 to token 0


def near_best_commit(confidence: torch.Tensor, eligible: torch.Tensor, threshold: float) -> torch.Tensor:
    """dInfer's threshold rule: the eligible positions with ``confidence >= min(threshold, best - 1e-5)``, ``best``
    the row's highest eligible confidence.

    :param confidence: ``[B, N]`` float32.
    :param eligible: ``[B, N]`` bool.
    :return: ``[B, N]`` bool, empty only for rows without an eligible position.
    """
    scores = confidence.masked_fill(~eligible, float("-inf"))
    bar = (scores.amax(-1, keepdim=True) - NEAR_BEST).clamp(max=threshold)
    return eligible & (scores >= bar)


class Credit:
    """Threshold decoding on logits fused with each position's decayed trace credit (see the module docstring)."""

    def __init__(self, config: CreditConfig, scorer):
        self.config = config
        self.scorer = scorer

    def fused_logits(self, state: DecodeState, proposal: Proposal, window: Window) -> torch.Tensor:
        """Update the rows' credit with this step's top-1 proposals and return ``[K, V]`` float32 fused logits of the
        eligible positions (``proposal.rows``, ``proposal.cols``)."""
        memory = state.memory(self, CreditMemory.new)
        memory.step(window.block_start, self.config.beta)
        logits = proposal.logits.float()
        top_prob, top = self.scorer.max_prob(logits)
        memory.add(proposal.rows, proposal.cols, top, top_prob.pow(self.config.gamma))
        credit = memory.dense(proposal.rows, proposal.cols, logits.shape[-1])
        return logits + self.config.alpha * torch.log(credit + 1)

    @hookimpl
    def dlm_verify(self, state: DecodeState, proposal: Proposal, window: Window) -> Decision:
        fused = self.fused_logits(state, proposal, window)
        if proposal.temperature == 0:
            confidence, tokens = self.scorer.max_prob(fused)
        else:  # the proposal's own Gumbel draw, on its top-k / top-p support
            support = proposal.sampling_logits.isneginf() if proposal.sampling_logits is not None else None
            sampled = fused if support is None else fused.masked_fill(support, float("-inf"))
            tokens = self.scorer.gumbel_argmax(sampled, proposal.noise, proposal.temperature)
            confidence = self.scorer.token_prob(fused, tokens)
        eligible = window.eligible
        scores = torch.zeros_like(proposal.confidence).masked_scatter_(eligible, confidence)
        commit = near_best_commit(scores, eligible, self.config.threshold)
        return Decision(commit=commit, tokens=state.canvas.masked_scatter(eligible, tokens))


@hookimpl
def dlm_register(registry) -> None:
    registry.add("verification", "hierarchy", HierarchyConfig, lambda config, context: Hierarchy(config))
    registry.add("verification", "credit", CreditConfig, lambda config, context: Credit(config, context.scorer))
