"""APD verification: accept the dLLM's draft while it agrees with a product of the dLLM and a small AR model.

Adaptive Parallel Decoding (Israel, Van den Broeck and Grover, arXiv 2506.00413). Each step the dLLM drafts its
eligible positions in parallel (the ``sample`` or ``greedy`` proposal); the AR model, which must share the
dLLM's tokenizer, scores the whole draft in one causal pass with its own incremental key/value cache (cropped to
the accepted prefix). The target is the multiplicative mixture ``p_D^R * p_AR^(1-R)``, i.e. the logits
``R * l_D + (1 - R) * l_AR`` (dLLM ids beyond the AR vocabulary are excluded).

``acceptance: coupled`` (the paper's rule). The target is sampled at the draft's temperature with the *same*
Gumbel noise as the draft (``coupling: gumbel``), or taken as its argmax (``coupling: argmax``, what the official
code does). The first drafted position is always committed; then positions are committed left to right while
draft and target agree. Under shared noise the agreement probability at a position is
``sum_i 1 / sum_j max(p_j / p_i, t_j / t_i)`` (p: draft, t: target distribution). R = 1, or identical
distributions, accept the whole window. The committed tokens follow neither p_D nor the target exactly.
Unlike the official code, the temperature is applied once (the official ``sample_with_gumbel`` divides by T and
draws with ``E^T``, sampling the draft at T squared).

``acceptance: speculative`` (an exact variant). Each drafted token x is accepted with probability
``min(1, t(x) / p(x))``, left to right; at the first rejection a token is drawn from the residual
``max(0, t - p)`` (normalised) and committed, and the rest of the draft is dropped. Every committed token then
follows the target distribution ``t`` of its position given the committed prefix (speculative sampling, Leviathan
et al. 2023; Chen et al. 2023), at the cost of an extra uniform and Gumbel draw per position.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

import torch

from dlm_decode.api import (
    AR_FORWARDS,
    BuildContext,
    ConfigError,
    Decision,
    DecodeState,
    Proposal,
    Relayout,
    Window,
    bidirectional_mask,
    check_field,
    check_shared_tokenizer,
    crop_cache,
    first_true_columns,
    hookimpl,
    new_cache,
)


class Coupling(enum.Enum):
    gumbel = "gumbel"
    argmax = "argmax"


class Acceptance(enum.Enum):
    coupled = "coupled"
    speculative = "speculative"


@dataclass
class APDConfig:
    mixture_weight: float = 0.7
    """R: exponent of the dLLM in the target p_D^R * p_AR^(1-R); higher is faster and trusts the dLLM more."""
    coupling: Coupling = Coupling.gumbel
    """gumbel: sample the target with the draft's noise (the paper); argmax: the official code's rule."""
    acceptance: Acceptance = Acceptance.coupled
    """coupled: APD's agreement test; speculative: exact rejection sampling of the target."""

    def __post_init__(self) -> None:
        check_field(0 <= self.mixture_weight <= 1, "mixture_weight", f"must be in [0, 1], got {self.mixture_weight}")


@dataclass
class APDMemory:
    """Per batch: the AR model's key/value cache (an appending HF cache, cropped to the accepted prefix) and its
    causal ``[B, 1, N, N]`` mask over the canvas."""

    cache: Any
    mask: torch.Tensor

    @classmethod
    def new(cls, state: DecodeState) -> APDMemory:
        return cls(cache=new_cache(), mask=bidirectional_mask(state.attention_mask, causal=True))

    def relayout(self, change: Relayout, state: DecodeState) -> APDMemory:
        """An empty AR cache: the next verification recomputes every row's AR keys/values from column 0."""
        return APDMemory.new(state)


