"""The config check shared by strategies with a per-block step schedule (re-exported by :mod:`dlm_decode.api`).

Such a strategy fills a block in ``steps_per_block`` steps (LLaDA's ``steps / num_blocks``) or, when that is null,
commits ``tokens_per_step`` tokens a step; :func:`check_step_schedule` validates the pair in a config's
``__post_init__``.
"""

from __future__ import annotations

from dlm_decode.errors import check_field


def check_step_schedule(steps_per_block: int | None, tokens_per_step: int) -> None:
    """Raise :class:`~dlm_decode.errors.FieldError` naming the field unless ``steps_per_block`` is null or at least 1,
    ``tokens_per_step`` is at least 1, and ``tokens_per_step`` keeps its default 1 when ``steps_per_block`` is set
    (it would be ignored)."""
    check_field(
        steps_per_block is None or steps_per_block >= 1,
        "steps_per_block",
        f"must be >= 1 or null, got {steps_per_block}",
    )
    check_field(tokens_per_step >= 1, "tokens_per_step", f"must be >= 1, got {tokens_per_step}")
    check_field(
        steps_per_block is None or tokens_per_step == 1,
        "tokens_per_step",
        "is ignored when steps_per_block is set",
        "set only one of steps_per_block and tokens_per_step",
    )
