"""transformers' ``DiffusionGemmaForBlockDiffusion`` decoded by ``dlm_decode.Decoder`` (a uniform-noise family).

``tests/reference/diffusion-gemma-tiny`` is a tiny random checkpoint in transformers' layout, and
``official_diffusion_gemma.json`` what transformers' own ``generate`` returned on it (recorded by
``tests/reference/record_diffusion_gemma.py`` with the transformers named there). transformers is the reference
and a dependency of the project, so every case is also run live: the project must give the live tokens and
forwards at batch 1 with the same seed, and the live tokens must be the recorded ones (a transformers release that
changes them shows here). Beyond batch 1 the rule is the project's: in a left-padded batch of 16 each row decodes
as alone (transformers' single global generator draws over the whole batch, so it has no such rule).
"""

from __future__ import annotations

import json

import pytest
import torch

from dlm_decode.config.schema import ModelSpec
from dlm_decode.decoder import Decoder
from dlm_decode.errors import ConfigError, InputError, PluginError
from dlm_decode.hookspecs import hookimpl
from dlm_decode.models.dllm import adapt
from dlm_decode.state import Decision

from helpers import REFERENCE, strategy_decoder

transformers = pytest.importorskip("transformers")
if not hasattr(transformers, "DiffusionGemmaForBlockDiffusion"):
    pytest.skip("the installed transformers has no DiffusionGemma", allow_module_level=True)

CHECKPOINT = REFERENCE / "diffusion-gemma-tiny"
OFFICIAL = json.loads((REFERENCE / "official_diffusion_gemma.json").read_text(encoding="utf-8"))
PRESET = "configs/decoders/diffusion-gemma.yaml"
#: The distinct ``generate`` settings of the fixture, in order.
SETTINGS = [dict(items) for items in dict.fromkeys(tuple(case["generate"].items()) for case in OFFICIAL["cases"])]
#: Prompts of 1 to 12 words (the checkpoint's tokenizer: t5 .. t63 and Gemma's specials), some longer than the
#: sliding window of 6; rows 2 and 6 are exactly one and two blocks of 4 tokens long.
PROMPTS16 = [" ".join(["<bos>"] + [f"t{5 + (7 * row + 3 * i) % 59}" for i in range(1 + row % 12)]) for row in range(16)]
#: A quicker schedule for the batch tests (the rule tested there does not depend on the step count).
QUICK = ["decoder.proposal.steps=6", "decoder.verification.steps=6", "decoder.verification.confidence=1.0"]


pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: one intra-op thread while this module runs


@pytest.fixture(scope="module")
def loaded(one_thread):
    """transformers' model and the checkpoint's tokenizer, loaded by transformers."""
    model = transformers.DiffusionGemmaForBlockDiffusion.from_pretrained(CHECKPOINT).eval()
    return model, transformers.AutoTokenizer.from_pretrained(CHECKPOINT)


def settings_overrides(setting: dict) -> list[str]:
    """The decoder overrides for one of transformers' ``generate`` settings of the fixture."""
    overrides = [f"model.dllm.eos_token_ids=[{setting['eos_token_id']}]", "generation.max_steps=1000"]
    if "confidence_threshold" in setting:
        overrides.append(f"decoder.verification.confidence={setting['confidence_threshold']}")
        overrides.append(f"decoder.verification.stability={setting['stability_threshold']}")
    return overrides


def live(model, case: dict) -> tuple[list[int], int]:
    """transformers' ``generate`` now: the new tokens up to the first EOS and the decoder forwards."""
    forwards = []
    hook = model.model.decoder.register_forward_pre_hook(lambda module, args: forwards.append(1))
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(case["seed"])
            prompt = torch.tensor([case["prompt_ids"]])
            out = model.generate(prompt, **case["generate"]).sequences[0, prompt.shape[1] :].tolist()
    finally:
        hook.remove()
    eos = case["generate"]["eos_token_id"]
    return (out[: out.index(eos) + 1] if eos in out else out), len(forwards)


@pytest.mark.parametrize("setting", range(len(SETTINGS)))
def test_batch_one_gives_the_tokens_of_transformers_generate_with_the_same_seed(loaded, setting):
    model, tokenizer = loaded
    cases = [case for case in OFFICIAL["cases"] if case["generate"] == SETTINGS[setting]]
    decoder = Decoder.from_model(model, tokenizer, PRESET, settings_overrides(cases[0]["generate"]))
    for case in cases:
        tokens, forwards = live(model, case)
        if transformers.__version__ == OFFICIAL["transformers_version"]:
            assert (tokens, forwards) == (case["tokens"], case["forwards"]), case
        prompt = tokenizer.decode(case["prompt_ids"])
        out = decoder.generate(prompt, seeds=[case["seed"]], max_new_tokens=case["generate"]["max_new_tokens"])
        assert (out.token_ids[0], out.stats[0].nfe) == (tokens, forwards), case
    assert len({tuple(case["tokens"]) for case in cases}) == len(cases)  # the seeds and prompts matter


