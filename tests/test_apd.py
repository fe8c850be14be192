"""APD: coupling probability, extremes, reductions, bounds, the exact variant, and the real-model path."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from dlm_decode import ConfigError, ModelError, load_config
from dlm_decode.decoder import Decoder
from dlm_decode.models.causal import check_shared_tokenizer
from dlm_decode.models.tokenizer import build_char_tokenizer
from dlm_decode.ops import Scorer
from dlm_decode.strategies.apd import Acceptance, APDConfig, APDVerifier, Coupling
from dlm_decode.testing.registry import registry_with
from dlm_decode.testing.toy import ToyCausalLM, ToyDiffusionLM

from helpers import StepRecorder
from stand_ins import PROMPTS as STAND_IN_PROMPTS
from stand_ins import decoder, expected_texts

NEVER = float("-inf")

#: Monte Carlo samples for distributional checks; tolerance 5 standard errors + 1e-3.
SAMPLES = 100_000


def agreement_probability(p: torch.Tensor, t: torch.Tensor) -> float:
    """sum_i 1 / sum_j max(p_j / p_i, t_j / t_i): P(draft == target) under one shared Gumbel draw."""
    ratio = torch.maximum(p[None, :] / p[:, None], t[None, :] / t[:, None])
    return float((1 / ratio.sum(-1)).sum())


@given(
    draft=st.lists(st.floats(-3, 3), min_size=2, max_size=6),
    data=st.data(),
    weight=st.floats(0.0, 1.0),
    temperature=st.floats(0.4, 1.5),
    seed=st.integers(0, 2**31),
)
def test_shared_noise_agreement_matches_the_closed_form(draft, data, weight, temperature, seed):
    ar = data.draw(st.lists(st.floats(-3, 3), min_size=len(draft), max_size=len(draft)))
    scorer = Scorer()
    d, a = torch.tensor(draft), torch.tensor(ar)
    gumbel = (
        -torch.empty(SAMPLES, len(draft), dtype=torch.float64)
        .exponential_(generator=torch.Generator().manual_seed(seed))
        .log()
    )
    drafts = scorer.gumbel_argmax(d.expand(SAMPLES, -1), gumbel, temperature)
    targets = scorer.coupled_sample(d.expand(SAMPLES, -1), a.expand(SAMPLES, -1), weight, gumbel, temperature)
    observed = (drafts == targets).double().mean().item()
    p = torch.softmax(d.double() / temperature, -1)
    t = torch.softmax((weight * d.double() + (1 - weight) * a.double()) / temperature, -1)
    expected = agreement_probability(p, t)
    assert abs(observed - expected) <= 5 * (expected * (1 - expected) / SAMPLES) ** 0.5 + 1e-3


def toy_pair(ar_table=None, vocab=12, sharpness=1.0):
    dllm = ToyDiffusionLM(vocab, context=False, sharpness=sharpness, eos_bias=NEVER)
    table = dllm.positional.clone() if ar_table is None else ar_table
    return dllm, ToyCausalLM(table)


def apd_decoder(dllm, ar, *overrides, observers=(), **apd):
    config = APDConfig(**apd)
    registry = registry_with(
        ("verification", "apd_toy", APDConfig, lambda _, context: APDVerifier(config, ar, context.scorer))
    )
    resolved = load_config(
        {},
        ["decoder.verification=apd_toy", "decoder.window=lookahead", "decoder.proposal=sample", *overrides],
        registry=registry,
    )
    return Decoder(resolved, dllm=dllm, registry=registry, observers=observers)


PROMPTS = ["abc", "d", "efgh"]


@pytest.mark.parametrize("m", [1, 3, 5, None])
def test_r_equal_one_accepts_the_whole_window(m):
    dllm, ar = toy_pair(ar_table=torch.randn(512, 12) * 3)
    lookahead = "null" if m is None else m
    out = apd_decoder(
        dllm, ar, f"decoder.window.max_lookahead={lookahead}", "generation.max_new_tokens=11", mixture_weight=1.0
    ).generate(PROMPTS)
    window = m or 11
    expected = [window] * (11 // window) + ([11 % window] if 11 % window else [])
    assert all(s.commits_per_step == expected for s in out.stats)
    assert all(s.ar_forwards == s.nfe == len(expected) for s in out.stats)


@pytest.mark.parametrize("coupling", list(Coupling))
@given(weight=st.floats(0.0, 1.0), temperature=st.floats(0.3, 2.0))
def test_identical_distributions_accept_the_whole_window(coupling, weight, temperature):
    dllm, ar = toy_pair(sharpness=1.0 if coupling is Coupling.gumbel else 4.0)
    if coupling is Coupling.argmax:  # the argmax target agrees only with a draft at its mode: sample greedily
        temperature = 0.0
    proposal = ["decoder.proposal=greedy"] if temperature == 0 else [f"decoder.proposal.temperature={temperature}"]
    out = apd_decoder(
        dllm,
        ar,
        *proposal,
        "decoder.window.max_lookahead=4",
        "generation.max_new_tokens=8",
        mixture_weight=weight,
        coupling=coupling,
    ).generate(PROMPTS)
    assert all(s.commits_per_step == [4, 4] for s in out.stats)


@given(seed=st.integers(0, 10_000), m=st.integers(1, 6), temperature=st.floats(0.3, 1.5))
def test_always_disagreeing_verifier_is_left_to_right_one_token_decoding(seed, m, temperature):
    dllm, _ = toy_pair()
    dllm.positional[:, 1] = -30.0  # the dLLM practically never drafts token 1 ...
    table = torch.zeros(512, 12)
    table[:, 1] = 50.0  # ... which is the AR model's only choice
    common = [
        f"generation.seed={seed}",
        f"decoder.window.max_lookahead={m}",
        "generation.max_new_tokens=9",
        f"decoder.proposal.temperature={temperature}",
    ]
    apd = apd_decoder(dllm, ToyCausalLM(table), *common, mixture_weight=0.0).generate(PROMPTS)
    reference = Decoder(
        load_config(
            {}, ["decoder.window=lookahead", "decoder.proposal=sample", "decoder.verification=left_to_right", *common]
        ),
        dllm=dllm,
    )
    assert apd.token_ids == reference.generate(PROMPTS).token_ids
    assert all(s.commits_per_step == [1] * 9 for s in apd.stats)


@given(
    weight=st.floats(0.0, 1.0),
    m=st.integers(1, 7),
    temperature=st.floats(0.0, 1.5),
    acceptance=st.sampled_from(list(Acceptance)),
    seed=st.integers(0, 1000),
)
def test_accepted_count_is_between_one_and_the_window(weight, m, temperature, acceptance, seed):
    recorder = StepRecorder()
    dllm, ar = toy_pair(ar_table=torch.randn(512, 12, generator=torch.Generator().manual_seed(seed)) * 2)
    proposal = "decoder.proposal=greedy" if temperature == 0 else f"decoder.proposal.temperature={temperature}"
    decoder = apd_decoder(
        dllm,
        ar,
        proposal,
        f"decoder.window.max_lookahead={m}",
        "generation.max_new_tokens=10",
        f"generation.seed={seed}",
        observers=[recorder],
        mixture_weight=weight,
        acceptance=acceptance,
    )
    decoder.generate(PROMPTS)
    for run in recorder.runs:
        masks_left = torch.full((len(PROMPTS),), 10)
        for step in run.steps:
            accepted = step.commit.sum(-1)
            running = ~step.finished_before
            assert bool((accepted[running] >= 1).all())
            assert bool((accepted <= torch.clamp(masks_left, max=m)).all())
            masks_left = step.masked.sum(-1)


def test_speculative_commits_follow_the_target_distribution_per_position():
    vocab, weight, temperature, n = 8, 0.4, 0.8, 6000
    dllm, _ = toy_pair(vocab=vocab)
    table = torch.randn(512, vocab, generator=torch.Generator().manual_seed(3)) * 1.5
    decoder = apd_decoder(
        dllm,
        ToyCausalLM(table),
        "decoder.window.max_lookahead=3",
        "generation.max_new_tokens=3",
        f"decoder.proposal.temperature={temperature}",
        "generation.batch_size=2000",
        mixture_weight=weight,
        acceptance=Acceptance.speculative,
    )
    out = decoder.generate(["ab"] * n, seeds=list(range(n)))
    prompt_len = len(dllm.encode(["ab"])[0])
    for offset in range(3):
        position = prompt_len + offset
        mixed = weight * dllm.positional[position].double() + (1 - weight) * table[position].double()
        mixed[dllm.mask_token_id] = NEVER
        mixed[dllm.eos_token_ids[0]] = NEVER
        target = torch.softmax(mixed / temperature, -1)
        tokens = torch.tensor([ids[offset] for ids in out.token_ids])
        freq = torch.bincount(tokens, minlength=vocab).double() / n
        bound = 5 * (target * (1 - target) / n).sqrt() + 2e-3
        assert bool(((freq - target).abs() <= bound).all()), (offset, freq, target)
    assert max(max(s.commits_per_step) for s in out.stats) > 1, "the exact variant still accepts several tokens"


def test_ar_vocabulary_narrower_than_the_dllm_head_is_masked_out():
    dllm, _ = toy_pair()
    table = torch.randn(512, 9)  # the AR model knows only ids 0..8 of the dLLM's 12
    dllm.positional[:, 9:] += 20.0  # the dLLM prefers the ids the AR model lacks
    out = apd_decoder(
        dllm,
        ToyCausalLM(table),
        "decoder.window.max_lookahead=4",
        "generation.max_new_tokens=8",
        "decoder.proposal=greedy",
        mixture_weight=0.5,
    ).generate(PROMPTS)
    assert all(s.commits_per_step == [1] * 8 for s in out.stats), "targets never take ids past the AR head"


def test_tokenizers_that_differ_are_rejected():
    dllm_tok = build_char_tokenizer()
    other = build_char_tokenizer()
    other.add_tokens(["<extra>"])
    check_shared_tokenizer(dllm_tok, dllm_tok, 100, 100)
    with pytest.raises(ModelError, match="(?s)tokenizer differs.*fix"):
        check_shared_tokenizer(dllm_tok, other, 100, 101)
    with pytest.raises(ModelError, match="AR head has 120 logits but the dLLM head only 100"):
        check_shared_tokenizer(dllm_tok, dllm_tok, 100, 120)


@pytest.fixture
def hf_apd(make_decoder, tiny_ar_dir):
    def make(*overrides):
        return make_decoder(
            "decoder.verification=apd",
            f"model.ar.path={tiny_ar_dir}",
            "decoder.window=lookahead",
            "decoder.window.max_lookahead=6",
            "generation.max_new_tokens=14",
            *overrides,
        )

    return make


@pytest.mark.parametrize(
    "proposal", [["decoder.proposal=greedy"], ["decoder.proposal=sample", "decoder.proposal.temperature=0.7"]]
)
def test_kv_window_covering_the_canvas_equals_no_cache(hf_apd, proposal):
    prompts = ["sort: 3 1 2", "hi", "reverse: abcdef"]
    plain = hf_apd(*proposal, "decoder.cache=none").generate(prompts)
    windowed = hf_apd(*proposal, "decoder.cache=kv_window", "decoder.cache.window=1000").generate(prompts)
    assert windowed.token_ids == plain.token_ids
    assert [s.ar_forwards for s in windowed.stats] == [s.ar_forwards for s in plain.stats]


def test_lookahead_covering_the_remaining_masks_equals_no_limit(hf_apd):
    prompts = ["sort: 3 1 2", "hi"]
    unlimited = hf_apd("decoder.window.max_lookahead=null").generate(prompts)
    assert hf_apd("decoder.window.max_lookahead=14").generate(prompts).token_ids == unlimited.token_ids
    assert hf_apd("decoder.window.max_lookahead=100").generate(prompts).token_ids == unlimited.token_ids


def test_apd_on_hf_models_is_batch_invariant_and_counts_ar_forwards(hf_apd):
    prompts = ["sort: 3 1 2", "hi", "reverse: abcdef", "7+5="]
    decoder = hf_apd("decoder.proposal=greedy", "decoder.cache=kv_window", "decoder.cache.window=4")
    together = decoder.generate(prompts)
    alone = [decoder.generate([p]).token_ids[0] for p in prompts]
    assert together.token_ids == alone
    for stats in together.stats:
        assert stats.ar_forwards == stats.nfe >= 1


def test_apd_without_an_ar_model_names_model_ar(make_decoder):

    with pytest.raises(ConfigError, match="(?s)`model.ar`.*fix"):
        make_decoder("decoder.verification=apd")


def test_kv_window_decodes_each_row_of_a_batch_as_alone_on_the_shipped_pair():
    """With W = 1 most keys/values are frozen, so a row whose recompute span depended on its neighbours' (the
    batch's earliest change) would see different logits: sampled tokens then differ for some row."""
    prompts = [
        "16+3=",
        "reverse msllumf",
        "name a fruit",
        "sort 9 4 2 6 2 2",
        "reverse thhflnp",
        "sort 9 0 6",
        "sort 1 2 6 4 8 6 2",
        "name a number",
    ]
    seeds = list(range(1136, 1144))
    decoder = Decoder.from_config(
        "configs/decoders/apd.yaml",
        [
            "decoder.cache.window=1",
            "decoder.window.max_lookahead=3",
            "decoder.proposal.temperature=1.5",
            "decoder.proposal.top_p=null",
        ],
    )
    together = decoder.generate(prompts, batch_size=8, seeds=seeds).token_ids
    alone = [decoder.generate([p], seeds=[s]).token_ids[0] for p, s in zip(prompts, seeds)]
    assert together == alone


