"""Every hook of dlm_decode, and nothing else.

A decoder is one strategy per role. Each strategy is a pluggy plugin object implementing its role hook; the
decoder builds its own :class:`pluggy.PluginManager` holding exactly the chosen strategies, so each role hook
(``firstresult=True``) returns one answer. Observers are collect-all; cross-cutting behaviour (timing, tracing,
WINO's shadow positions) uses ``wrapper=True`` implementations of the role hooks or of
:func:`dlm_model_inputs`.

All hooks are called with keyword arguments; an implementation may accept any subset of them, so a hook can
gain arguments without breaking existing plugins.

One step of the loop::

    window   = dlm_window(state)
    plan     = dlm_cache(state, window)
    inputs   = dlm_model_inputs(state, window, plan)      # built-in default; wrappers may extend it
    forward  = model(inputs, plan)                         # ForwardOutput: logits aligned to canvas columns
    proposal = dlm_propose(state, forward, window)
    decision = dlm_verify(state, forward, proposal, window)
    state.apply(decision); dlm_step_end(state, decision)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from dlm_decode.registry import StrategyRegistry
    from dlm_decode.state import Decision, DecodeState, ForwardOutput, ForwardPlan, ModelInputs, Proposal, Window

PROJECT_NAME = "dlm_decode"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

# --- discovery ---------------------------------------------------------------------------------------------


@hookspec
def dlm_register(registry: StrategyRegistry) -> None:
    """Add strategies to the registry (called once per discovery manager, on every plugin module).

    :param registry: call ``registry.add(role, name, config_cls, factory)`` for each strategy the plugin
        provides. ``factory(config, context)`` returns the plugin object implementing the role hook, given the
        validated config dataclass and a :class:`~dlm_decode.context.BuildContext` (the loaded dLLM, the whole
        config, the scoring backend, other models of the config).
    """


# --- roles (one answer each) -------------------------------------------------------------------------------


@hookspec(firstresult=True)
def dlm_window(state: DecodeState) -> Window:
    """Choose which masked positions may be decided this step and how much of the canvas the model sees.

    :param state: the decoding state; ``state.canvas`` is ``[B, N]``.
    :return: a :class:`~dlm_decode.state.Window`: ``eligible`` ``[B, N]`` bool (a subset of the masked generated
        positions of unfinished rows), ``input_end`` (the model sees columns ``[0, input_end)``), optional
        ``visible`` ``[B, N]`` bool (per-row keys the model may attend to), the per-row current block
        ``block_start`` / ``block_end`` ``[B]`` long, and optional ``width``, a host bound on each row's eligible
        span (the output head then runs at that many columns per row).
    """


@hookspec(firstresult=True)
def dlm_cache(state: DecodeState, window: Window) -> ForwardPlan:
    """Decide which columns the forward recomputes and which keys/values it reuses.

    :return: a :class:`~dlm_decode.state.ForwardPlan` whose query span ``[start, end)`` covers every eligible
        column of ``window``.
    """


@hookspec(firstresult=True)
def dlm_model_inputs(state: DecodeState, window: Window, plan: ForwardPlan) -> ModelInputs:
    """Build the model inputs for the plan's span.

    The core registers a default implementation (ids, position ids, and a 4-D attention mask over the span, from
    the model's attention pattern). Wrappers may extend the result: append positions after the span with their own
    mask rows (WINO's shadow block), or append rows after the batch (FreeDave's drafted canvases: ``[B * D, S]``,
    rows ``[B * j, B * (j + 1))`` holding the wrapper's canvas ``j``). Rows ``[0, B)`` and columns ``[0, end - start)``
    stay the plain canvas: proposals and the core's checks read only those. ``outputs`` (``[B, W]`` query indices,
    or None for all) names the queries whose logits the step reads: a wrapper that reads others appends them (WINO's
    shadow slots), or calls ``inputs.reading_all()``.

    :return: :class:`~dlm_decode.state.ModelInputs` with ``input_ids`` ``[B, S]``, ``position_ids`` ``[B, S]``,
        ``attention_mask`` ``[B, 1, S, K]`` bool.
    """


@hookspec(firstresult=True)
def dlm_propose(state: DecodeState, forward: ForwardOutput, window: Window) -> Proposal:
    """Propose a token and its scores for every eligible position.

    :param forward: read its logits with ``forward.at(rows, cols)`` / ``forward.columns(first, last)`` (canvas
        columns) and ``forward.extra(rows, slots)`` (a wrapper's extra positions): they are computed at
        ``ModelInputs.outputs`` only.
    :return: a :class:`~dlm_decode.state.Proposal` with ``tokens`` and ``confidence`` ``[B, N]``, meaningful where
        ``window.eligible``; sampling proposals keep their Gumbel noise for later coupling.
    """


@hookspec(firstresult=True)
def dlm_verify(state: DecodeState, forward: ForwardOutput, proposal: Proposal, window: Window) -> Decision:
    """Decide which proposals to commit and which committed tokens to revoke.

    :return: a :class:`~dlm_decode.state.Decision`: ``commit`` ``[B, N]`` bool (a subset of ``window.eligible``,
        at least one per unfinished row), ``tokens`` ``[B, N]`` long (read where ``commit``), optional
        ``revoke`` and ``edit`` ``[B, N]`` bool (committed generated positions only; of the row's current model
        block for a block-causal model; a revocation inside the row's current window block; either from a plugin
        that declares ``revokes = True``), optional ``hold`` ``[B]`` bool (block-causal models: the row's block
        stays current although it has no mask left; such a row's next step may commit nothing), and on a noise
        canvas (a uniform-noise model, ``state.noise_vocab`` set) optional ``redraw`` ``[B, N]`` bool (eligible
        undecided positions whose token is rewritten, undecided still; a row that redraws need not commit; no
        revoke, edit or hold there). The core checks these contracts and raises
        :class:`~dlm_decode.errors.PluginError` naming the plugin when one is broken.
    """


# --- observers (every implementation is called) --------------------------------------------------------------


@hookspec
def dlm_generation_start(state: DecodeState) -> None:
    """Called once per batch after its canvas is built, before the first step; per-batch plugin state belongs
    in ``state.memory(plugin, create)``."""


@hookspec
def dlm_step_end(state: DecodeState, decision: Decision) -> None:
    """Called after every step, once the decision has been applied to ``state``."""


@hookspec
def dlm_generation_end(state: DecodeState) -> None:
    """Called once per batch when every row has finished."""
