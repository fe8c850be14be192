"""The public Decoder API: streaming, statistics, wrappers and observers."""

from __future__ import annotations

import pytest

from dlm_decode import InputError
from dlm_decode.decoder import Decoder
from dlm_decode.testing.toy import ToyDiffusionLM
from dlm_decode.timing import HookTimer

from helpers import StepRecorder, toy_decoder


def test_stream_yields_the_final_text_in_order():
    for overrides in (["decoder.verification=left_to_right"], ["decoder.window=blocks", "decoder.window.size=3"]):
        decoder = toy_decoder(*overrides, "generation.max_new_tokens=12")
        pieces = list(decoder.stream("abcd"))
        assert "".join(pieces) == decoder.generate(["abcd"]).texts[0]
        assert all(pieces)


def test_stream_grows_one_token_per_step_left_to_right():
    decoder = toy_decoder(
        "decoder.verification=left_to_right",
        "generation.max_new_tokens=6",
        model=ToyDiffusionLM(eos_bias=float("-inf")),
    )
    pieces = list(decoder.stream("ab"))
    text = decoder.generate(["ab"]).texts[0]
    assert [len(p) for p in pieces] == [1] * len(text) and "".join(pieces) == text and len(text) >= 1


def test_wrapper_plugin_sees_every_role_call_once_per_step():
    timer = HookTimer()
    decoder = toy_decoder(
        "generation.max_new_tokens=7", model=ToyDiffusionLM(eos_bias=float("-inf")), observers=[timer]
    )
    out = decoder.generate(["ab", "abcdef"])
    for hook in ("dlm_window", "dlm_cache", "dlm_model_inputs", "dlm_propose", "dlm_verify"):
        assert timer.calls[hook] == 7 and timer.seconds[hook] > 0
    assert [s.nfe for s in out.stats] == [7, 7]


def test_plugins_registered_between_batches_are_called(monkeypatch):
    """Role hooks with one implementation are called directly; the binding is redone for every batch, so a wrapper
    registered after the decoder was built (or while pluggy tracing is on) still sees every call."""
    decoder = toy_decoder("generation.max_new_tokens=5", model=ToyDiffusionLM(eos_bias=float("-inf")))
    first = decoder.generate(["ab"])
    timer = HookTimer()
    decoder.manager.register(timer)
    second = decoder.generate(["ab"])
    assert timer.calls["dlm_verify"] == 5 and second.token_ids == first.token_ids
    decoder.manager.unregister(timer)
    decoder.generate(["ab"])
    assert timer.calls["dlm_verify"] == 5, "an unregistered wrapper was still called"

    calls = []
    monkeypatch.setenv("DLM_DECODE_TRACE_PLUGINS", "1")
    traced = toy_decoder("generation.max_new_tokens=5", model=ToyDiffusionLM(eos_bias=float("-inf")))
    traced.manager.trace.root.setwriter(calls.append)
    assert traced.generate(["ab"]).token_ids == first.token_ids
    assert sum("dlm_verify" in line for line in calls) >= 5, "tracing missed direct hook calls"


def test_stats_are_consistent_per_row():
    decoder = toy_decoder(
        "decoder.verification.tokens_per_step=3",
        "generation.max_new_tokens=9",
        "generation.batch_size=2",
        model=ToyDiffusionLM(eos_bias=1.0),
    )
    out = decoder.generate(["a", "bb", "ccc"])
    assert len(out.texts) == len(out.token_ids) == len(out.stats) == 3
    for ids, stats in zip(out.token_ids, out.stats):
        assert stats.generated_tokens == len(ids)
        assert stats.nfe == len(stats.commits_per_step)
        assert sum(stats.commits_per_step) >= len(ids) and all(c >= 1 for c in stats.commits_per_step)
        assert stats.wall_s > 0 and stats.ar_forwards == 0


class _SpelledToy(ToyDiffusionLM):
    """Decodes every id, special ones included (``<2>`` for EOS/fill), so the cut at the first EOS shows."""

    def decode(self, ids: list[int]) -> str:
        return "".join(chr(ord("a") + i - 4) if i >= 4 else f"<{i}>" for i in ids)


