"""The denoising loop: calls the role hooks once per step and enforces the rules no plugin may break.

Rules checked every step, whatever the plugins return: every unfinished row commits at least one token;
commits fall on eligible (masked, generated) positions only, so prompt tokens never change; revocations touch
only committed generated positions; the mask token and ids the tokenizer cannot decode are never proposed; NaN
or infinite logits stop decoding; a batch may not exceed its step budget.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch

from dlm_decode.dispatch import Roles
from dlm_decode.errors import DecodeError, PluginError
from dlm_decode.selection import first_true_columns
from dlm_decode.state import Decision, DecodeState, ForwardOutput, Window


def forward_flags(state: DecodeState, window: Window, logits: torch.Tensor) -> list[torch.Tensor]:
    """Two bool scalars on the device: the window made a decided position eligible; the logits hold NaN or
    ``+inf`` (checked on their maximum, which ``amax`` makes NaN exactly when some logit is, and ``+inf`` when some
    logit is: no ``[B, S, V]`` bool tensor; a ``+inf`` logit, a float16 overflow, would make its softmax NaN and
    its proposal a silent pad token)."""
    largest = logits.amax()
    return [(window.eligible > state.masked).any(), largest.isnan() | largest.isposinf()]


def decision_flags(state: DecodeState, window: Window, decision: Decision) -> list[torch.Tensor]:
    """Two bool scalars on the device, computed before the decision is applied: a commit outside the window; a
    revocation of something other than a committed generated token of the row's current window block
    ``[window.block_start, window.block_end)`` (a placeholder, not read, when there is no revocation). For a
    block-causal model the window block lies inside the row's current model block (:func:`within_model_block`): a
    finished model block stays finished, later blocks were decided on it. Everything before a row's window block
    is therefore final, which a server streams (:func:`stable_ends`)."""
    off_window = (decision.commit > window.eligible).any()
    revoke = decision.revoke
    if revoke is None:
        return [off_window, off_window]
    columns = state.columns
    outside = (columns < window.block_start[:, None]) | (columns >= window.block_end[:, None])
    settled = state.masked | ~state.generated_columns | outside
    return [off_window, (revoke & settled).any()]


def stable_ends(state: DecodeState, window: Window, revokes: bool) -> torch.Tensor:
    """``[B]`` long, per row the column before which every generated token is decided for good after a step run
    under ``window``: the row's first mask, and for a decoder that may revoke (:attr:`Roles.revokes`) no later than
    its window block's start (revocations stay inside the current window block, whose start never moves back);
    the canvas width for a finished row."""
    ends = first_true_columns(state.masked, state.width)
    if revokes:
        ends = torch.where(state.finished, ends, torch.minimum(ends, window.block_start))
    return ends


def progress_flag(commits: torch.Tensor, finished_before: torch.Tensor) -> torch.Tensor:
    """A bool scalar: every row unfinished before the step committed (``[B]`` long commits, ``[B]`` bool)."""
    return (commits + finished_before).all()  # nonzero where the row committed or was already finished


def raise_forward_errors(flags: list[bool], step: int, window_plugin: str) -> None:
    bad_window, has_nan = flags
    if bad_window:
        raise PluginError(
            window_plugin,
            "dlm_window",
            "made a position eligible that is not a masked generated "
            "position (a prompt, padding or already decided column)",
            "derive `eligible` from `state.masked`",
        )
    if has_nan:
        raise DecodeError(
            f"the dLLM returned NaN or infinite logits at step {step}",
            fix="use float32 or bfloat16 instead of float16, and check the checkpoint and the attention mask",
        )


def raise_decision_errors(
    flags: list[bool], decision: Decision, finished: torch.Tensor, step: int, plugin: str
) -> None:
    off_window, bad_revoke, progressed = flags
    if off_window:
        raise PluginError(
            plugin,
            "dlm_verify",
            "committed a position the window did not make eligible "
            "(a prompt, padding, already decided or out-of-window position)",
            "restrict `commit` to `window.eligible`",
        )
    if not progressed:
        rows = (~finished & ~decision.commit.any(-1)).nonzero().flatten().tolist()
        raise PluginError(
            plugin,
            "dlm_verify",
            f"committed nothing for unfinished rows {rows} at step {step}; decoding would never end",
            "commit at least one eligible position per unfinished row (e.g. the most confident)",
        )
    if bad_revoke and decision.revoke is not None:
        raise PluginError(
            plugin,
            "dlm_verify",
            "revoked a position that is not a committed generated token of the row's current window block",
            "restrict `revoke` to generated columns that are not masked, inside window.block_start to window.block_end",
        )


def check_revoke_declared(decision: Decision, revokes: bool, plugin: str) -> None:
    """A decision may carry ``revoke`` only from a decoder whose verification declares ``revokes = True`` (see
    :attr:`Roles.revokes`): streaming relies on it to tell final text from text a later step may change."""
    if decision.revoke is not None and not revokes:
        raise PluginError(
            plugin,
            "dlm_verify",
            "returned a `revoke` mask, but no plugin implementing dlm_verify declares `revokes = True`",
            "set the class attribute `revokes = True` on the verification (or on the dlm_verify wrapper that revokes)",
        )


def within_model_block(state: DecodeState, window: Window) -> Window:
    """A block-causal model's limit on any window: only the row's current model block may be decided (its later
    blocks would be decided with masks in their context, which block diffusion never sees), and no forward covers
    columns past the last current block of the batch (:attr:`DecodeState.input_limit`), since no query before them
    may attend to them. A pattern with ``head_first`` makes a block's first column, while masked, the only eligible
    one."""
    start, end = state.model_block()
    eligible = window.eligible & (state.columns < end[:, None])
    if state.attention.head_first:
        head = state.columns == start[:, None]
        eligible = torch.where((head & state.masked).any(-1, keepdim=True), head & eligible, eligible)
    return Window(
        eligible=eligible,
        input_end=min(window.input_end, state.input_limit),
        block_start=torch.maximum(window.block_start, start),
        block_end=torch.minimum(window.block_end, end),
        visible=window.visible,
    )


def input_limit(state: DecodeState) -> torch.Tensor:
    """A long scalar: the largest end of an unfinished row's current model block (0 when every row finished)."""
    return state.model_block()[1].masked_fill(state.finished, 0).max()


