"""The denoising loop: calls the role hooks once per step and enforces the rules no plugin may break.

Rules checked every step, whatever the plugins return: every unfinished row commits at least one token, except
that a row whose block was held open (:attr:`~dlm_decode.state.Decision.hold`) may instead edit or end its hold;
commits fall on eligible (masked, generated) positions only, so prompt tokens never change; revocations and edits
touch only committed generated positions (of the row's current model block, for a block-causal model), and only a
block-causal model's blocks are held; the mask token and ids the tokenizer cannot decode are never proposed; NaN or
infinite logits stop decoding; a batch may not exceed its step budget.

On a noise canvas (a uniform-noise model, :attr:`~dlm_decode.state.DecodeState.noise_vocab`) "undecided" replaces
"masked": undecided positions hold noise tokens, there is no mask token to exclude, a decision may also *redraw*
eligible undecided positions (rewrite their tokens without deciding them), and every unfinished row commits or
redraws at least one position per step (the step budget still bounds a sampler that never stops); revocations, edits
and holds are refused there, and a redraw on a mask canvas too. Rows that enter a new block get its noise from their
own generators after the step's host synchronisation.
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
    """Three bool scalars on the device, computed before the decision is applied: a commit outside the window; a
    revocation or an edit of something other than a committed generated token (a filled one included), of the
    row's current model block for a block-causal model, a hold on a bidirectional model, or any of them on a noise
    canvas, or a revocation outside the row's current window block ``[window.block_start, window.block_end)``; a
    redraw outside the window, or any redraw on a mask canvas (placeholders, not read, when the decision neither
    revokes, edits, holds nor redraws). Everything before a row's window block is therefore never revoked, which
    :func:`stable_ends` relies on."""
    off_window = (decision.commit > window.eligible).any()
    redraw = decision.redraw
    bad_redraw = off_window
    if redraw is not None:
        bad_redraw = redraw.any() if state.noise_vocab is None else (redraw > window.eligible).any()
    changes = [change for change in (decision.revoke, decision.edit) if change is not None]
    if not changes and decision.hold is None:
        return [off_window, off_window, bad_redraw]
    if state.noise_vocab is not None:  # a noise canvas revokes, edits and holds nothing
        held = [] if decision.hold is None else [decision.hold]
        return [off_window, torch.stack([change.any() for change in (*changes, *held)]).any(), bad_redraw]
    settled = state.masked | state.filled | ~state.generated_columns
    if state.attention.block_causal:  # a finished block stays finished: later blocks were decided on it
        start, end = state.model_block()
        settled = settled | (state.columns < start[:, None]) | (state.columns >= end[:, None])
    bad = [(change & settled).any() for change in changes]
    if decision.revoke is not None:
        columns = state.columns
        outside = (columns < window.block_start[:, None]) | (columns >= window.block_end[:, None])
        bad.append((decision.revoke & outside).any())
    if decision.hold is not None and not state.attention.block_causal:
        bad.append(decision.hold.any())
    no_change = torch.zeros((), dtype=torch.bool, device=off_window.device)
    return [off_window, torch.stack(bad).any() if bad else no_change, bad_redraw]


def progress_flag(
    commits: torch.Tensor, finished_before: torch.Tensor, held_before: torch.Tensor, decision: Decision
) -> torch.Tensor:
    """A bool scalar: every row unfinished before the step committed, redrew, or had its block held (a post-step,
    which may edit or end the hold) (``[B]`` long commits, ``[B]`` bool, ``[B]`` bool)."""
    if decision.redraw is not None:
        commits = commits + decision.redraw.sum(-1)
    return (commits + finished_before + held_before).all()  # nonzero where the row progressed or needs not


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
    off_window, bad_revoke, bad_redraw, progressed = flags
    if off_window:
        raise PluginError(
            plugin,
            "dlm_verify",
            "committed a position the window did not make eligible "
            "(a prompt, padding, already decided or out-of-window position)",
            "restrict `commit` to `window.eligible`",
        )
    if bad_redraw and decision.redraw is not None:
        raise PluginError(
            plugin,
            "dlm_verify",
            "redrew a position outside the window's eligible undecided positions, or redrew on a mask canvas "
            "(only a uniform-noise model's undecided positions hold tokens)",
            "restrict `redraw` to `window.eligible`, and return it only when `state.noise_vocab` is set",
        )
    if not progressed:
        moved = decision.commit if decision.redraw is None else decision.commit | decision.redraw
        rows = (~finished & ~moved.any(-1)).nonzero().flatten().tolist()
        raise PluginError(
            plugin,
            "dlm_verify",
            f"committed nothing for unfinished rows {rows} at step {step}; decoding would never end",
            "commit at least one eligible position per unfinished row (e.g. the most confident)",
        )
    changes = [name for name, change in (("revoked", decision.revoke), ("edited", decision.edit)) if change is not None]
    if bad_revoke and (changes or decision.hold is not None):
        raise PluginError(
            plugin,
            "dlm_verify",
            f"{' or '.join(changes)} a position that is not a committed generated token (of the row's current "
            "model block, for a block-causal model; of its current window block, for a revocation), or held a "
            "block of a bidirectional model, or did so on a noise canvas"
            if changes
            else "held a row's block open on a bidirectional model (only a block-causal model's blocks are held)",
            "restrict `revoke` and `edit` to generated columns that are neither masked nor filled, inside "
            "window.block_start to window.block_end (state.model_block() for a block-causal model); hold only "
            "block-causal models' blocks",
        )


def check_revoke_declared(decision: Decision, revokes: bool, plugin: str) -> None:
    """A decision may carry ``revoke`` or ``edit`` only from a decoder whose verification (or a wrapper of
    ``dlm_verify``) declares ``revokes = True`` (:attr:`Roles.revokes`): streaming relies on it to tell final text
    from text a later step may change."""
    if (decision.revoke is not None or decision.edit is not None) and not revokes:
        raise PluginError(
            plugin,
            "dlm_verify",
            "returned a `revoke` or `edit` mask, but no plugin implementing dlm_verify declares `revokes = True`",
            "set the class attribute `revokes = True` on the verification (or on the dlm_verify wrapper that "
            "revokes or edits)",
        )


def stable_ends(state: DecodeState, window: Window, revokes: bool) -> torch.Tensor:
    """``[B]`` long, per row the column before which every generated token is decided for good after a step run
    under ``window``: the row's first undecided column; for a decoder that may revoke or edit (:attr:`Roles.revokes`)
    no later than its window block's start (revocations stay in the current window block, whose start never moves
    back) and, on a block-causal model, its model block's start (edits stay in the current model block); the
    canvas width for a finished row."""
    ends = first_true_columns(state.masked, state.width)
    if revokes:
        limit = window.block_start
        if state.attention.block_causal:
            limit = torch.minimum(limit, state.model_block()[0])
        ends = torch.where(state.finished, ends, torch.minimum(ends, limit))
    return ends


def raise_missed_columns(roles: Roles, step: int) -> None:
    raise PluginError(
        f"{roles.label('proposal')} or {roles.label('verification')}",
        "dlm_propose/dlm_verify",
        f"read the logits of a column the forward did not compute at step {step} (the output head runs at "
        "ModelInputs.outputs only: the window's eligible span, plus what wrappers add)",
        "declare the columns the strategy reads: wrap dlm_model_inputs and append their queries to `outputs` "
        "(or set it to None), or give the window no `width`",
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
    block_start, block_end = torch.maximum(window.block_start, start), torch.minimum(window.block_end, end)
    if state.holding:  # a held row's window is its held block, with nothing eligible (its masks come later)
        block_start, block_end = torch.where(state.held, start, block_start), torch.where(state.held, end, block_end)
    return Window(
        eligible=eligible,
        input_end=min(window.input_end, state.input_limit),
        block_start=block_start,
        block_end=block_end,
        visible=window.visible,
        width=window.width,
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

    :param model: has ``forward(ModelInputs, cache) -> [B, S, V] logits``; with a true ``selects_outputs``
        attribute, ``[B, W, V]`` logits at ``ModelInputs.outputs`` when they are given.
    """
    verifier, window_plugin = roles.label("verification"), roles.label("window")
    block_causal, noise = state.attention.block_causal, state.noise_vocab is not None
    selects_outputs = getattr(model, "selects_outputs", False)
    window = roles.window(state)
    if block_causal:
        window = within_model_block(state, window)
    plan = roles.cache(state, window)
    inputs = roles.model_inputs(state, window, plan)
    logits = model.forward(inputs, plan.cache)  # at inputs.outputs only, for a model that selects them
    early = forward_flags(state, window, logits)
    logits.index_fill_(-1, state.excluded_ids, float("-inf"))  # the mask and undecodable ids are never proposed
    forward = ForwardOutput(logits=logits, inputs=inputs, outputs=inputs.outputs if selects_outputs else None)
    try:
        proposal = roles.propose(state, forward, window)
        decision = roles.verify(state, forward, proposal, window)
    except PluginError:
        raise_forward_errors(torch.stack(early).tolist(), state.step, window_plugin)  # a bad window or NaN
        raise  # explains it first
    check_revoke_declared(decision, roles.revokes, verifier)
    finished_before, held_before = state.finished, state.held
    late = decision_flags(state, window, decision)
    commits = state.apply(decision)
    progressed = progress_flag(commits, finished_before, held_before, decision)
    # one host sync; of bools only for a bidirectional model, and for a block-causal one also the next step's
    # input limit (a long: stacking mixed dtypes adds a type promotion, a cost the bools alone do not pay); on
    # a noise canvas also the [B] rows that entered a block, whose noise is drawn below
    limit = [input_limit(state)] if block_causal else []
    missed = forward.missed()
    synced = torch.stack([*early, *late, progressed, state.finished.all(), *missed, *limit])
    if noise:
        assert state.entered is not None  # set by apply on a noise canvas
        synced = torch.cat([synced, state.entered])
    values = synced.tolist()
    entered = [row for row, flag in enumerate(values[-state.batch_size :]) if flag] if noise else []
    if noise:
        del values[-state.batch_size :]
    if block_causal:
        state.input_limit = values.pop()
    if missed and values.pop():
        raise_missed_columns(roles, state.step - 1)
    *flags, done = values
    raise_forward_errors(flags[:2], state.step - 1, window_plugin)
    raise_decision_errors(flags[2:], decision, finished_before | held_before, state.step - 1, verifier)
    if entered:
        state.fill_noise(entered)
    roles.step_end(state, decision)
    return Step(window=window, decision=decision, done=done)


def run_steps(roles: Roles, model: Any, state: DecodeState, max_steps: int) -> Iterator[Step]:
    """Decode ``state`` until every row is finished, yielding each :class:`Step` after its decision is applied.

    Advance it under ``torch.inference_mode()`` (see :func:`decode`); the generator does not enter the mode
    itself, which would cost an enter and an exit per step.

    :param model: as for :func:`run_step`.
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
