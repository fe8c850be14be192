"""One decoder's plugin manager (dispatch.py): a strategy must implement its role's hook, hooks and observers must
exist and take arguments their hooks pass, and a hook raising while a decoder runs is reported as a PluginError
naming the implementation that raised (a strategy, its wrapper, an observer), never raw. Also the values plugins
hold through the state (per-batch memory, row statistics) and the build context."""

from __future__ import annotations

import functools

import pytest
import torch

from dlm_decode import PluginError
from dlm_decode.api import StrategyError, first_true_columns, hookimpl
from dlm_decode.testing.toy import ToyDiffusionLM

from helpers import strategy_decoder, toy_decoder


class _MisspeltArgument:
    @hookimpl
    def dlm_verify(self, proposal, windows):
        pass


class _MisspeltObserver:
    @hookimpl
    def dlm_step_ends(self, state, decision):
        pass


def test_an_observer_with_a_misspelt_hook_is_named():
    with pytest.raises(
        PluginError,
        match=r"(?s)_MisspeltObserver object in dlm_step_ends: implements "
        r"`dlm_step_ends`.*fix: rename it to `dlm_step_end`",
    ):
        toy_decoder(observers=[_MisspeltObserver()])


class _FailingObserver:
    @hookimpl
    def dlm_step_end(self, state, decision):
        raise KeyError("observer failed")


class _QuietObserver:
    @hookimpl
    def dlm_step_end(self, state, decision):
        pass


@pytest.mark.parametrize("others", [0, 1], ids=["alone", "beside-another-observer"])
def test_an_observer_raising_is_named(others):
    observers = [_QuietObserver()] * others + [_FailingObserver()]
    with pytest.raises(
        PluginError,
        match=r"(?s)plugin test_dispatch._FailingObserver object in dlm_step_end: "
        r"raised KeyError: 'observer failed'.*fix",
    ) as caught:
        toy_decoder(observers=observers).generate(["ab"])
    assert isinstance(caught.value.__cause__, KeyError)


def _logged(function):
    """A decorator: every function it wraps runs the same code object (``inner``)."""

    @functools.wraps(function)
    def inner(*args, **kwargs):
        return function(*args, **kwargs)

    return inner


class _DecoratedFailing:
    @hookimpl
    @_logged
    def dlm_step_end(self, state, decision):
        raise KeyError("decorated observer failed")


class _DecoratedQuiet:
    @hookimpl
    @_logged
    def dlm_step_end(self, state, decision):
        pass


def test_observers_sharing_a_decorator_are_listed_not_one_blamed_at_random():
    with pytest.raises(PluginError, match=r"plugin one of .* object, .* object in dlm_step_end") as caught:
        toy_decoder(observers=[_DecoratedQuiet(), _DecoratedFailing()]).generate(["ab"])
    assert "_DecoratedQuiet" in str(caught.value) and "_DecoratedFailing" in str(caught.value)


class _RaisingWrapper:
    @hookimpl(wrapper=True)
    def dlm_verify(self):
        yield
        raise RuntimeError("bug in the wrapper")


def test_a_raising_wrapper_is_blamed_not_the_strategy():
    with pytest.raises(
        PluginError,
        match=r"(?s)plugin test_dispatch._RaisingWrapper object \(a wrapper\) in "
        r"dlm_verify: raised RuntimeError: bug in the wrapper",
    ) as caught:
        toy_decoder(observers=[_RaisingWrapper()]).generate(["ab"])
    assert "verification strategy" not in str(caught.value)


class _Raiser:
    @hookimpl
    def dlm_verify(self, proposal, window):
        raise ZeroDivisionError("inside verify")


class _PassingWrapper:
    @hookimpl(wrapper=True)
    def dlm_verify(self):
        return (yield)


@pytest.mark.parametrize("wrapped", [False, True], ids=["direct", "under-a-wrapper"])
def test_a_raising_strategy_is_blamed_even_under_a_wrapper(wrapped):
    decoder = strategy_decoder(
        "verification",
        "raiser",
        lambda config, context: _Raiser(),
        plugin_name="tests.raiser_plugin",
        observers=[_PassingWrapper()] if wrapped else [],
    )
    with pytest.raises(
        PluginError,
        match=r"(?s)^plugin tests.raiser_plugin \(verification strategy 'raiser'\) in "
        r"dlm_verify: raised ZeroDivisionError: inside verify.*"
        r"fix: check the parameters of `decoder.verification`",
    ):
        decoder.generate(["ab"])


