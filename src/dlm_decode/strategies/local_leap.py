"""LocalLeap verification: relax the threshold near high-confidence anchors.

LocalLeap ("Accelerating Diffusion LLM Inference via Local Determinism Propagation", Kong, Zhang, Liu, Wu, Tian,
W. and Zhou, Kuaishou Klear team, arXiv 2510.07081; official code ``friedrichor/LocalLeap``) rests on two
observations the paper calls *local determinism propagation* around high-confidence anchors and *progressive
spatial consistency decay*: once a position is confidently determined, its close neighbours usually are too, even
before their own confidence reaches the usual threshold. Each step, per row, over the window's eligible positions
with the proposals' confidences ``c`` (probability of the proposed token):

1. **Anchors**: the eligible positions with ``c >= threshold`` (τ).
2. **Neighbourhood**: every column within ``radius`` (r) columns of an anchor, ``|column - anchor| <= r``, counted
   in canvas columns whatever lies between (decided tokens included); anchors are their own neighbours.
3. **Commit**: every eligible position with ``c >= τ``, every eligible neighbour with ``c >= relaxed_threshold``
   (τ_relax), and always the row's most confident eligible position (so each unfinished row progresses; that
   position is not an anchor unless its confidence reaches τ, so it widens no neighbourhood).

With ``radius = 0`` or ``relaxed_threshold = threshold`` this is exactly Fast-dLLM's ``threshold`` verification.
Rows are independent: the neighbourhoods of one row never reach another (a per-row 1-D max-pool of the anchors).
Ties for the fallback go to the leftmost position, as in ``threshold``.

*Provenance, stated plainly.* The official repository could not be fetched here and the paper's method section
could not be read (only its abstract). The rule and the defaults (τ = 0.9, τ_relax = 0.75, r = 4, with blocks of
32 for 256 generated tokens) follow a third-party mirror of what appears to be the official ``generate.py``
(``get_transfer_index`` with ``threshold``, ``relaxed_threshold``, ``radius``; repository
``ZitongWang018/dlm-seq``, ``experiments/localleap/generate.py`` at commit 1e1b143), not verified against
``friedrichor/LocalLeap`` itself nor against the paper; treat the defaults as unverified. In that code the
neighbourhood is also built over canvas columns, includes the anchors and is only used when at least one anchor
exists, exactly as above. It never lets ``relaxed_threshold`` exceed ``threshold`` in its examples; here that is
refused (a relaxed threshold above τ would *tighten* the rule near anchors, anchors included).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dlm_decode.api import Decision, Proposal, Window, check_field, check_probability, hookimpl, select_top


@dataclass
class LocalLeapConfig:
    threshold: float = 0.9
    """τ: a position whose confidence reaches it is committed and becomes an anchor."""
    relaxed_threshold: float = 0.75
    """τ_relax: the threshold inside an anchor's neighbourhood (at most τ)."""
    radius: int = 4
    """r: a column at most this many columns from an anchor is its neighbour (0: no relaxation)."""

    def __post_init__(self) -> None:
        check_probability(self.threshold, "threshold", "confidences are probabilities; 0.9 is the default")
        check_field(
            0.0 <= self.relaxed_threshold <= self.threshold,
            "relaxed_threshold",
            f"must be in [0, threshold = {self.threshold}], got {self.relaxed_threshold}",
            "the relaxed threshold applies near anchors and may only lower the bar; 0.75 is the default",
        )
        check_field(
            self.radius >= 0,
            "radius",
            f"must be >= 0, got {self.radius}",
            "the neighbourhood spans `radius` columns on each side of an anchor; 0 turns the relaxation off",
        )


def anchor_neighbourhood(anchors: torch.Tensor, radius: int) -> torch.Tensor:
    """The columns within ``radius`` columns of an anchor of their row.

    :param anchors: ``[B, N]`` bool.
    :return: ``[B, N]`` bool, true where ``|column - a| <= radius`` for some anchor ``a`` of the row.
    """
    if radius == 0:
        return anchors
    pooled = torch.nn.functional.max_pool1d(
        anchors[:, None].to(torch.float32), kernel_size=2 * radius + 1, stride=1, padding=radius
    )
    return pooled[:, 0] > 0


def local_leap_commit(
    confidence: torch.Tensor, eligible: torch.Tensor, threshold: float, relaxed: float, radius: int
) -> torch.Tensor:
    """LocalLeap's commits (see the module docstring).

    :param confidence: ``[B, N]`` float.
    :param eligible: ``[B, N]`` bool.
    :return: ``[B, N]`` bool, a subset of ``eligible``, empty only for rows without an eligible position.
    """
    anchors = eligible & (confidence >= threshold)
    near = anchor_neighbourhood(anchors, radius)
    passing = eligible & ((confidence >= threshold) | (near & (confidence >= relaxed)))
    return passing | select_top(confidence, eligible, None)


class LocalLeap:
    """The ``local_leap`` verification strategy: threshold commits, relaxed within ``radius`` of an anchor."""

    def __init__(self, config: LocalLeapConfig):
        self.threshold, self.relaxed, self.radius = config.threshold, config.relaxed_threshold, config.radius

    @hookimpl
    def dlm_verify(self, proposal: Proposal, window: Window) -> Decision:
        commit = local_leap_commit(proposal.confidence, window.eligible, self.threshold, self.relaxed, self.radius)
        return Decision(commit=commit, tokens=proposal.tokens)


@hookimpl
def dlm_register(registry) -> None:
    registry.add("verification", "local_leap", LocalLeapConfig, lambda config, context: LocalLeap(config))
