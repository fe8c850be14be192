"""The denoising loop: calls the role hooks once per step and enforces the rules no plugin may break.

Rules checked every step, whatever the plugins return: every unfinished row commits at least one token;
commits fall on eligible (masked, generated) positions only, so prompt tokens never change; revocations touch
only committed generated positions; the mask token and ids the tokenizer cannot decode are never proposed; NaN
logits stop decoding; a batch may not exceed its step budget.
"""

from __future__ import annotations

import operator
import time
from collections.abc import Iterator
from typing import Any, Callable

import pluggy
import torch

from dlm_decode.errors import DecodeError, PluginError
from dlm_decode.hookspecs import hookimpl
from dlm_decode.state import Decision, DecodeState, ForwardOutput, ForwardPlan, ModelInputs, Window


class CoreInputs:
    """Default ``dlm_model_inputs``: the plan's span of the canvas with a bidirectional mask over it."""

    @hookimpl(trylast=True)
    def dlm_model_inputs(self, state: DecodeState, window: Window, plan: ForwardPlan) -> ModelInputs:
        start, end = plan.start, plan.end
        first_key, last_key = (0, plan.key_end or end) if plan.cache is not None else (start, end)
        if (start, end, first_key, last_key) == (0, state.width, 0, state.width):  # the whole canvas: no views
            mask, input_ids, position_ids = state.full_attention, state.canvas, state.position_ids
        else:
            mask = state.full_attention[:, :, start:end, first_key:last_key]
            input_ids, position_ids = state.canvas[:, start:end], state.position_ids[:, start:end]
        if window.visible is not None:
            mask = mask & window.visible[:, None, None, first_key:last_key]
        return ModelInputs(input_ids=input_ids, position_ids=position_ids, attention_mask=mask, start=start, end=end)


class Roles:
    """Calls the role hooks of one decoder's plugin manager, turning plugin failures into named errors.

    :meth:`bind` (called once per batch) resolves each hook: one that has a single implementation and no
    wrappers is then called directly, with pluggy's argument selection and result, but without its per-call
    dispatch (a few microseconds per hook, a visible share of a tiny model's step). Hooks with several
    implementations or wrappers, and every hook while pluggy tracing is on, go through pluggy. An exception
    raised by an implementation becomes a :class:`PluginError` naming that implementation's plugin; working
    that out is left to the failure path, so a successful call costs nothing extra.

    :param manager: the decoder's plugin manager.
    :param names: role -> a label for error messages (``"verification strategy 'topk' (module)"``).
    :param direct: allow direct calls (false while ``DLM_DECODE_TRACE_PLUGINS`` traces every hook call).
    """

    def __init__(self, manager: pluggy.PluginManager, names: dict[str, str], direct: bool = True):
        self.hook = manager.hook
        self.names = names
        self.direct = direct
        self.callers: dict[str, Callable[..., Any]] = {}

    def bind(self) -> None:
        """Resolve every hook against the plugins registered now (observers may come and go between batches)."""
        self.callers = {name: self._resolve(getattr(self.hook, name)) for name in vars(self.hook)}

    def _resolve(self, caller: pluggy.HookCaller) -> Callable[..., Any]:
        impls = caller.get_hookimpls()
        if not self.direct or len(impls) > 1 or any(impl.wrapper or impl.hookwrapper for impl in impls):
            return caller
        if not impls:
            return _no_implementation
        function, argnames = impls[0].function, impls[0].argnames
        if not argnames:
            return lambda **kwargs: function()
        if len(argnames) == 1:
            (name,) = argnames
            return lambda **kwargs: function(kwargs[name])
        pick = operator.itemgetter(*argnames)  # a tuple of the arguments the implementation takes, in its order
        return lambda **kwargs: function(*pick(kwargs))

    def notify(self, hook_name: str, **kwargs: Any) -> None:
        """Call an observer hook (its results are ignored). Needs :meth:`bind`.

        :raises PluginError: when an implementation raises, naming it (see :func:`dlm_decode.plugins.hook_error`).
        """
        try:
            self.callers[hook_name](**kwargs)
        except PluginError:
            raise
        except Exception as exc:
            from dlm_decode.plugins import hook_error  # here, not at the top: dlm_decode.plugins imports this module

            raise hook_error(getattr(self.hook, hook_name), exc, self.names) from exc

    def call(self, role: str, hook_name: str, **kwargs: Any) -> Any:
        """Call a role hook bound by :meth:`bind`; a failure or a None result becomes a :class:`PluginError`.

        A failure names the implementation that raised: the role's strategy, or a wrapper around its hook
        (see :func:`dlm_decode.plugins.hook_error`).
        """
        hook = self.callers[hook_name]
        try:
            result = hook(**kwargs)
        except PluginError:
            raise
        except Exception as exc:
            from dlm_decode.plugins import hook_error  # here, not at the top: dlm_decode.plugins imports this module

            raise hook_error(getattr(self.hook, hook_name), exc, self.names, role) from exc
        if result is None:
            raise PluginError(self.names.get(role, role), hook_name, "returned None",
                              "a role hook must return its result object")
        return result


def _no_implementation(**kwargs: Any) -> None:
    return None


def forward_flags(state: DecodeState, window: Window, logits: torch.Tensor) -> list[torch.Tensor]:
    """Two bool scalars on the device: the window made a decided position eligible; the logits hold NaN (checked
    on their maximum, which ``amax`` makes NaN exactly when some logit is: no ``[B, S, V]`` bool tensor)."""
    return [(window.eligible > state.masked).any(), logits.amax().isnan()]