@dataclass
class Step:
    """What one step did: its window, and its decision (already applied to the state).

    :ivar done: every row of the batch is finished.
    """

    window: Window
    decision: Decision
    done: bool


def run_step(roles: Roles, model: Any, state: DecodeState) -> Step:
    """One step of the loop on ``state`` (call ``roles.bind()`` first, under ``torch.inference_mode()``): window,
    cache plan, model inputs, forward, proposal, verification, the core's checks and :meth:`DecodeState.apply`,
    then the ``dlm_step_end`` observers. A continuous-batching server calls it with a state it regroups between
    steps (:meth:`DecodeState.regroup`).

    :param model: has ``forward(ModelInputs, cache) -> [B, S, V] logits``.
    """
    verifier, window_plugin = roles.label("verification"), roles.label("window")
    block_causal = state.attention.block_causal
    window = roles.window(state)
    if block_causal:
        window = within_model_block(state, window)
    plan = roles.cache(state, window)
    inputs = roles.model_inputs(state, window, plan)
    logits = model.forward(inputs, plan.cache)
    early = forward_flags(state, window, logits)
    logits.index_fill_(-1, state.excluded_ids, float("-inf"))  # the mask and undecodable ids are never proposed
    forward = ForwardOutput(logits=logits, inputs=inputs)
    try:
        proposal = roles.propose(state, forward, window)
        decision = roles.verify(state, forward, proposal, window)
    except PluginError:
        raise_forward_errors(torch.stack(early).tolist(), state.step, window_plugin)  # a bad window or NaN
        raise  # explains it first
    check_revoke_declared(decision, roles.revokes, verifier)
    finished_before = state.finished
    late = decision_flags(state, window, decision)
    commits = state.apply(decision)
    progressed = progress_flag(commits, finished_before)
    # one host sync; of bools only for a bidirectional model, and for a block-causal one also the next step's
    # input limit (a long: stacking mixed dtypes adds a type promotion, a cost the bools alone do not pay)
    limit = [input_limit(state)] if block_causal else []
    values = torch.stack([*early, *late, progressed, state.finished.all(), *limit]).tolist()
    if block_causal:
        state.input_limit = values.pop()
    *flags, done = values
    raise_forward_errors(flags[:2], state.step - 1, window_plugin)
    raise_decision_errors(flags[2:], decision, finished_before, state.step - 1, verifier)
    roles.step_end(state, decision)
    return Step(window=window, decision=decision, done=done)


def run_steps(roles: Roles, model: Any, state: DecodeState, max_steps: int) -> Iterator[Step]:
    """Decode ``state`` until every row is finished, yielding each :class:`Step` after its decision is applied.

    Advance it under ``torch.inference_mode()`` (see :func:`decode`); the generator does not enter the mode
    itself, which would cost an enter and an exit per step.

    :param model: has ``forward(ModelInputs, cache) -> [B, S, V] logits``.
    :param max_steps: abort with :class:`DecodeError` past this many steps.
    """
    roles.bind()
    roles.generation_start(state)
    done = bool(state.finished.all())
    while not done:
        if state.step >= max_steps:
            unfinished = [state.first_index + row for row in (~state.finished).nonzero().flatten().tolist()]
            raise DecodeError(
                f"prompts {unfinished} did not finish within {max_steps} steps (step limit "
                "`generation.max_steps`); "
                "the strategies may be stuck (e.g. a window that never reaches the remaining masks, "
                "or revocations that undo progress)",
                fix="raise generation.max_steps, or check the window and verification strategies",
            )
        step = run_step(roles, model, state)
        done = step.done
        yield step
    roles.generation_end(state)


def decode(roles: Roles, model: Any, state: DecodeState, max_steps: int) -> list[float]:
    """Run :func:`run_steps` to the end under ``torch.inference_mode()``.

    :return: seconds from the start to the end of each step.
    """
    with torch.inference_mode():
        started = time.perf_counter()
        return [time.perf_counter() - started for _ in run_steps(roles, model, state, max_steps)]
