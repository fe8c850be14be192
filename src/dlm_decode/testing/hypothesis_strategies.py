"""Hypothesis strategies for testing decoders and plugins: small, bounded, NaN-free.

* :func:`logits` -- ``[K, V]`` float32 logit tensors over a small vocabulary.
* :func:`prompts` -- lists of short prompts for the toy model.
* :data:`windows`, :data:`proposals`, :data:`verifications` -- override lists choosing one built-in strategy
  of a role with random parameters; ``st.tuples(windows, proposals, verifications)`` composes a decoder.
"""

from __future__ import annotations

import torch
from hypothesis import strategies as st


@st.composite
def logits(
    draw,
    rows: tuple[int, int] = (1, 6),
    vocab: tuple[int, int] = (2, 8),
    bound: float = 6.0,
    allow_neginf: bool = False,
) -> torch.Tensor:
    """A ``[K, V]`` float32 tensor with entries in ``[-bound, bound]`` (and, optionally, some ``-inf``; every row
    keeps at least one finite entry)."""
    k = draw(st.integers(*rows))
    v = draw(st.integers(*vocab))
    values = draw(st.lists(st.floats(-bound, bound, allow_nan=False), min_size=k * v, max_size=k * v))
    out = torch.tensor(values, dtype=torch.float32).reshape(k, v)
    if allow_neginf:
        hidden = torch.tensor(draw(st.lists(st.booleans(), min_size=k * v, max_size=k * v))).reshape(k, v)
        hidden[torch.arange(k), out.argmax(-1)] = False
        out = out.masked_fill(hidden, float("-inf"))
    return out


def prompts(max_prompts: int = 5, max_length: int = 9) -> st.SearchStrategy[list[str]]:
    """Lists of non-empty prompts over a small alphabet."""
    return st.lists(st.text(alphabet="abcdefgh", min_size=1, max_size=max_length), min_size=1, max_size=max_prompts)


def _null(value) -> str:
    return "null" if value is None else str(value)


windows = st.one_of(
    st.just(["decoder.window=full"]),
    st.integers(1, 9).map(lambda n: ["decoder.window=blocks", f"decoder.window.size={n}"]),
    st.sampled_from([None, 1, 3, 8]).map(
        lambda m: ["decoder.window=lookahead", f"decoder.window.max_lookahead={_null(m)}"]
    ),
)
proposals = st.one_of(
    st.just(["decoder.proposal=greedy"]),
    st.tuples(st.floats(0.2, 2.0), st.sampled_from([None, 3]), st.sampled_from([None, 0.8])).map(
        lambda t: [
            "decoder.proposal=sample",
            f"decoder.proposal.temperature={t[0]}",
            f"decoder.proposal.top_k={_null(t[1])}",
            f"decoder.proposal.top_p={_null(t[2])}",
        ]
    ),
)
verifications = st.one_of(
    st.tuples(st.sampled_from(["confidence", "margin", "entropy", "random"]), st.integers(1, 5)).map(
        lambda t: [
            "decoder.verification=topk",
            f"decoder.verification.score={t[0]}",
            f"decoder.verification.tokens_per_step={t[1]}",
        ]
    ),
    st.integers(1, 4).map(lambda k: ["decoder.verification=left_to_right", f"decoder.verification.k={k}"]),
    st.floats(0.0, 1.0).map(lambda t: ["decoder.verification=threshold", f"decoder.verification.threshold={t}"]),
    st.floats(0.1, 4.0).map(lambda f: ["decoder.verification=factor", f"decoder.verification.factor={f}"]),
)