def test_the_fixture_covers_early_stops_and_eos():
    steps = [case["forwards"] / -(-len(case["tokens"]) // 4) for case in OFFICIAL["cases"]]
    assert min(steps) < 48 and max(steps) == 48  # some blocks stop before the 48th step
    assert any(case["tokens"][-1] == case["generate"]["eos_token_id"] for case in OFFICIAL["cases"])
    assert {4, 8} < {len(case["prompt_ids"]) for case in OFFICIAL["cases"]}  # prompts of exactly one and two blocks


def test_loading_the_checkpoint_by_path_detects_the_family_and_decodes_as_from_model(loaded):
    decoder = Decoder.from_config(PRESET, [f"model.dllm.path={CHECKPOINT}", *QUICK])
    dllm = decoder.dllm
    assert (dllm.family.name, dllm.noise_vocab, str(dllm.attention)) == (
        "diffusion_gemma",
        64,
        "block_causal(block_size=4, anchor=generation)",
    )
    assert (dllm.mask_token_id, dllm.eos_token_ids, dllm.pad_token_id, dllm.undecodable_ids) == (4, [1], 0, [])
    direct = Decoder.from_model(*loaded, PRESET, QUICK)
    prompts = PROMPTS16[:3]
    assert decoder.generate(prompts, max_new_tokens=8).token_ids == direct.generate(prompts, max_new_tokens=8).token_ids


@pytest.mark.parametrize(
    "overrides",
    [
        QUICK,
        [*QUICK, "decoder.cache=none"],
        ["decoder.proposal=greedy", "decoder.verification=threshold", "decoder.verification.threshold=0.3"],
        ["decoder.proposal=sample", "decoder.verification=topk", "decoder.verification.tokens_per_step=2"],
        [
            "decoder.proposal=greedy",
            "decoder.verification=left_to_right",
            "decoder.window=blocks",
            "decoder.cache=none",
        ],
    ],
    ids=["default", "no-cache", "greedy-threshold", "sample-topk", "left-to-right"],
)
def test_a_batch_of_16_decodes_each_row_as_alone(loaded, overrides):
    """The entropy-bounded sampler and three of the project's strategies, with the exact prefix cache and without:
    in a left-padded batch of 16 (rows in different blocks, finishing apart; rows 2 and 6 are prompts of exactly one
    and two blocks) each row gets its tokens and forwards alone."""
    decoder = Decoder.from_model(*loaded, PRESET, [*overrides, "model.dllm.eos_token_ids=[47]"])
    batched = decoder.generate(PROMPTS16, max_new_tokens=8, batch_size=16)
    for row in (0, 2, 5, 6, 11, 15):
        alone = decoder.generate([PROMPTS16[row]], max_new_tokens=8, seeds=[row])
        assert alone.token_ids[0] == batched.token_ids[row]
        assert alone.stats[0].nfe == batched.stats[row].nfe
    assert len({len(ids) for ids in batched.token_ids}) > 1  # some rows stop at the EOS
    assert len({stats.nfe for stats in batched.stats}) > 1


def test_no_cache_gives_the_tokens_of_the_prefix_cache(loaded):
    prefix = Decoder.from_model(*loaded, PRESET, QUICK)
    none = Decoder.from_model(*loaded, PRESET, [*QUICK, "decoder.cache=none"])
    assert (
        prefix.generate(PROMPTS16, max_new_tokens=12).token_ids == none.generate(PROMPTS16, max_new_tokens=12).token_ids
    )


@pytest.mark.parametrize(
    "role, name",
    [
        ("verification", "wino"),
        ("verification", "freedave"),
        ("window", "dpad"),
        ("window", "lookahead"),
        ("cache", "dual"),
        ("cache", "kv_window"),
        ("cache", "dkv"),
    ],
)
def test_strategies_that_need_a_mask_canvas_are_refused(loaded, role, name):
    with pytest.raises(ConfigError, match=rf"`decoder\.{role}`: '{name}' does not apply to the diffusion_gemma model"):
        Decoder.from_model(*loaded, PRESET, [f"decoder.{role}={name}"])


def test_the_uniform_noise_sampler_is_refused_on_a_mask_model():
    with pytest.raises(ConfigError, match=r"`decoder\.proposal`: 'linear_temperature' samples a uniform-noise model"):
        Decoder.from_config(PRESET, ["model.dllm.path=embedded:dllm"])


def test_a_partial_block_is_refused(loaded):
    decoder = Decoder.from_model(*loaded, PRESET, QUICK)
    with pytest.raises(InputError, match="whole blocks of 4 tokens"):
        decoder.generate("<bos> t5", max_new_tokens=6)


def test_stream_yields_the_decided_prefix_only(loaded):
    decoder = Decoder.from_model(*loaded, PRESET, QUICK)
    pieces = list(decoder.stream(PROMPTS16[3], max_new_tokens=8, seed=3))
    assert "".join(pieces) == decoder.generate([PROMPTS16[3]], max_new_tokens=8, seeds=[3]).texts[0]
    assert len(pieces) == 2  # one piece per finished block: undecided noise is never streamed


class _Revokes:
    """Commits the block and revokes its first committed column, which a noise canvas refuses."""

    revokes = True  # declared, so the loop's noise-canvas check is the one that speaks

    @hookimpl
    def dlm_verify(self, state, proposal, window):
        revoke = ~state.masked & state.generated_columns & (state.columns < state.model_block()[0][:, None])
        return Decision(commit=window.eligible, tokens=proposal.tokens, revoke=revoke)


def test_a_revocation_on_a_noise_canvas_is_refused(loaded):
    dllm = adapt(*loaded, ModelSpec(chat_template=False))
    decoder = strategy_decoder(
        "verification", "bad", lambda config, context: _Revokes(), plugin_name="tests.bad_plugin", model=dllm
    )
    with pytest.raises(PluginError, match="(?s)tests.bad_plugin.*revoked a position.*or did so on a noise canvas.*fix"):
        decoder.generate(["<bos> t5 t9"], max_new_tokens=8)
