"""One decoder's plugin manager and how the loop calls it: the chosen strategy per role, the core's default model
inputs, typed calls of the hooks, and plugin failures turned into errors that name the plugin.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Sequence
from typing import Any

import pluggy
import torch

from dlm_decode.errors import PluginError, StrategyError
from dlm_decode.hookspecs import hookimpl
from dlm_decode.plugins import check_pending, env_switch, new_manager, register, registered_name
from dlm_decode.registry import ROLE_HOOKS, StrategySpec
from dlm_decode.selection import first_true_columns
from dlm_decode.state import Decision, DecodeState, ForwardOutput, ForwardPlan, ModelInputs, Proposal, Window

#: Environment switch: compute the output head at every input column (``ModelInputs.outputs`` None), as before
#: the head was computed at the columns a step reads only; read when a decoder is built.
FULL_LOGITS_ENV = "DLM_DECODE_FULL_LOGITS"


def output_queries(window: Window, start: int, end: int) -> torch.Tensor | None:
    """``[B, W]`` long, per row the ``W = window.width`` consecutive queries of ``[start, end)`` from its first
    eligible column (moved back to fit before ``end``), which hold all its eligible columns; None when the window
    has no width or the span is no wider."""
    width = window.width
    if width is None or width >= end - start:
        return None
    first = first_true_columns(window.eligible)  # [B]; 0 for a row with none (it reads nothing)
    low = first.clamp(start, end - width) - start
    return low[:, None] + torch.arange(width, device=low.device)


class CoreInputs:
    """Default ``dlm_model_inputs``: the plan's span of the canvas with a bidirectional mask over it, and the
    queries whose logits the step reads (:func:`output_queries`; every query with ``full_logits``).

    :param full_logits: leave ``outputs`` None (None: read :data:`FULL_LOGITS_ENV`).
    """

    def __init__(self, full_logits: bool | None = None):
        self.full_logits = env_switch(FULL_LOGITS_ENV) if full_logits is None else full_logits

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
        outputs = None if self.full_logits else output_queries(window, start, end)
        return ModelInputs(
            input_ids=input_ids, position_ids=position_ids, attention_mask=mask, start=start, end=end, outputs=outputs
        )


def decoder_manager(
    strategies: dict[str, tuple[StrategySpec, object]], extra: Sequence[object] = ()
) -> pluggy.PluginManager:
    """A fresh manager holding one strategy object per role plus the core defaults and ``extra`` observers.

    Each strategy object is registered as ``<role>:<strategy name>`` (:func:`hook_error` relies on this).

    :raises PluginError: when a strategy object does not implement its role hook, or implements another
        role's hook (which would make the role ambiguous); when a strategy or observer implements a hook that
        does not exist, or asks a hook for an argument it does not pass.
    """
    manager = new_manager()
    manager.register(CoreInputs(), name="core.inputs")
    for role, (spec, plugin) in strategies.items():
        register(manager, plugin, f"{role}:{spec.name}", spec.label)
        implemented = {
            hook
            for hook in ROLE_HOOKS.values()
            for impl in getattr(manager.hook, hook).get_hookimpls()
            if impl.plugin is plugin and not impl.wrapper and not impl.hookwrapper
        }
        if implemented != {ROLE_HOOKS[role]}:
            raise PluginError(
                spec.label,
                ROLE_HOOKS[role],
                f"a {role} strategy must implement exactly `{ROLE_HOOKS[role]}` among the role hooks, "
                f"but implements {sorted(implemented) or 'none'}",
                "implement the role hook as a method marked with @dlm_decode.api.hookimpl; use wrapper=True to "
                "extend another role",
            )
    for observer in extra:
        register(manager, observer)
    check_pending(manager)
    return manager


class Roles:
    """Calls the hooks of one decoder's plugin manager, one typed method per hook, turning plugin failures into
    errors that name the plugin.

    :meth:`bind` (called once per batch) resolves each hook: one that has a single implementation and no
    wrappers is then called directly, with pluggy's argument selection and result, but without its per-call
    dispatch (a few microseconds per hook, a visible share of a tiny model's step). Hooks with several
    implementations or wrappers, and every hook while pluggy tracing is on, go through pluggy. An exception
    raised by an implementation becomes a :class:`PluginError` naming that implementation's plugin
    (:func:`hook_error`); working that out is left to the failure path, so a successful call costs nothing extra.

    :param manager: the decoder's plugin manager (:func:`decoder_manager`).
    :param strategies: role -> the spec of the decoder's strategy for it (named in errors).
    :param direct: allow direct calls (false while ``DLM_DECODE_TRACE_PLUGINS`` traces every hook call).
    """

    def __init__(self, manager: pluggy.PluginManager, strategies: dict[str, StrategySpec], direct: bool = True):
        self.hook = manager.hook
        self.labels = {role: spec.label for role, spec in strategies.items()}
        self.direct = direct
        self.callers: dict[str, Callable[..., Any]] = {}
        #: Whether some plugin implementing ``dlm_verify`` (the verification or a wrapper of it) declares
        #: ``revokes = True`` (set by :meth:`bind`): only such a decoder may return a ``revoke`` or an ``edit``
        #: mask, i.e. change tokens it decided before.
        self.revokes = False

    def label(self, role: str) -> str:
        """The strategy of ``role`` as errors name it (the role itself for the core's model inputs)."""
        return self.labels.get(role, role)

    def bind(self) -> None:
        """Resolve every hook against the plugins registered now (observers may come and go between batches)."""
        self.callers = {name: self._resolve(getattr(self.hook, name)) for name in vars(self.hook)}
        self.revokes = any(getattr(impl.plugin, "revokes", False) for impl in self.hook.dlm_verify.get_hookimpls())

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

    # --- the role hooks: one result each, never None ---------------------------------------------------------

    def window(self, state: DecodeState) -> Window:
        return self._call("window", "dlm_window", state=state)

    def cache(self, state: DecodeState, window: Window) -> ForwardPlan:
        return self._call("cache", "dlm_cache", state=state, window=window)

    def model_inputs(self, state: DecodeState, window: Window, plan: ForwardPlan) -> ModelInputs:
        return self._call("inputs", "dlm_model_inputs", state=state, window=window, plan=plan)

    def propose(self, state: DecodeState, forward: ForwardOutput, window: Window) -> Proposal:
        return self._call("proposal", "dlm_propose", state=state, forward=forward, window=window)

    def verify(self, state: DecodeState, forward: ForwardOutput, proposal: Proposal, window: Window) -> Decision:
        return self._call("verification", "dlm_verify", state=state, forward=forward, proposal=proposal, window=window)

    # --- the observers ---------------------------------------------------------------------------------------

    def generation_start(self, state: DecodeState) -> None:
        self._notify("dlm_generation_start", state=state)

    def step_end(self, state: DecodeState, decision: Decision) -> None:
        self._notify("dlm_step_end", state=state, decision=decision)

    def generation_end(self, state: DecodeState) -> None:
        self._notify("dlm_generation_end", state=state)

    def _notify(self, hook_name: str, **kwargs: Any) -> None:
        """Call an observer hook (its results are ignored). Needs :meth:`bind`."""
        try:
            self.callers[hook_name](**kwargs)
        except PluginError:
            raise
        except Exception as exc:
            raise hook_error(getattr(self.hook, hook_name), exc, self.labels) from exc

    def _call(self, role: str, hook_name: str, **kwargs: Any) -> Any:
        """Call a role hook bound by :meth:`bind`; a failure or a None result becomes a :class:`PluginError`
        naming the implementation that raised: the role's strategy, or a wrapper around its hook."""
        try:
            result = self.callers[hook_name](**kwargs)
        except PluginError:
            raise
        except Exception as exc:
            raise hook_error(getattr(self.hook, hook_name), exc, self.labels) from exc
        if result is None:
            raise PluginError(self.label(role), hook_name, "returned None", "a role hook must return its result object")
        return result


def _no_implementation(**kwargs: Any) -> None:
    return None


def hook_error(caller: pluggy.HookCaller, exc: Exception, role_labels: dict[str, str]) -> PluginError:
    """The :class:`PluginError` for ``exc``, raised calling the hook of ``caller``, naming the implementation
    that raised it (for :class:`Roles`; called only on failure).

    The culprit is the implementation owning the innermost traceback frame among the hook's implementations:
    a wrapper raising its own exception is blamed, while an exception raised by the wrapped implementation
    and merely passed on through a wrapper's ``yield`` is blamed on that implementation. A frame whose code
    several implementations share (functions wrapped by one decorator) names none of them. When no frame names
    an implementation (pluggy itself raised, e.g. for a wrapper that never yields), a hook's only implementation
    is blamed, and with several the error lists them all.

    :param role_labels: role -> label of the decoder's strategy for that role, whose plugin
        :func:`decoder_manager` registers as ``<role>:<strategy name>``; a failure of a strategy points at its
        config section.
    """
    impls = caller.get_hookimpls()
    owners: dict[Any, list[pluggy.HookImpl]] = {}
    for impl in impls:
        owners.setdefault(getattr(impl.function, "__code__", None), []).append(impl)
    culprit = impls[0] if len(impls) == 1 else None
    traceback = exc.__traceback__
    while traceback is not None:
        owner = owners.get(traceback.tb_frame.f_code, ())
        culprit = owner[0] if len(owner) == 1 else culprit
        traceback = traceback.tb_next

    def strategy_role(impl: pluggy.HookImpl) -> str | None:
        """The role of the decoder's strategy that ``impl`` belongs to, wrappers of other hooks included."""
        impl_role, colon, _ = impl.plugin_name.partition(":")
        return impl_role if colon and impl_role in role_labels else None

    def label(impl: pluggy.HookImpl) -> str:
        role = strategy_role(impl)
        if role is not None:  # a strategy's own wrapper of another hook is the strategy
            return role_labels[role]
        name = registered_name(impl)
        return f"{name} (a wrapper)" if impl.wrapper or impl.hookwrapper else name

    given = exc.fix if isinstance(exc, StrategyError) else None
    problem = exc.message if isinstance(exc, StrategyError) else f"raised {type(exc).__name__}: {exc}"
    if culprit is None:
        names = ", ".join(label(impl) for impl in impls) or "no registered implementation"
        return PluginError(
            f"one of {names}",
            caller.name,
            problem,
            "see the traceback above for the implementation that raised, and fix or remove its plugin",
        )
    if given is not None:
        fix = given
    elif strategy_role(culprit) is not None:
        fix = f"check the parameters of `decoder.{strategy_role(culprit)}`, or report the bug to the plugin's authors"
    else:
        fix = "fix the plugin, or remove it (observers are passed to the Decoder as `observers=`)"
    return PluginError(label(culprit), caller.name, problem, fix)