def stand_in_apd(stand_ins, dllm_dir, *overrides):
    """APD on a remote-code stand-in with the Qwen-like verifier, whose head is narrower than the Dream-like one."""
    return decoder(
        dllm_dir,
        "decoder.verification=apd",
        f"model.ar.path={stand_ins['qwen']}",
        "decoder.window=lookahead",
        "decoder.window.max_lookahead=4",
        "decoder.cache=kv_window",
        "decoder.cache.window=2",
        "decoder.proposal=sample",
        "decoder.proposal.temperature=0.2",
        "decoder.proposal.top_p=0.95",
        "generation.max_new_tokens=12",
        *overrides,
    )


def test_apd_accepts_whole_windows_when_the_dream_draft_dominates(stand_ins):
    """R = 0.7 times a spike of 40 outweighs the verifier's random logits: every window of M = 4 is accepted,
    and the committed text is the constructed answer (through kv_window's cached spans)."""
    dec = stand_in_apd(stand_ins, stand_ins["dream_spike"])
    assert dec.strategies["verification"][1].ar.vocab_size == 104 < dec.dllm.vocab_size == 112
    out = dec.generate(STAND_IN_PROMPTS)
    assert out.texts == expected_texts(dec.dllm, STAND_IN_PROMPTS, 12)
    for stats in out.stats:
        assert stats.commits_per_step == [4, 4, 4]
        assert stats.ar_forwards == stats.nfe == 3


def test_apd_on_random_stand_ins_is_batch_invariant_and_within_bounds(stand_ins):
    dec = stand_in_apd(stand_ins, stand_ins["dream"], "decoder.proposal=greedy")
    together = dec.generate(STAND_IN_PROMPTS)
    assert together.token_ids == [dec.generate([p]).token_ids[0] for p in STAND_IN_PROMPTS]
    for ids, stats in zip(together.token_ids, together.stats):
        assert all(1 <= c <= 4 for c in stats.commits_per_step)
        assert stats.ar_forwards == stats.nfe


def test_apd_kv_window_covering_the_canvas_equals_no_cache_on_dream(stand_ins):
    plain = stand_in_apd(stand_ins, stand_ins["dream"], "decoder.cache=none").generate(STAND_IN_PROMPTS)
    wide = stand_in_apd(stand_ins, stand_ins["dream"], "decoder.cache.window=1000").generate(STAND_IN_PROMPTS)
    assert wide.token_ids == plain.token_ids


def test_apd_refuses_a_verifier_with_another_tokenizer(stand_ins):
    with pytest.raises(ModelError, match="tokenizer differs"):
        stand_in_apd(stand_ins, stand_ins["llada"])
