"""FreeDave (``freedave``): lossless draft-and-verify.

The contract is the one-token-per-step decoder's output (``topk`` with one token per step, same window) in no more
forwards: checked as a Hypothesis property over random models, prompts, blocks, draft counts and batch sizes; on a
random transformer read bidirectionally and block-causally; and on the embedded dLLM's task suite, where it must
take strictly fewer forwards. The official code's own outputs are compared in ``test_freedave_official.py``.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dlm_decode import load_config
from dlm_decode.decoder import Decoder
from dlm_decode.errors import ConfigError
from dlm_decode.eval.tasks import load_examples
from dlm_decode.masks import AttentionPattern
from dlm_decode.state import Window
from dlm_decode.strategies.freedave import draft
from dlm_decode.testing.toy import ToyDiffusionLM

from helpers import ModelWrapper, decode_state, toy_decoder


def one_token_and_freedave(model, prompts, draft_steps, *overrides):
    """``(one token per step, freedave)`` outputs of ``prompts`` on ``model`` under the same overrides."""
    common = [*overrides, "decoder.proposal=greedy", "decoder.cache=none"]
    one = Decoder(load_config({}, [*common, "decoder.verification=topk"]), dllm=model).generate(prompts)
    fast = Decoder(
        load_config({}, [*common, "decoder.verification=freedave", f"decoder.verification.draft_steps={draft_steps}"]),
        dllm=model,
    ).generate(prompts)
    return one, fast


@settings(max_examples=30)
@given(
    seed=st.integers(0, 2**16),
    vocab=st.integers(5, 16),
    sharpness=st.sampled_from([0.5, 2.0, 6.0]),
    eos_bias=st.sampled_from([float("-inf"), 0.0, 3.0]),
    context=st.booleans(),
    prompts=st.lists(st.text(alphabet="abcdefgh1234", min_size=1, max_size=10), min_size=1, max_size=6),
    window=st.sampled_from(["full", 1, 3, 4, 8]),
    max_new=st.integers(1, 20),
    draft_steps=st.integers(1, 6),
    stop_at_eos=st.booleans(),
    batch=st.integers(1, 6),
)
def test_freedave_gives_the_one_token_per_step_tokens_in_no_more_forwards(
    seed, vocab, sharpness, eos_bias, context, prompts, window, max_new, draft_steps, stop_at_eos, batch
):
    model = ToyDiffusionLM(vocab, eos_bias=eos_bias, sharpness=sharpness, seed=seed, context=context)
    window_overrides = (
        ["decoder.window=full"] if window == "full" else ["decoder.window=blocks", f"decoder.window.size={window}"]
    )
    one, fast = one_token_and_freedave(
        model,
        prompts,
        draft_steps,
        *window_overrides,
        f"generation.max_new_tokens={max_new}",
        f"generation.batch_size={batch}",
        f"generation.stop_at_eos={str(stop_at_eos).lower()}",
    )
    assert fast.token_ids == one.token_ids
    assert all(f.nfe <= o.nfe for f, o in zip(fast.stats, one.stats, strict=True))
    if draft_steps == 1:
        assert [s.nfe for s in fast.stats] == [s.nfe for s in one.stats]


@pytest.mark.parametrize("pattern", [None, AttentionPattern(4, "generation"), AttentionPattern(3, "position")])
@pytest.mark.parametrize("stop_at_eos", [True, False])
def test_freedave_is_lossless_on_a_random_transformer_at_batch_16(one_layer, pattern, stop_at_eos):
    """A sharpened random transformer (two EOS ids, so rows end early), read bidirectionally or block-causally,
    prompts of mixed lengths in one batch of 16: the tokens of one token per step, each row as alone."""
    model = one_layer if pattern is None else WithPattern(one_layer, pattern)
    prompts = ["sort: 3 1 2", "hi", "reverse: abcdef", "7+5=", "pick a fruit please", "x"] * 3
    block = "3" if pattern is not None and pattern.block_size == 3 else "4"
    overrides = [
        "decoder.window=blocks",
        f"decoder.window.size={block}",
        "generation.max_new_tokens=24",
        f"generation.stop_at_eos={str(stop_at_eos).lower()}",
    ]
    one, fast = one_token_and_freedave(model, prompts, 4, *overrides, "generation.batch_size=16")
    assert fast.token_ids == one.token_ids
    solo = Decoder(
        load_config({}, [*overrides, "decoder.verification=freedave", "generation.batch_size=1"]), dllm=model
    ).generate(prompts[:6])
    assert solo.token_ids == fast.token_ids[:6]
    assert sum(s.nfe for s in fast.stats) < sum(s.nfe for s in one.stats)


class WithPattern(ModelWrapper):
    """A dLLM seen with another attention pattern (the model's weights and forward unchanged)."""

    def __init__(self, dllm, attention: AttentionPattern):
        super().__init__(dllm)
        self.attention = attention


def test_the_preset_matches_llada_yaml_on_the_embedded_suite_in_fewer_forwards():
    """Eight test examples of every task of the embedded suite, batch 16 against batch 1, against llada.yaml."""
    examples = load_examples(None, "test", 8)
    prompts = [example.prompt for example in examples]
    llada = Decoder.from_config("configs/decoders/llada.yaml").generate(prompts)
    batched = Decoder.from_config("configs/decoders/freedave.yaml").generate(prompts)
    solo = Decoder.from_config("configs/decoders/freedave.yaml", overrides=["generation.batch_size=1"])
    assert batched.token_ids == llada.token_ids
    assert solo.generate(prompts[::6]).token_ids == batched.token_ids[::6]
    fast, slow = sum(s.nfe for s in batched.stats), sum(s.nfe for s in llada.stats)
    assert fast < 0.8 * slow, (fast, slow)


def test_a_model_whose_ranking_never_changes_verifies_every_draft():
    """With logits that ignore the context, every drafted canvas ranks as the current one does, so each step
    commits ``draft_steps`` tokens except the first (no ranking yet) and a block's remainder: 8 masks, D = 4 ->
    1, 4, 3 commits; 6 masks in blocks of 4 -> 1, 3, then 2 (the second block's drafts come from the first's
    last forward)."""
    model = ToyDiffusionLM(eos_bias=float("-inf"), context=False)
    decoder = toy_decoder(
        "decoder.verification=freedave",
        "decoder.verification.draft_steps=4",
        "generation.max_new_tokens=8",
        model=model,
    )
    assert decoder.generate(["ab"]).stats[0].commits_per_step == [1, 4, 3]
    decoder = toy_decoder(
        "decoder.verification=freedave",
        "decoder.window=blocks",
        "decoder.window.size=4",
        "generation.max_new_tokens=6",
        model=model,
    )
    assert decoder.generate(["ab"]).stats[0].commits_per_step == [1, 3, 2]


def test_drafts_are_ranked_nested_and_settled_like_a_decision():
    """Row 0 drafts its two most confident eligible columns in order; the second canvas holds both. Row 1's best
    draft is an EOS: with stop_at_eos both canvases fill the columns after it, as the core fills a committed EOS's
    tail. Row 2 has one eligible column, so its second draft is invalid and its second canvas repeats the first."""
    mask, eos, fill = 3, 2, 2
    state = decode_state([[5], [6], [7]], 4, mask=mask, pad=0, eos=[eos], fill=fill, seeds=[0, 1, 2])
    eligible = state.masked.clone()
    eligible[2, 2:] = False
    window = Window(
        eligible=eligible, input_end=5, block_start=torch.ones(3, dtype=torch.long), block_end=torch.full((3,), 5)
    )
    confidence = torch.tensor([[0.0, 0.1, 0.9, 0.5, 0.2], [0.0, 0.3, 0.8, 0.1, 0.7], [0.0, 0.6, 0.9, 0.1, 0.1]])
    tokens = torch.tensor([[0, 10, 11, 12, 13], [0, 20, eos, 22, 23], [0, 30, 31, 32, 33]])
    drafts = draft(state, window, confidence, tokens, 2)
    assert drafts.cols.tolist() == [[2, 3], [2, 4], [1, 0]]
    assert drafts.valid.tolist() == [[True, True], [True, True], [True, False]]
    assert drafts.canvases[:, 0].tolist() == [[5, mask, 11, mask, mask], [5, mask, 11, 12, mask]]
    assert drafts.canvases[:, 1].tolist() == [[6, mask, eos, fill, fill], [6, mask, eos, fill, fill]]
    assert drafts.canvases[:, 2].tolist() == [[7, 30, mask, mask, mask], [7, 30, mask, mask, mask]]


@pytest.mark.parametrize(
    "override, key",
    [
        ("decoder.window=lookahead", "decoder.window"),
        ("decoder.proposal=sample", "decoder.proposal"),
        ("decoder.cache=prefix", "decoder.cache"),
    ],
)
def test_settings_under_which_it_would_not_reproduce_one_token_per_step_are_refused(override, key):
    with pytest.raises(ConfigError) as error:
        Decoder.from_config("configs/decoders/freedave.yaml", overrides=[override])
    assert error.value.key == key and "fix:" in str(error.value)


def test_the_preset_decodes_the_block_model_like_llada_yaml():
    prompts = ["sort 4 1 7 9 3", "reverse kqzma", "pick a fruit:"]
    block = ["model.dllm.path=embedded:block"]
    llada = Decoder.from_config("configs/decoders/llada.yaml", overrides=block).generate(prompts)
    fast = Decoder.from_config("configs/decoders/freedave.yaml", overrides=block).generate(prompts)
    assert fast.texts[0] == "1 3 4 7 9" and fast.token_ids == llada.token_ids
    assert sum(s.nfe for s in fast.stats) < sum(s.nfe for s in llada.stats)


def test_verified_drafts_are_counted_per_row():
    decoder = toy_decoder(
        "decoder.verification=freedave",
        "generation.max_new_tokens=8",
        model=ToyDiffusionLM(eos_bias=float("-inf"), context=False),
    )
    stats = decoder.generate(["ab", "abcd"]).stats
    # 8 tokens in 3 steps: none drafted at the first; the second verifies 3 drafts (commits them and the step after
    # them); the third drafts the 3 masks left and verifies all 3
    assert [s.extra["freedave.verified_drafts"] for s in stats] == [6, 6]
    assert [s.commits_per_step for s in stats] == [[1, 4, 3]] * 2
