"""pytest fixtures for dlm_decode and its plugin authors (loaded through the ``pytest11`` entry point).

* ``tiny_dllm_dir``: a session-wide tiny random bidirectional checkpoint with the project's tokenizer.
* ``tiny_ar_dir``: the same with a causal model.
* ``strategy_registry``: a freshly collected :class:`~dlm_decode.registry.StrategyRegistry`.
* ``make_decoder``: ``make_decoder(*overrides, source=None)`` -> a :class:`~dlm_decode.Decoder` over
  ``tiny_dllm_dir`` (override ``model.dllm.path`` to use another model).

pytest imports this module in every session of a project that has dlm_decode installed, whether or not its tests
use a fixture, so the module imports only pytest: each fixture imports what it needs (torch and transformers
among them) when it runs.
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_dllm_dir(tmp_path_factory):
    from dlm_decode.testing.models import build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny-dllm"), causal=False, seed=0)


@pytest.fixture(scope="session")
def tiny_ar_dir(tmp_path_factory):
    from dlm_decode.testing.models import build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny-ar"), causal=True, seed=1)


@pytest.fixture
def strategy_registry():
    from dlm_decode.plugins import build_registry

    return build_registry()


@pytest.fixture
def make_decoder(tiny_dllm_dir):
    from dlm_decode.decoder import Decoder

    def make(*overrides: str, source=None, **kwargs):
        return Decoder.from_config(source or {}, [f"model.dllm.path={tiny_dllm_dir}", *overrides], **kwargs)

    return make
