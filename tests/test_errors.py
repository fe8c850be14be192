"""Bad configs, bad inputs and misbehaving plugins fail with messages naming the key or plugin and the fix."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from dlm_decode import ConfigError, DecodeError, InputError, ModelError, PluginError, load_config
from dlm_decode.decoder import Decoder
from dlm_decode.hookspecs import hookimpl
from dlm_decode.plugins import build_registry
from dlm_decode.state import Decision
from dlm_decode.testing.registry import registry_with
from dlm_decode.testing.toy import ToyDiffusionLM

from helpers import toy_decoder


@pytest.mark.parametrize(("overrides", "key", "hint"), [
    (["decoder.verification=bogus"], "decoder.verification.name", "registered: apd"),
    (["generation.max_new_tokens=abc"], "generation.max_new_tokens", "type"),
    (["generation.max_new_tokens=0"], "generation.max_new_tokens", "at least 1"),
    (["generation.max_new_tokens=-5"], "generation.max_new_tokens", "at least 1"),
    (["generation.max_new_tokns=5"], "generation.max_new_tokns", "valid keys: max_new_tokens"),
    (["decoder.verification.score=best"], "decoder.verification.score", "confidence"),
    (["decoder.proposal=sample", "decoder.proposal.top_p=1.5"], "decoder.proposal.top_p", "(0, 1]"),
    (["decoder.proposal=sample", "decoder.proposal.temperature=.inf"], "decoder.proposal.temperature", "finite"),
    (["decoder.proposal=sample", "decoder.proposal.temperature=nan"], "decoder.proposal.temperature", "finite"),
    (["decoder.proposal.temperature=0.5"], "decoder.proposal.temperature", "takes no parameters"),
    (["decoder.window=blocks", "decoder.window.size=0"], "decoder.window.size", "at least 1"),
    (["decoder.verifier=topk"], "decoder.verifier", "the roles are"),
    (["model.dllm.dtype=int4"], "model.dllm.dtype", "float32"),
    (["modle.dllm.path=x"], "modle", "top-level keys"),
    (["generation.max_new_tokens"], "generation.max_new_tokens", "key=value"),
    (["decoder.verification.tokens_per_step=2", "decoder.verification.steps_per_block=4"],
     "decoder.verification.tokens_per_step", "only one"),
    (["decoder.verification.schedule=dream"], "decoder.verification.steps_per_block", "Dream's `steps`"),
    (["decoder.verification.eps=0.01"], "decoder.verification.eps", "schedule dream"),
    (["decoder.verification=wino", "decoder.verification.revoke_limit=none"], "decoder.verification.revoke_limit",
     "progress"),
    (["model.dllm.implementation=native_code"], "model.dllm.implementation", "native or remote"),
    (["generation.seed=18446744073709551616"], "generation.seed", "manual_seed accepts"),
    (["generation.seed=-9223372036854775809"], "generation.seed", "manual_seed accepts"),
    (["decoder=foo"], "decoder", "mapping of roles (window, cache, proposal, verification)"),
    (["decoder=null"], "decoder", "mapping of roles"),
    (["decoder=[1]"], "decoder", "mapping of roles"),
    (["decoder=null", "decoder.window=blocks"], "decoder", "mapping of roles"),
    (["model.dllm=null"], "model.dllm", "leave it out to keep the defaults"),
    (["model.dllm.dtype=bfloat16", "model.dllm=null"], "model.dllm", "must be a mapping"),
    (["model=null"], "model", "must be a mapping"),
    (["generation=null"], "generation", "must be a mapping"),
    (["model.dllm.device=cpu:x"], "model.dllm.device", "cuda:N"),
    (["model.dllm.device=cuda:x"], "model.dllm.device", "cuda:N"),
    (["model.dllm.device=cuda:-1"], "model.dllm.device", "cuda:N"),
    (["model.dllm.device=cuda0"], "model.dllm.device", "cuda:N"),
])
def test_bad_configs_name_the_key_and_the_fix(overrides, key, hint):
    with pytest.raises(ConfigError) as info:
        load_config({}, overrides)
    message = str(info.value)
    assert f"`{key}`" in message and hint in message
    assert info.value.key == key


def test_null_decoder_section_in_a_file_is_named(tmp_path):
    path = tmp_path / "null-decoder.yaml"
    path.write_text("decoder: null\n")
    with pytest.raises(ConfigError, match=r"(?s)`decoder`: must be a mapping of roles.*fix") as info:
        load_config(path)
    assert info.value.key == "decoder"


def test_missing_config_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="(?s)no config file at .*nope.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_yaml_that_is_not_a_mapping_is_rejected(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="(?s)mapping at the top level"):
        load_config(path)


def test_empty_prompt_is_rejected():
    with pytest.raises(InputError, match="(?s)prompt 1 is empty.*fix"):
        toy_decoder().generate(["abc", "  "])


def test_prompt_longer_than_the_context_is_rejected():
    decoder = toy_decoder("generation.max_new_tokens=8", model=ToyDiffusionLM(max_context=16))
    with pytest.raises(InputError, match=r"(?s)prompt 0 has 11 tokens.*max_new_tokens=8.*19 > .*context of 16.*fix"):
        decoder.generate(["abcdefghij"])


@pytest.mark.parametrize("batch_size", [1, 16])
def test_prompt_holding_the_mask_token_is_rejected(batch_size):
    """Named by its index in the request, whichever batch it lands in."""
    decoder = Decoder.from_config("configs/decoders/llada.yaml")
    with pytest.raises(InputError, match=r"(?s)prompt 1 contains the dLLM's mask token \(id 3\).*fix: remove"):
        decoder.generate(["sort 2 1", "sort <mask> 1"], batch_size=batch_size)


def test_non_positive_max_new_tokens_argument_is_rejected():
    with pytest.raises(InputError, match="(?s)max_new_tokens must be at least 1"):
        toy_decoder().generate(["abc"], max_new_tokens=-1)


@pytest.mark.parametrize(("prompts", "arguments", "pattern"), [
    (["ab"], {"batch_size": -1}, r"batch_size must be at least 1, got -1"),
    (["ab"], {"batch_size": 0}, r"batch_size must be at least 1, got 0"),
    (["ab"], {"batch_size": 1.0}, r"batch_size must be an int, got 1.0"),
    (["ab"], {"max_new_tokens": 0}, r"max_new_tokens must be at least 1, got 0"),
    (["ab"], {"max_new_tokens": 2.5}, r"max_new_tokens must be an int, got 2.5 \(float\)"),
    (["ab"], {"max_new_tokens": True}, r"max_new_tokens must be an int, got True \(bool\)"),
    (["ab", "cd"], {"seeds": [2**70, 1]}, r"seeds\[0\] is 1180591620717411303424, outside \[-2\*\*63, 2\*\*64 - 1\]"),
    (["ab", "cd"], {"seeds": [1, -2**63 - 1]}, r"seeds\[1\] is -9223372036854775809, outside"),
    (["ab", "cd"], {"seeds": ["x", "y"]}, r"seeds\[0\] must be an int, got 'x'"),
    (["ab"], {"seeds": 5}, r"seeds must be a sequence of ints, got 5"),
    ([None], {}, r"prompt 0 is None \(NoneType\), not a string"),
    (["ab", 1], {}, r"prompt 1 is 1 \(int\), not a string"),
    (7, {}, r"prompts must be a string or a sequence of strings, got 7"),
])
def test_bad_generate_arguments_are_named(prompts, arguments, pattern):
    decoder = toy_decoder("generation.max_new_tokens=4")
    with pytest.raises(InputError, match=f"(?s){pattern}.*fix: "):
        decoder.generate(prompts, **arguments)


@pytest.mark.parametrize(("prompt", "arguments", "pattern"), [
    ("ab", {"max_new_tokens": -1}, r"max_new_tokens must be at least 1, got -1"),
    ("ab", {"max_new_tokens": 0}, r"max_new_tokens must be at least 1, got 0"),
    ("ab", {"max_new_tokens": 2.5}, r"max_new_tokens must be an int"),
    ("ab", {"seed": 2**64}, r"seed is 18446744073709551616, outside"),
    ("ab", {"seed": "1"}, r"seed must be an int, got '1'"),
    (None, {}, r"prompt 0 is None"),
    (" ", {}, r"prompt 0 is empty"),
])
def test_bad_stream_arguments_are_named(prompt, arguments, pattern):
    decoder = toy_decoder("generation.max_new_tokens=4")
    with pytest.raises(InputError, match=f"(?s){pattern}.*fix: "):
        next(decoder.stream(prompt, **arguments))


def test_default_seeds_past_the_generator_range_name_generation_seed():
    decoder = toy_decoder(f"generation.seed={2**64 - 1}", "generation.max_new_tokens=4")
    decoder.generate(["ab"])  # seed 2**64 - 1 itself is accepted
    with pytest.raises(InputError, match=r"(?s)generation.seed \+ 1 \(the seed of prompt 1\).*fix: lower"):
        decoder.generate(["ab", "cd"])


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has MPS")
def test_unavailable_mps_device_is_a_model_error_naming_the_key():
    with pytest.raises(ModelError, match=r"(?s)`model.dllm.device` is 'mps' but MPS is not available.*fix: set "
                                         r"model.dllm.device=cpu"):
        Decoder.from_config({}, ["model.dllm.device=mps"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_unavailable_cuda_device_is_a_model_error_naming_the_key():
    with pytest.raises(ModelError, match=r"(?s)`model.dllm.device` is 'cuda:1' but CUDA is not available.*fix"):
        Decoder.from_config({}, ["model.dllm.device=cuda:1"])


def test_failure_to_move_the_weights_is_a_model_error_naming_the_key(monkeypatch):
    """What ``model.to`` raises for a device that exists in name only (``cuda:7`` on a one-GPU machine)."""
    def fail(module, *args, **kwargs):
        raise RuntimeError("CUDA error: invalid device ordinal")

    monkeypatch.setattr(torch.nn.Module, "to", fail)
    with pytest.raises(ModelError, match=r"(?s)`model.dllm.device` = 'cpu'.*invalid device ordinal.*fix: set "
                                         r"model.dllm.device to a device this machine has"):
        Decoder.from_config({}, ["model.dllm.device=cpu"])


def test_seed_count_must_match_prompts():
    with pytest.raises(InputError, match="(?s)2 seeds for 1 prompts"):
        toy_decoder().generate(["abc"], seeds=[1, 2])


def test_unknown_local_model_path_is_named():
    with pytest.raises(ModelError, match="(?s)model.dllm.path.*no-such-dir"):
        Decoder.from_config({}, ["model.dllm.path=no-such-dir"])


@dataclass
class _NoParams:
    pass


class _Raising:
    @hookimpl
    def dlm_verify(self, proposal):
        raise ValueError("boom")


class _CommitsNothing:
    @hookimpl
    def dlm_verify(self, proposal):
        return Decision(commit=torch.zeros_like(proposal.tokens, dtype=torch.bool), tokens=proposal.tokens)


class _CommitsPrompt:
    @hookimpl
    def dlm_verify(self, state, proposal, window):
        commit = window.eligible.clone()
        commit[:, 0] = True
        return Decision(commit=commit, tokens=proposal.tokens)


class _ReturnsNone:
    @hookimpl
    def dlm_verify(self, proposal):
        return None


class _WrongRole:
    @hookimpl
    def dlm_propose(self, state):
        return None


class _RevokesPrompt:
    @hookimpl
    def dlm_verify(self, state, proposal, window):
        revoke = torch.zeros_like(window.eligible)
        revoke[:, 0] = True
        return Decision(commit=window.eligible, tokens=proposal.tokens, revoke=revoke)


class _NaNModel(ToyDiffusionLM):
    """Finite logits, except ``poison`` written into one logit of the last row's last position at step ``step``."""

    def __init__(self, poison: float = float("nan"), step: int = 0):
        super().__init__()
        self.poison, self.step, self.calls = poison, step, 0

    def forward(self, inputs, cache=None):
        logits = super().forward(inputs, cache).clone()
        logits[:, 0, 0] = float("-inf")  # infinities alone are not NaN
        if self.calls == self.step:
            logits[-1, -1, 5] = self.poison
        self.calls += 1
        return logits