class APDVerifier:
    """The ``apd`` verification strategy over a :class:`~dlm_decode.models.causal.CausalLM`-like AR model.

    :param ar: has ``vocab_size`` and ``forward(input_ids, position_ids, attention_mask, cache) -> [B, S, V_ar]``.
    :param scorer: the scoring backend (mixture and coupled sample).
    """

    def __init__(self, config: APDConfig, ar, scorer):
        self.weight = config.mixture_weight
        self.coupling = config.coupling
        self.acceptance = config.acceptance
        self.ar = ar
        self.scorer = scorer

    def ar_logits(self, state: DecodeState, proposal: Proposal, frontier: torch.Tensor) -> torch.Tensor:
        """AR logits predicting every eligible position given the prefix and the draft before it: ``[K, V_ar]``.

        One causal pass over columns ``[start, last eligible)`` of the drafted canvas, reusing the AR cache for
        the columns before ``start`` (the earliest frontier minus one).

        :param frontier: ``[B]`` long, each row's first eligible column (``N`` for rows with none).
        """
        memory = state.memory(self, APDMemory.new)
        first, end = torch.stack([frontier.min(), proposal.cols.max()]).tolist()  # one host sync
        start = min(first - 1, memory.cache.get_seq_length())
        crop_cache(memory.cache, start)
        logits = self.ar.forward(
            proposal.tokens[:, start:end],
            state.position_ids[:, start:end],
            memory.mask[:, :, start:end, :end],
            memory.cache,
        )
        state.add_row_stat(AR_FORWARDS, (frontier < state.width).long())  # the rows this forward served
        return logits[proposal.rows, proposal.cols - 1 - start]

    @hookimpl
    def dlm_verify(self, state: DecodeState, proposal: Proposal, window: Window) -> Decision:
        frontier = first_true_columns(window.eligible, state.width)
        ar_logits = self.ar_logits(state, proposal, frontier)
        draft = proposal.tokens[proposal.rows, proposal.cols]
        if self.acceptance is Acceptance.speculative:
            return self.speculative(state, proposal, window, ar_logits, draft)
        noise = proposal.noise if self.coupling is Coupling.gumbel else None
        target = self.scorer.coupled_sample(proposal.logits, ar_logits, self.weight, noise, proposal.temperature)
        disagree = proposal.scatter((target != draft) & (proposal.cols > frontier[proposal.rows]), False)
        stop = first_true_columns(disagree, state.width)
        return Decision(commit=window.eligible & (state.columns < stop[:, None]), tokens=proposal.tokens)

    def speculative(
        self, state: DecodeState, proposal: Proposal, window: Window, ar_logits: torch.Tensor, draft: torch.Tensor
    ) -> Decision:
        """Accept draft token x with probability min(1, t(x)/p(x)); resample the first rejection from max(0, t-p)."""
        mixed = self.scorer.mixture_logits(proposal.logits, ar_logits, self.weight).double()
        if proposal.temperature == 0:
            p = torch.nn.functional.one_hot(draft, mixed.shape[-1]).double()
            t = torch.nn.functional.one_hot(mixed.argmax(-1), mixed.shape[-1]).double()
        else:
            assert proposal.sampling_logits is not None  # a proposal at temperature > 0 keeps them
            p = torch.softmax(proposal.sampling_logits.double(), -1)
            t = torch.softmax(mixed / proposal.temperature, -1)
        counts = window.eligible.sum(-1).tolist()
        p_x, t_x = p.gather(-1, draft[:, None])[:, 0], t.gather(-1, draft[:, None])[:, 0]
        accepted = state.uniform_noise(counts) * p_x < t_x
        residual = (t - p).clamp(min=0)
        resampled = self.scorer.gumbel_argmax(residual.log(), state.gumbel_noise(counts, mixed.shape[-1]), 1.0)
        rejected = window.eligible & ~proposal.scatter(accepted, False)
        stop = first_true_columns(rejected, state.width)
        tokens = proposal.tokens.clone()
        tokens[proposal.rows, proposal.cols] = torch.where(accepted, draft, resampled)
        return Decision(commit=window.eligible & (state.columns <= stop[:, None]), tokens=tokens)


def build_apd(config: APDConfig, context: BuildContext) -> APDVerifier:
    """Factory: load ``model.ar`` and check it shares the dLLM's tokenizer."""
    spec = context.config.model.ar
    if spec is None:
        raise ConfigError(
            "model.ar",
            "the `apd` verification needs an autoregressive model, but model.ar is null",
            "set model.ar.path (e.g. embedded:ar), or compose configs/models/embedded-ar.yaml",
        )
    ar = context.load_causal_lm(spec, "model.ar")  # recorded: its weights count in the weights hash
    check_shared_tokenizer(context.dllm.tokenizer, ar.tokenizer, context.dllm.vocab_size, ar.vocab_size)
    return APDVerifier(config, ar, context.scorer)


@hookimpl
def dlm_register(registry) -> None:
    registry.add(
        "verification",
        "apd",
        APDConfig,
        build_apd,
        requires={"model.ar": "set model.ar.path (e.g. embedded:ar), or compose configs/models/embedded-ar.yaml"},
    )
