"""Remote-code stand-ins of LLaDA and Dream derivatives (:mod:`dlm_decode.testing.models`), shared by the tests of
the remote path: constants and helpers (the checkpoints are the session fixture ``stand_ins`` of conftest.py).

The spiked stand-ins have a known answer by construction (no training): a correct adapter decodes the letter
``SPIKE_LETTERS[p % 26]`` at every generated position ``p``, so an off-by-one in Dream's realignment, in the
first column of a cached span or in LLaDA's positions shows up as wrong text.
"""

from __future__ import annotations

from dlm_decode.config.schema import ModelSpec
from dlm_decode.decoder import Decoder
from dlm_decode.models.adapter import DiffusionLM
from dlm_decode.testing.models import spike_text

SPIKE = 40.0
PROMPTS = ["hi", "sort 3 1 2", "reverse abc"]  # different lengths: left padding in a batch
REMOTE = ["model.dllm.implementation=remote", "model.dllm.trust_remote_code=true"]  # the stand-ins run their code


def load(path, **spec) -> DiffusionLM:
    return DiffusionLM.from_spec(ModelSpec(path=str(path), implementation="remote", trust_remote_code=True, **spec))


def decoder(path, *overrides, **kwargs) -> Decoder:
    return Decoder.from_config(
        {},
        [f"model.dllm.path={path}", *REMOTE, "generation.max_new_tokens=10", "decoder.proposal=greedy", *overrides],
        **kwargs,
    )


def expected_texts(dllm: DiffusionLM, prompts: list[str], new_tokens: int) -> list[str]:
    """The spike answer: generated column k of a prompt with n tokens has position n + k."""
    return [spike_text(range(len(ids), len(ids) + new_tokens)) for ids in dllm.encode(prompts)]
