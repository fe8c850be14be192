"""The dLLM adapter (models/adapter.py, models/shifted.py) and model loading (models/loading.py): devices and
dtypes, a model in memory (``Decoder.from_model``, docs/api.md's example), the remote-code path on stand-ins
(tests/stand_ins.py): Dream's realignment through caches, the spiked stand-ins' known answers, LLaDA's official
calling convention. The native LLaDA and Dream loading is tests/test_native.py's; wrong paths and missing files
tests/test_loading_errors.py's."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from dlm_decode import ModelError
from dlm_decode.config.schema import ModelSpec
from dlm_decode.decoder import Decoder
from dlm_decode.masks import bidirectional_mask, position_ids_from_mask
from dlm_decode.models.adapter import DiffusionLM
from dlm_decode.models.causal import new_cache
from dlm_decode.models.kv_store import PositionalKVCache
from dlm_decode.state import ModelInputs
from dlm_decode.testing.models import spike_text

from helpers import assert_logits_close
from stand_ins import PROMPTS, decoder, expected_texts, load


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has MPS")
def test_unavailable_mps_device_is_a_model_error_naming_the_key():
    with pytest.raises(
        ModelError,
        match=r"(?s)`model.dllm.device` is 'mps' but MPS is not available.*fix: set "
        r"model.dllm.device=cpu",
    ):
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
    with pytest.raises(
        ModelError,
        match=r"(?s)`model.dllm.device` = 'cpu'.*invalid device ordinal.*fix: set "
        r"model.dllm.device to a device this machine has",
    ):
        Decoder.from_config({}, ["model.dllm.device=cpu"])


def test_a_model_in_memory_decodes_as_the_same_checkpoint_loaded_from_its_path():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dlm_decode.models.embedded import embedded_model_dir

    path = embedded_model_dir("dllm")
    overrides = ["generation.max_new_tokens=12"]
    in_memory = Decoder.from_model(
        AutoModelForCausalLM.from_pretrained(path),
        AutoTokenizer.from_pretrained(path),
        "configs/decoders/llada.yaml",
        overrides,
    )
    loaded = Decoder.from_config("configs/decoders/llada.yaml", overrides)
    prompts = ["sort 3 1 2", "reverse abc"]
    assert in_memory.generate(prompts).token_ids == loaded.generate(prompts).token_ids
    assert in_memory.weights_hash == loaded.weights_hash


def test_the_in_memory_example_of_the_api_page_runs(capsys):
    text = (Path(__file__).resolve().parent.parent / "docs" / "api.md").read_text(encoding="utf-8")
    section = text.split("## Decoding a model in memory", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    exec(compile(code, "docs/api.md", "exec"), {})
    printed = capsys.readouterr().out.strip()
    assert printed.startswith("['") and printed.endswith("']"), printed


def test_a_plain_module_is_refused_with_what_is_needed():
    with pytest.raises(
        ModelError,
        match=r"(?s)DiffusionLM needs a transformers PreTrainedModel whose `config`.*got "
        r"Linear \(a torch.nn.Module\).*fix: pass a transformers model.*adapter "
        r"implementing the DiffusionLM interface.*Decoder\(config, dllm=adapter\)",
    ):
        Decoder.from_model(torch.nn.Linear(4, 4), None, "configs/decoders/llada.yaml")


def test_a_transformers_model_without_its_tokenizer_is_refused():
    from transformers import AutoModelForCausalLM

    from dlm_decode.models.embedded import embedded_model_dir

    model = AutoModelForCausalLM.from_pretrained(embedded_model_dir("dllm"))
    with pytest.raises(ModelError, match=r"(?s)got a LlamaForCausalLM but no tokenizer.*fix: pass the tokenizer"):
        Decoder.from_model(model, None)


def test_unknown_local_model_path_is_named():
    with pytest.raises(ModelError, match="(?s)model.dllm.path.*no-such-dir"):
        Decoder.from_config({}, ["model.dllm.path=no-such-dir"])


def test_remote_code_needs_trust_remote_code(stand_ins):
    for name in ("dream", "llada"):
        with pytest.raises(
            ModelError,
            match=r"(?s)runs the checkpoint's own modeling code \(configuration_.*"
            r"model\.dllm\.trust_remote_code=true.*implementation=native",
        ):
            DiffusionLM.from_spec(ModelSpec(path=str(stand_ins[name]), implementation="remote"))


def test_a_stand_in_in_another_layout_is_refused_natively(stand_ins):
    """The LLaDA stand-in keeps Llama's config fields under model_type llada: not LLaDA's layout, which the native
    mapping refuses instead of reading its defaults for the missing dimensions."""
    with pytest.raises(
        ModelError,
        match=r"(?s)has no d_model, n_heads, n_layers, which every LLaDA checkpoint's "
        r"config.json has.*implementation=remote",
    ):
        DiffusionLM.from_spec(ModelSpec(path=str(stand_ins["llada"])))


def test_dtype_and_device_auto(stand_ins):
    """``auto`` resolves to CUDA where there is one, else the CPU; every weight is converted and placed there, and
    the logits of a forward come back in that dtype on that device."""
    dllm = load(stand_ins["dream"], dtype="bfloat16", device="auto")
    expected = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    assert dllm.device.type == expected.type
    assert {(p.dtype, p.device.type) for p in dllm.model.parameters()} == {(torch.bfloat16, expected.type)}
    ids, positions, mask = canvas_inputs(dllm, ["hi"], masks=2)
    logits = dllm.forward(
        ModelInputs(ids.to(dllm.device), positions.to(dllm.device), mask.to(dllm.device), 0, ids.shape[1])
    )
    assert logits.dtype == torch.bfloat16 and logits.device.type == expected.type


def test_device_map_places_the_weights(stand_ins):
    """With ``device_map`` accelerate places the weights and ``device`` is ignored: here ``device: mps``, which this
    machine lacks, would fail if it were used."""
    pytest.importorskip("accelerate")
    dllm = load(stand_ins["dream"], device_map="cpu", device="mps")
    assert {p.device.type for p in dllm.model.parameters()} == {"cpu"} and dllm.device.type == "cpu"


def canvas_inputs(dllm: DiffusionLM, prompts: list[str], masks: int, seed: int = 0):
    """A left-padded canvas [B, N] of prompt + random generated tokens, its positions and full mask."""
    encoded = dllm.encode(prompts)
    width = max(map(len, encoded)) + masks
    ids = torch.full((len(prompts), width), dllm.pad_token_id)
    attention = torch.zeros(ids.shape, dtype=torch.bool)
    generator = torch.Generator().manual_seed(seed)
    for row, prompt in enumerate(encoded):
        tail = torch.randint(0, 96, (masks,), generator=generator)
        ids[row, width - masks - len(prompt) :] = torch.cat([torch.tensor(prompt), tail])
        attention[row, width - masks - len(prompt) :] = True
    return ids, position_ids_from_mask(attention), bidirectional_mask(attention)


def span(ids, positions, mask, start, end, cached: bool) -> ModelInputs:
    keys = slice(0, end) if cached else slice(start, end)
    return ModelInputs(ids[:, start:end], positions[:, start:end], mask[:, :, start:end, keys], start, end)


def test_dream_logits_are_shifted_back_onto_their_columns(stand_ins):
    dllm = load(stand_ins["dream"])
    ids, positions, mask = canvas_inputs(dllm, PROMPTS, 6)
    raw = dllm.model(input_ids=ids, position_ids=positions, attention_mask=mask).logits
    realigned = dllm.forward(span(ids, positions, mask, 0, ids.shape[1], cached=False))
    assert torch.equal(realigned[:, 1:], raw[:, :-1]), "the same values, moved one column"
    as_bidirectional = load(stand_ins["dream"], family="bidirectional").forward(
        span(ids, positions, mask, 0, ids.shape[1], cached=False)
    )
    assert torch.equal(as_bidirectional, raw)


@pytest.mark.parametrize("store", ["dynamic", "positional"])
def test_a_cached_span_takes_its_first_logit_from_the_column_before_it(stand_ins, store):
    """One layer: keys/values depend only on token and position, so any cached span must reproduce the full
    forward exactly, including the span's first column, whose prediction sits at the column before the span."""
    dllm = load(stand_ins["dream1"])
    ids, positions, mask = canvas_inputs(dllm, PROMPTS, 8)
    width = ids.shape[1]
    full = dllm.forward(span(ids, positions, mask, 0, width, cached=False))
    cache = new_cache() if store == "dynamic" else PositionalKVCache(width)
    if store == "positional":
        cache.set_queries(0)
    assert_logits_close(dllm.forward(span(ids, positions, mask, 0, width, cached=True), cache), full)
    for start in (width - 5, width - 8, width - 2):  # spans moving back and forth, as kv_window's do
        if store == "dynamic":
            cache.crop(start - cache.get_seq_length())
        else:
            cache.set_queries(start)
        logits = dllm.forward(span(ids, positions, mask, start, width, cached=True), cache)
        assert_logits_close(logits, full[:, start:])  # span from column `start`
        assert cache.get_seq_length() == width, "the duplicate of the previous column is gone"


