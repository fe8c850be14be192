"""The native LLaDA and Dream families against the official code, through the fixtures of ``tests/reference``.

``tests/reference/record.py`` ran the official modeling files and decoders (transformers 4.49, in an environment of
their own) on the tiny LLaDA, Dream and Qwen2 checkpoints it built, and recorded their logits and tokens. Here the
project loads the same checkpoints natively (transformers' Llama and Qwen2 classes, none of the checkpoint code)
and must give:

* the official logits of full forwards (unpadded, and left-padded with a 4-D mask), within a relative tolerance;
* the official tokenizers' prompt ids;
* the official decoders' tokens, token for token, under the equivalent configuration (:func:`equivalent`):
  16 decoder configurations x 5 prompts = 80 cases, decoded here in one batch of mixed prompt lengths (the
  official code decoded them one at a time).
"""

from __future__ import annotations

import json
from collections import defaultdict

import pytest
import torch

from dlm_decode.config.schema import ModelSpec
from dlm_decode.decoder import Decoder
from dlm_decode.models.adapter import DiffusionLM
from dlm_decode.models.loading import load_hf

from helpers import REFERENCE, FinalCanvas, assert_logits_close, llada_tiny_blocks
from reference.record import pairwise_mask  # the mask the padded official logits were recorded with

OFFICIAL = json.loads((REFERENCE / "official.json").read_text(encoding="utf-8"))
PROMPTS = OFFICIAL["prompts"]
SCORES = {"entropy": "entropy", "topk_margin": "margin", "maskgit_plus": "confidence"}
LLADA_CACHES = {"fast_dllm.generate_with_prefix_cache": "prefix", "fast_dllm.generate_with_dual_cache": "dual"}


def equivalent(decoder: str, arguments: dict) -> list[str]:
    """The overrides under which this project decodes as the official ``decoder`` called with ``arguments``.

    Departures the configuration switches off: ``generation.stop_at_eos=false`` for the decoders that fill the
    whole canvas (the project otherwise stops a row at its first EOS); WINO's ``revoke_limit=official`` (the
    default keeps every step's net progress positive); APD's code stops at ``<|endoftext|>`` only, so Dream's
    ``<|im_end|>`` is not an EOS there.
    """
    a = arguments
    if decoder.split(".")[0] in ("llada", "fast_dllm", "wino"):
        blocks = a["gen_length"] // a["block_length"]
        common = llada_tiny_blocks(a["gen_length"], a["block_length"], LLADA_CACHES.get(decoder, "none"))
        if decoder == "wino.decoding_wino":
            return [
                *common,
                "decoder.verification=wino",
                f"decoder.verification.draft_threshold={a['threshold']}",
                f"decoder.verification.verify_threshold={a['threshold_back']}",
                "decoder.verification.revoke_limit=official",
            ]
        if a.get("threshold") is not None:
            return [*common, "decoder.verification=threshold", f"decoder.verification.threshold={a['threshold']}"]
        return [
            *common,
            "decoder.verification=topk",
            "decoder.verification.score=confidence",
            f"decoder.verification.steps_per_block={a['steps'] // blocks}",
        ]
    common = [
        f"model.dllm.path={REFERENCE / 'dream-tiny'}",
        f"generation.max_new_tokens={a['max_new_tokens']}",
        "decoder.proposal=greedy",
    ]
    if decoder == "dream.diffusion_generate":
        return [
            *common,
            "decoder.window=full",
            "decoder.cache=none",
            "decoder.verification=topk",
            f"decoder.verification.score={SCORES[a['alg']]}",
            "decoder.verification.schedule=dream",
            f"decoder.verification.steps_per_block={a['steps']}",
            "generation.stop_at_eos=false",
        ]
    endoftext = f"model.dllm.eos_token_ids=[{a['eos_token_id']}]"
    if a["alg"] == "leftright":
        return [
            *common,
            endoftext,
            "decoder.window=full",
            "decoder.cache=none",
            "decoder.verification=left_to_right",
            f"decoder.verification.k={a['tokens_per_step']}",
        ]

    def null(value):
        return "null" if value is None else value

    return [
        *common,
        endoftext,
        f"model.ar.path={REFERENCE / 'qwen2-tiny'}",
        "decoder.window=lookahead",
        f"decoder.window.max_lookahead={null(a['max_lookahead'])}",
        "decoder.cache=kv_window",
        f"decoder.cache.window={null(a['kv_window'])}",
        "decoder.verification=apd",
        f"decoder.verification.mixture_weight={a['apd_mixture_weight']}",
        "decoder.verification.coupling=argmax",
    ]


def _groups() -> dict[str, list[dict]]:
    groups = defaultdict(list)
    for case in OFFICIAL["cases"]:
        shown = {
            k: v
            for k, v in case["arguments"].items()
            if k not in ("mask_id", "mask_token_id", "eos_token_id", "pad_token_id", "temperature")
        }
        groups[f"{case['decoder']}{json.dumps(shown, sort_keys=True)}"].append(case)
    return dict(groups)


GROUPS = _groups()