def decision_flags(state: DecodeState, window: Window, decision: Decision) -> list[torch.Tensor]:
    """Two bool scalars on the device, computed before the decision is applied: a commit outside the window; a
    revocation of something other than a committed generated token (a placeholder, not read, when there is no
    revocation)."""
    off_window = (decision.commit > window.eligible).any()
    revoke = decision.revoke
    bad_revoke = off_window if revoke is None else (revoke & (state.masked | ~state.generated_columns)).any()
    return [off_window, bad_revoke]


def progress_flag(commits: torch.Tensor, finished_before: torch.Tensor) -> torch.Tensor:
    """A bool scalar: every row unfinished before the step committed (``[B]`` long commits, ``[B]`` bool)."""
    return (commits + finished_before).all()  # nonzero where the row committed or was already finished


def raise_forward_errors(flags: list[bool], step: int, window_plugin: str) -> None:
    bad_window, has_nan = flags
    if bad_window:
        raise PluginError(window_plugin, "dlm_window", "made a position eligible that is not a masked generated "
                          "position (a prompt, padding or already decided column)",
                          "derive `eligible` from `state.masked`")
    if has_nan:
        raise DecodeError(f"the dLLM returned NaN logits at step {step}. fix: use float32 or bfloat16 "
                          "instead of float16, and check the checkpoint and the attention mask")


def raise_decision_errors(flags: list[bool], decision: Decision, finished: torch.Tensor, step: int,
                          plugin: str) -> None:
    off_window, bad_revoke, progressed = flags
    if off_window:
        raise PluginError(plugin, "dlm_verify", "committed a position the window did not make eligible "
                          "(a prompt, padding, already decided or out-of-window position)",
                          "restrict `commit` to `window.eligible`")
    if not progressed:
        rows = (~finished & ~decision.commit.any(-1)).nonzero().flatten().tolist()
        raise PluginError(plugin, "dlm_verify", f"committed nothing for unfinished rows {rows} at step "
                          f"{step}; decoding would never end",
                          "commit at least one eligible position per unfinished row (e.g. the most confident)")
    if bad_revoke and decision.revoke is not None:
        raise PluginError(plugin, "dlm_verify", "revoked a position that is not a committed generated token",
                          "restrict `revoke` to generated columns that are not masked")


def run_steps(roles: Roles, model: Any, state: DecodeState, max_steps: int) -> Iterator[Decision]:
    """Decode ``state`` until every row is finished, yielding each step's decision after it is applied.

    Advance it under ``torch.inference_mode()`` (see :func:`decode`); the generator does not enter the mode
    itself, which would cost an enter and an exit per step.

    :param model: has ``forward(ModelInputs, cache) -> [B, S, V] logits``.
    :param max_steps: abort with :class:`DecodeError` past this many steps.
    """
    verifier = roles.names.get("verification", "verification")
    window_plugin = roles.names.get("window", "window")
    roles.bind()
    roles.notify("dlm_generation_start", state=state)
    done = bool(state.finished.all())
    while not done:
        if state.step >= max_steps:
            unfinished = [state.first_index + row for row in (~state.finished).nonzero().flatten().tolist()]
            raise DecodeError(f"prompts {unfinished} did not finish within {max_steps} steps (step limit "
                              "`generation.max_steps`); "
                              "the strategies may be stuck (e.g. a window that never reaches the remaining masks, "
                              "or revocations that undo progress). fix: raise generation.max_steps, or check "
                              "the window and verification strategies")
        window = roles.call("window", "dlm_window", state=state)
        plan = roles.call("cache", "dlm_cache", state=state, window=window)
        inputs = roles.call("inputs", "dlm_model_inputs", state=state, window=window, plan=plan)
        logits = model.forward(inputs, plan.cache)
        early = forward_flags(state, window, logits)
        logits.index_fill_(-1, state.excluded_ids, float("-inf"))  # the mask and undecodable ids are never proposed
        forward = ForwardOutput(logits=logits, inputs=inputs)
        try:
            proposal = roles.call("proposal", "dlm_propose", state=state, forward=forward, window=window)
            decision = roles.call("verification", "dlm_verify", state=state, forward=forward, proposal=proposal,
                                  window=window)
        except PluginError:
            raise_forward_errors(torch.stack(early).tolist(), state.step, window_plugin)  # a bad window or NaN
            raise                                                                        # explains it first
        finished_before = state.finished
        late = decision_flags(state, window, decision)
        commits = state.apply(decision)
        progressed = progress_flag(commits, finished_before)
        # one host sync, of bools only (stacking mixed dtypes costs a type promotion: 8 us instead of 2 on the CPU)
        *flags, done = torch.stack([*early, *late, progressed, state.finished.all()]).tolist()
        raise_forward_errors(flags[:2], state.step - 1, window_plugin)
        raise_decision_errors(flags[2:], decision, finished_before, state.step - 1, verifier)
        roles.notify("dlm_step_end", state=state, decision=decision)
        yield decision
    roles.notify("dlm_generation_end", state=state)


def decode(roles: Roles, model: Any, state: DecodeState, max_steps: int) -> list[float]:
    """Run :func:`run_steps` to the end under ``torch.inference_mode()``.

    :return: seconds from the start to the end of each step.
    """
    with torch.inference_mode():
        started = time.perf_counter()
        return [time.perf_counter() - started for _ in run_steps(roles, model, state, max_steps)]