def bad_decoder(plugin_cls, model=None) -> Decoder:
    registry = registry_with(("verification", "bad", _NoParams, lambda config, context: plugin_cls()),
                             plugin_name="tests.bad_plugin")
    config = load_config({}, ["decoder.verification=bad", "generation.max_new_tokens=4"], registry=registry)
    return Decoder(config, dllm=model or ToyDiffusionLM(), registry=registry)


@pytest.mark.parametrize(("plugin_cls", "pattern"), [
    (_Raising, r"tests.bad_plugin \(verification strategy 'bad'\) in dlm_verify: raised ValueError: boom.*fix"),
    (_CommitsNothing, r"tests.bad_plugin.*committed nothing for unfinished rows \[0, 1\].*never end.*fix"),
    (_CommitsPrompt, r"tests.bad_plugin.*committed a position the window did not make eligible.*fix"),
    (_ReturnsNone, r"tests.bad_plugin.*dlm_verify: returned None.*fix"),
    (_RevokesPrompt, r"tests.bad_plugin.*revoked a position that is not a committed generated token.*fix"),
])
def test_misbehaving_plugins_are_named(plugin_cls, pattern):
    with pytest.raises(PluginError, match="(?s)" + pattern):
        bad_decoder(plugin_cls).generate(["ab", "cd"])


