"""AUP, Accuracy Under Parallelism (as defined for the d3LLM leaderboard, hao-ai-lab).

For one method on one task, with points ``(rho_i, y_i)`` = (tokens per forward, accuracy in %) sorted by rho:
keep the points with ``y_i >= y_1 - 5`` (``y_1`` at the lowest rho), weight ``W(y) = min(exp(-alpha (1 -
y / y_max)), 1)`` with ``alpha = 3`` and ``y_max`` the best accuracy of *any* method on the task, and sum
``rho_1 y_1 + sum_{i>=2} (rho_i - rho_{i-1}) (y_i W(y_i) + y_{i-1} W(y_{i-1})) / 2``. A single point scores
``rho y``; an AR model (one token per forward) scores its accuracy.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

ALPHA = 3.0
DROP = 5.0


def aup(points: Sequence[tuple[float, float]], y_max: float, alpha: float = ALPHA) -> float:
    """AUP of ``points`` = ``[(tokens_per_forward, accuracy_percent), ...]`` against the task's best ``y_max``."""
    if not points:
        raise ValueError("AUP needs at least one (tokens per forward, accuracy) point")
    ordered = sorted(points)
    first_y = ordered[0][1]
    kept = [(rho, y) for rho, y in ordered if y >= first_y - DROP]

    def weighted(y: float) -> float:
        return y * min(math.exp(-alpha * (1 - y / y_max)), 1.0) if y_max > 0 else 0.0

    total = kept[0][0] * kept[0][1]
    for (rho0, y0), (rho1, y1) in zip(kept, kept[1:]):
        total += 0.5 * (rho1 - rho0) * (weighted(y1) + weighted(y0))
    return total