def test_every_recorded_case_is_compared():
    assert len(OFFICIAL["cases"]) == 80 and len(GROUPS) == 16  # the cases record.py writes, in 16 decoder settings


@pytest.mark.parametrize("name", sorted(GROUPS))
def test_the_official_decoder_is_matched_token_for_token(name):
    cases = GROUPS[name]
    canvas = FinalCanvas()
    decoder = Decoder.from_config(
        {}, [*equivalent(cases[0]["decoder"], cases[0]["arguments"]), "generation.batch_size=16"], observers=[canvas]
    )
    out = decoder.generate([PROMPTS[case["prompt"]] for case in cases])
    for case, row, ids in zip(cases, canvas.rows, out.token_ids, strict=True):
        official = case["generated"]
        if case["decoder"].startswith("apd."):  # the official loop stops at its first EOS: the rest stays masked
            eos = case["arguments"]["eos_token_id"]
            end = official.index(eos) + 1 if eos in official else len(official)
            assert ids == official[:end], f"prompt {case['prompt']}"
        else:
            assert row == official, f"prompt {case['prompt']}"


@pytest.fixture(scope="module")
def native():
    return {
        name: load_hf(ModelSpec(path=str(REFERENCE / f"{name}-tiny")), "model.dllm")[0]
        for name in ("llada", "dream", "qwen2")
    }


@pytest.fixture(scope="module")
def official_logits():
    from safetensors.torch import load_file

    return load_file(str(REFERENCE / "logits.safetensors"))


@pytest.mark.parametrize("name", ["llada.full", "dream.full", "qwen2.full"])
def test_native_logits_equal_the_official_modeling_code(native, official_logits, name):
    family = name.split(".")[0]
    prompt = OFFICIAL["prompt_ids"]["llada" if family == "llada" else "dream"][1]
    expected = official_logits[name]
    mask_id = {"llada": 98, "dream": 276, "qwen2": None}[family]
    ids = torch.tensor([prompt + ([mask_id] * (expected.shape[1] - len(prompt)) if mask_id is not None else [])])
    with torch.no_grad():
        assert_logits_close(native[family](ids).logits, expected)


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_native_logits_with_left_padding_and_a_4d_mask_equal_the_official_ones(native, official_logits, family):
    ids, real = official_logits[f"{family}.padded.input_ids"], official_logits[f"{family}.padded.real"]
    if family == "llada":  # WINO's modeling file takes one position per column, shared by the rows
        positions = torch.arange(ids.shape[1]).expand_as(ids)
    else:  # Dream's own: positions skip the left padding, padding gets 1
        positions = (real.long().cumsum(-1) - 1).masked_fill(~real, 1)
    with torch.no_grad():
        logits = native[family](ids, attention_mask=pairwise_mask(real), position_ids=positions).logits
    expected = official_logits[f"{family}.padded"]
    assert_logits_close(logits[real], expected[real])  # padding queries' logits mean nothing


def test_the_dream_adapter_realigns_the_official_logits(official_logits):
    dllm = DiffusionLM.from_spec(ModelSpec(path=str(REFERENCE / "dream-tiny")))
    raw = official_logits["dream.full"]
    prompt = OFFICIAL["prompt_ids"]["dream"][1]
    ids = torch.tensor([prompt + [dllm.mask_token_id] * (raw.shape[1] - len(prompt))])
    from dlm_decode.masks import bidirectional_mask, position_ids_from_mask
    from dlm_decode.state import ModelInputs

    real = torch.ones_like(ids, dtype=torch.bool)
    logits = dllm.forward(ModelInputs(ids, position_ids_from_mask(real), bidirectional_mask(real), 0, ids.shape[1]))
    assert_logits_close(logits, torch.cat([raw[:, :1], raw[:, :-1]], dim=1))  # Dream's own realignment


@pytest.mark.parametrize("family", ["llada", "dream"])
def test_native_tokenizers_give_the_official_prompt_ids(family):
    dllm = DiffusionLM.from_spec(ModelSpec(path=str(REFERENCE / f"{family}-tiny")))
    assert dllm.encode(PROMPTS) == OFFICIAL["prompt_ids"][family]


@pytest.mark.parametrize("family, excluded", [("llada", [98, 102, 103]), ("dream", [276, 277, 278, 279])])
def test_ids_the_project_never_proposes_carry_no_mass_in_the_fixtures(official_logits, family, excluded):
    """The premise of comparing probabilities: the official softmax includes the mask id and the head's padding
    ids, the project's excludes them (they are never proposed). The fixtures' heads give them logit 0 against
    logits of tens, as trained models give them almost nothing, so the probabilities differ by a relative 1e-4 at
    most (measured: 1.3e-5 for LLaDA, 6e-8 for Dream)."""
    dllm = DiffusionLM.from_spec(ModelSpec(path=str(REFERENCE / f"{family}-tiny")))
    assert sorted({dllm.mask_token_id, *dllm.undecodable_ids}) == excluded
    for name in (f"{family}.full", f"{family}.padded"):
        share = official_logits[name].softmax(-1)[..., excluded].sum(-1)
        assert float(share.max()) < 1e-4, name