def test_the_previous_column_keeps_its_frozen_key_value(stand_ins):
    """Two layers: after the tokens change, a span from `start` sees the frozen (stale) keys/values before it,
    including column start - 1's, whichever store holds them."""
    dllm = load(stand_ins["dream"])
    ids, positions, mask = canvas_inputs(dllm, PROMPTS, 8)
    width, start = ids.shape[1], ids.shape[1] - 4
    results = []
    for store in ("dynamic", "positional"):
        cache = new_cache() if store == "dynamic" else PositionalKVCache(width)
        if store == "positional":
            cache.set_queries(0)
        dllm.forward(span(ids, positions, mask, 0, width, cached=True), cache)
        changed = ids.clone()
        changed[:, start:] = 7
        if store == "dynamic":
            cache.crop(start - width)
        else:
            cache.set_queries(start)
        results.append(dllm.forward(span(changed, positions, mask, start, width, cached=True), cache))
    assert_logits_close(results[0], results[1])


SETUPS = {
    "none": [],
    "kv_window+lookahead": [
        "decoder.cache=kv_window",
        "decoder.cache.window=1",
        "decoder.window=lookahead",
        "decoder.window.max_lookahead=3",
    ],
    "prefix": ["decoder.window=blocks", "decoder.window.size=4", "decoder.cache=prefix"],
    "dual": ["decoder.window=blocks", "decoder.window.size=4", "decoder.cache=dual"],
    "threshold": ["decoder.verification=threshold", "decoder.verification.threshold=0.5"],
}