def test_stream_ends_its_text_where_generate_does_at_the_first_eos():
    decoder = toy_decoder(
        "decoder.verification=left_to_right", "generation.max_new_tokens=10", model=_SpelledToy(eos_bias=2.0)
    )
    final = decoder.generate(["ab"]).texts[0]
    assert final.endswith("<2>") and final.count("<2>") == 1  # the EOS, none of the fill after it
    assert "".join(decoder.stream("ab")) == final


def test_explicit_arguments_override_the_config_and_none_keeps_it():
    """``batch_size`` / ``max_new_tokens`` / ``seeds`` given explicitly win over ``generation.*``; None keeps it."""
    recorder = StepRecorder()
    decoder = toy_decoder(
        "decoder.proposal=sample",
        "generation.max_new_tokens=6",
        "generation.batch_size=8",
        "generation.seed=5",
        model=ToyDiffusionLM(eos_bias=float("-inf")),
        observers=[recorder],
    )
    prompts = ["ab", "cd", "ef"]
    default = decoder.generate(prompts, max_new_tokens=None, batch_size=None, seeds=None)
    assert len(recorder.runs) == 1 and [s.nfe for s in default.stats] == [6, 6, 6]
    assert decoder.generate(prompts, seeds=[5, 6, 7]).token_ids == default.token_ids  # seeds default to seed + i
    explicit = decoder.generate(prompts, max_new_tokens=3, batch_size=1)
    assert len(recorder.runs) == 2 + 3, "batch_size=1 did not decode one prompt per batch"
    assert [s.nfe for s in explicit.stats] == [3, 3, 3]


def test_seeds_at_the_ends_of_the_generator_range_and_numpy_ints_are_accepted():
    import numpy as np

    decoder = toy_decoder("decoder.proposal=sample", "generation.max_new_tokens=6")
    out = decoder.generate(["ab", "ab", "ab"], seeds=[2**64 - 1, -(2**63), np.int64(3)])
    assert len(out.texts) == 3
    assert out.token_ids[2] == decoder.generate(["ab"], seeds=[3]).token_ids[0]
    assert "".join(decoder.stream("ab", seed=np.int64(3))) == out.texts[2]


def test_a_prompt_the_tokenizer_cannot_encode_is_named_with_its_characters():
    import pytest

    from dlm_decode import InputError
    from dlm_decode.decoder import Decoder

    decoder = Decoder.from_config("configs/decoders/llada.yaml")  # a character vocabulary without tab or accents
    with pytest.raises(InputError, match=r"(?s)prompt 2 cannot be tokenized.*encode: '\\tï'.*fix"):
        decoder.generate(["sort 3 1 2", "12+7=", "na\tïve fruit"], batch_size=2)


def test_tokenizer_failures_that_are_not_about_characters_are_not_blamed_on_characters(monkeypatch):
    import pytest

    from dlm_decode import InputError
    from dlm_decode.decoder import Decoder

    decoder = Decoder.from_config("configs/decoders/llada.yaml")

    def template_fails(prompts):
        raise ValueError("template error")

    monkeypatch.setattr(decoder.dllm, "encode", template_fails)  # fails for any text, one character included
    with pytest.raises(InputError, match=r"prompt 0 cannot be tokenized .*template error\)\n  fix: check the prompt"):
        decoder.generate(["sort 3 1 2"])
    real = type(decoder.dllm).encode.__get__(decoder.dllm)

    def batch_fails(prompts):
        if len(prompts) > 1:
            raise ValueError("batch encoding failed")
        return real(prompts)

    monkeypatch.setattr(decoder.dllm, "encode", batch_fails)
    with pytest.raises(InputError, match=r"prompts 0-1 cannot be tokenized together"):
        decoder.generate(["sort 3 1 2", "12+7="], batch_size=2)