class _WrapperThatNeverYields:
    @hookimpl(wrapper=True)
    def dlm_verify(self):
        return
        yield  # a generator that stops before yielding: pluggy, not this code, raises


def test_an_error_no_implementation_raised_lists_the_hooks_implementations():
    with pytest.raises(
        PluginError,
        match=r"(?s)^plugin one of .*_WrapperThatNeverYields object \(a wrapper\).*"
        r"in dlm_verify: raised RuntimeError",
    ) as caught:
        toy_decoder(observers=[_WrapperThatNeverYields()]).generate(["ab"])
    assert "(verification strategy 'topk')" in str(caught.value)


class _WrongRole:
    @hookimpl
    def dlm_propose(self, state):
        return None


@pytest.mark.parametrize(
    ("plugin_cls", "problem"),
    [
        (_MisspeltArgument, r"the implementation asks for windows.*fix:.*proposal, window"),
        (_WrongRole, r"a verification strategy must implement exactly `dlm_verify`.*implements \['dlm_propose'\].*fix"),
    ],
    ids=["argument-the-hook-lacks", "another-roles-hook"],
)
def test_a_malformed_strategy_is_named_when_the_decoder_is_built(plugin_cls, problem):
    with pytest.raises(
        PluginError,
        match=r"(?s)^plugin tests.bad_plugin \(verification strategy 'bad'\) in "
        r"dlm_verify: " + problem,
    ):
        strategy_decoder("verification", "bad", lambda config, context: plugin_cls(), plugin_name="tests.bad_plugin")


class _StuckObserver:
    @hookimpl
    def dlm_step_end(self, state):
        raise StrategyError("the observer cannot follow this window", "use decoder.window=blocks")


def test_a_strategy_error_keeps_its_own_message_and_fix():
    with pytest.raises(
        PluginError,
        match=r"(?s)test_dispatch._StuckObserver object in dlm_step_end: the observer "
        r"cannot follow this window\n  fix: use decoder.window=blocks$",
    ):
        toy_decoder(observers=[_StuckObserver()]).generate(["ab"])


class _Remembers:
    """An observer keeping one memory per batch: the batches it saw and the steps of each."""

    def __init__(self):
        self.memories = []

    @hookimpl
    def dlm_step_end(self, state):
        memory = state.memory(self, lambda state: {"steps": 0, "rows": state.batch_size})
        if not self.memories or self.memories[-1] is not memory:
            self.memories.append(memory)
        memory["steps"] += 1
        state.add_row_stat("remembers.steps", torch.ones(state.batch_size, dtype=torch.long))


def test_plugin_memory_lives_for_one_batch_and_row_stats_add_up():
    observer = _Remembers()
    model = ToyDiffusionLM(eos_bias=float("-inf"))
    out = toy_decoder(
        "generation.max_new_tokens=5", "generation.batch_size=2", model=model, observers=[observer]
    ).generate(["ab", "abc", "abcd"])
    assert [m["rows"] for m in observer.memories] == [2, 1], "a fresh memory for each batch"
    assert [m["steps"] for m in observer.memories] == [5, 5]
    assert [s.extra["remembers.steps"] for s in out.stats] == [5.0, 5.0, 5.0], "added up over the steps"


def test_first_true_columns_with_an_int_or_a_per_row_default():
    mask = torch.tensor([[False, True, True], [False, False, False], [True, False, False]])
    assert first_true_columns(mask).tolist() == [1, 0, 0]
    assert first_true_columns(mask, 3).tolist() == [1, 3, 0]
    assert first_true_columns(mask, torch.tensor([7, 8, 9])).tolist() == [1, 8, 0]


def test_a_factory_reads_the_structured_config_and_the_resolved_one():
    seen = {}

    def factory(config, context):
        seen.update(
            new_tokens=context.config.generation.max_new_tokens,
            hash=context.resolved.hash,
            dllm=context.dllm,
            loaded=list(context.loaded),
        )
        return _Raiser()

    model = ToyDiffusionLM()
    decoder = strategy_decoder("verification", "reads", factory, "generation.max_new_tokens=7", model=model)
    assert seen == {"new_tokens": 7, "hash": decoder.config.hash, "dllm": model, "loaded": []}