@pytest.mark.parametrize("family", ["dream_spike", "llada_spike"])
@pytest.mark.parametrize("setup", list(SETUPS))
def test_spiked_stand_ins_decode_their_answer_under_every_cache(stand_ins, family, setup):
    dec = decoder(stand_ins[family], *SETUPS[setup])
    out = dec.generate(PROMPTS)
    assert out.texts == expected_texts(dec.dllm, PROMPTS, 10)


def test_without_realignment_the_dream_answer_is_off_by_one(stand_ins):
    """The control: reading the Dream-like model as an unshifted model writes the next position's letter."""
    dec = decoder(stand_ins["dream_spike"], "model.dllm.family=bidirectional")
    shifted = [spike_text(range(len(ids) + 1, len(ids) + 11)) for ids in dec.dllm.encode(PROMPTS)]
    assert dec.generate(PROMPTS).texts == shifted


def test_wino_shadow_is_refused_for_shifted_logits(stand_ins):
    dec = decoder(stand_ins["dream"], "decoder.window=blocks", "decoder.window.size=4", "decoder.verification=wino")
    with pytest.raises(ModelError, match="shadow block"):
        dec.generate(["hi"])


def test_legacy_llada_decodes_alone_like_the_modern_convention(stand_ins):
    legacy = decoder(stand_ins["llada_legacy"], "generation.batch_size=1")
    assert type(legacy.dllm.model).__name__ == "LLaDALegacyModelLM"
    assert legacy.generate(PROMPTS).texts == expected_texts(legacy.dllm, PROMPTS, 10)
    same_length = ["abc", "xyz"]  # no padding: a batch is fine
    texts = decoder(stand_ins["llada_legacy"]).generate(same_length).texts
    assert texts == expected_texts(legacy.dllm, same_length, 10)


def test_legacy_llada_refuses_ragged_batches_and_caches(stand_ins):
    with pytest.raises(ModelError, match=r"(?s)position_ids.*generation\.batch_size=1"):
        decoder(stand_ins["llada_legacy"]).generate(PROMPTS)
    with pytest.raises(ModelError, match=r"decoder\.cache=none"):
        decoder(stand_ins["llada_legacy"], "decoder.cache=kv_window", "generation.batch_size=1").generate(["hi"])