def test_ids_the_tokenizer_cannot_decode_are_never_proposed_even_when_the_model_prefers_them():
    """The core removes them from the logits before any proposal, whatever the strategies."""
    from dlm_decode.testing.toy import ToyDiffusionLM

    from helpers import toy_decoder

    model = ToyDiffusionLM(eos_bias=float("-inf"))
    model.positional[:, 5] += 100.0  # the model's favourite id
    assert toy_decoder("generation.max_new_tokens=6", model=model).generate(["ab"]).token_ids == [[5] * 6]
    model.undecodable_ids = [5]  # ... which now has no token
    for overrides in (
        [],
        ["decoder.proposal=sample", "decoder.proposal.temperature=1.0"],
        ["decoder.verification=threshold"],
    ):
        out = toy_decoder("generation.max_new_tokens=6", *overrides, model=model).generate(["ab", "abcd"])
        assert all(5 not in ids for ids in out.token_ids), overrides


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


@pytest.mark.parametrize(
    ("prompts", "arguments", "pattern"),
    [
        (["ab"], {"batch_size": -1}, r"batch_size must be at least 1, got -1"),
        (["ab"], {"batch_size": 0}, r"batch_size must be at least 1, got 0"),
        (["ab"], {"batch_size": 1.0}, r"batch_size must be an int, got 1.0"),
        (["ab"], {"max_new_tokens": 0}, r"max_new_tokens must be at least 1, got 0"),
        (["ab"], {"max_new_tokens": -1}, r"max_new_tokens must be at least 1, got -1"),
        (["ab"], {"max_new_tokens": 2.5}, r"max_new_tokens must be an int, got 2.5 \(float\)"),
        (["ab"], {"max_new_tokens": True}, r"max_new_tokens must be an int, got True \(bool\)"),
        (
            ["ab", "cd"],
            {"seeds": [2**70, 1]},
            r"seeds\[0\] is 1180591620717411303424, outside \[-2\*\*63, 2\*\*64 - 1\]",
        ),
        (["ab", "cd"], {"seeds": [1, -(2**63) - 1]}, r"seeds\[1\] is -9223372036854775809, outside"),
        (["ab", "cd"], {"seeds": ["x", "y"]}, r"seeds\[0\] must be an int, got 'x'"),
        (["ab"], {"seeds": 5}, r"seeds must be a sequence of ints, got 5"),
        (["abc"], {"seeds": [1, 2]}, r"2 seeds for 1 prompts"),
        (["abc", "  "], {}, r"prompt 1 is empty"),
        ([None], {}, r"prompt 0 is None \(NoneType\), not a string"),
        (["ab", 1], {}, r"prompt 1 is 1 \(int\), not a string"),
        (7, {}, r"prompts must be a string or a sequence of strings, got 7"),
    ],
)
def test_bad_generate_arguments_are_named(prompts, arguments, pattern):
    decoder = toy_decoder("generation.max_new_tokens=4")
    with pytest.raises(InputError, match=f"(?s){pattern}.*fix: "):
        decoder.generate(prompts, **arguments)


@pytest.mark.parametrize(
    ("prompt", "arguments", "pattern"),
    [
        ("ab", {"max_new_tokens": -1}, r"max_new_tokens must be at least 1, got -1"),
        ("ab", {"max_new_tokens": 0}, r"max_new_tokens must be at least 1, got 0"),
        ("ab", {"max_new_tokens": 2.5}, r"max_new_tokens must be an int"),
        ("ab", {"seed": 2**64}, r"seed is 18446744073709551616, outside"),
        ("ab", {"seed": "1"}, r"seed must be an int, got '1'"),
        (None, {}, r"prompt 0 is None"),
        (" ", {}, r"prompt 0 is empty"),
    ],
)
def test_bad_stream_arguments_are_named(prompt, arguments, pattern):
    decoder = toy_decoder("generation.max_new_tokens=4")
    with pytest.raises(InputError, match=f"(?s){pattern}.*fix: "):
        next(decoder.stream(prompt, **arguments))


def test_default_seeds_past_the_generator_range_name_generation_seed():
    decoder = toy_decoder(f"generation.seed={2**64 - 1}", "generation.max_new_tokens=4")
    decoder.generate(["ab"])  # seed 2**64 - 1 itself is accepted
    with pytest.raises(InputError, match=r"(?s)generation.seed \+ 1 \(the seed of prompt 1\).*fix: lower"):
        decoder.generate(["ab", "cd"])