def test_plugin_implementing_the_wrong_role_is_rejected_at_build_time():
    with pytest.raises(PluginError, match=r"(?s)must implement exactly `dlm_verify`.*implements \['dlm_propose'\].*fix"):
        bad_decoder(_WrongRole)


@pytest.mark.parametrize("step", [0, 2])
def test_a_single_nan_logit_stops_decoding_with_a_fix(step):
    decoder = toy_decoder(model=_NaNModel(step=step))
    with pytest.raises(DecodeError, match=f"(?s)NaN logits at step {step}.*fix"):
        decoder.generate(["ab", "cd"])


def test_infinite_logits_are_not_mistaken_for_nan():
    output = toy_decoder(model=_NaNModel(poison=float("inf"))).generate(["ab", "cd"])
    assert all(stats.steps >= 1 for stats in output.stats)


def test_duplicate_strategy_names_are_rejected():
    class Twice:
        @staticmethod
        @hookimpl
        def dlm_register(registry):
            registry.add("verification", "topk", _NoParams, lambda config, context: None)

    with pytest.raises(PluginError, match="(?s)'topk' is already registered by dlm_decode.strategies.verification"):
        build_registry({"tests.twice": Twice})


def test_step_limit_stops_a_runaway_generation_and_names_the_unfinished_rows():
    decoder = toy_decoder("generation.max_steps=2", "generation.max_new_tokens=6",
                          model=ToyDiffusionLM(eos_bias=float("-inf")))
    with pytest.raises(DecodeError, match=r"(?s)prompts \[0, 1\] did not finish within 2 steps.*"
                                          r"generation.max_steps"):
        decoder.generate(["ab", "cde"])
    from dlm_decode.loop import decode

    later_batch = decoder._state(["ab"], 5, 6, [0])  # a batch whose first prompt is prompt 5 of the request
    with pytest.raises(DecodeError, match=r"prompts \[5\] did not finish"):  # numbered in the request
        decode(decoder.roles, decoder.dllm, later_batch, 2)


class _GreedyWindow:
    @hookimpl
    def dlm_window(self, state):
        from dlm_decode.state import Window

        everything = torch.ones_like(state.masked)
        start = torch.zeros(state.batch_size, dtype=torch.long)
        return Window(eligible=everything, input_end=state.width, block_start=start, block_end=start + state.width)


def test_window_that_makes_prompt_positions_eligible_is_named():
    registry = registry_with(("window", "everything", _NoParams, lambda config, context: _GreedyWindow()),
                             plugin_name="tests.window_plugin")
    config = load_config({}, ["decoder.window=everything"], registry=registry)
    decoder = Decoder(config, dllm=ToyDiffusionLM(), registry=registry)
    with pytest.raises(PluginError, match=r"(?s)tests.window_plugin.*dlm_window: made a position eligible.*fix"):
        decoder.generate(["ab"])
