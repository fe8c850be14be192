"""Fast-dLLM's prefix and dual caches: the positional key/value store, exactness where the approximation vanishes,
refresh schedule, batch invariance."""

from __future__ import annotations

import pytest
import torch

from dlm_decode import load_config
from dlm_decode.decoder import Decoder
from dlm_decode.errors import PluginError
from dlm_decode.hookspecs import hookimpl
from dlm_decode.masks import bidirectional_mask, position_ids_from_mask
from dlm_decode.models.forward import run_hf
from dlm_decode.models.kv_store import PositionalKVCache
from dlm_decode.state import Window
from dlm_decode.strategies.windows import BlocksConfig, BlockWindow
from dlm_decode.testing.models import TinySize, random_model
from dlm_decode.testing.registry import registry_with

from helpers import PROMPTS, ForwardRecorder, StepRecorder, assert_logits_close


def decoder(dllm, *overrides, **kwargs):
    return Decoder(
        load_config(
            {}, ["decoder.window=blocks", "decoder.verification=threshold", "generation.max_new_tokens=32", *overrides]
        ),
        dllm=dllm,
        **kwargs,
    )


# --- the positional store ----------------------------------------------------------------------------------


def test_store_writes_at_positions_and_reads_all():
    store = PositionalKVCache(5)
    assert store.get_seq_length() == 0
    keys, values = torch.randn(2, 3, 5, 4), torch.randn(2, 3, 5, 4)
    for layer in range(2):
        store.set_queries(0)
        read_keys, read_values = store.update(keys + layer, values - layer, layer)
        assert torch.equal(read_keys, keys + layer) and torch.equal(read_values, values - layer)
    assert store.get_seq_length() == 5

    new_keys, new_values = torch.randn(2, 3, 2, 4), torch.randn(2, 3, 2, 4)
    write = torch.tensor([[True, False], [True, True]])  # row 0 writes column 1 only, row 1 columns 1 and 2
    store.set_queries(1, write)
    read_keys, read_values = store.update(new_keys, new_values, 0)
    expected_keys, expected_values = keys.clone(), values.clone()
    expected_keys[0, :, 1], expected_values[0, :, 1] = new_keys[0, :, 0], new_values[0, :, 0]
    expected_keys[1, :, 1:3], expected_values[1, :, 1:3] = new_keys[1], new_values[1]
    assert torch.equal(read_keys, expected_keys) and torch.equal(read_values, expected_values)
    assert torch.equal(store.layers[1].keys, keys + 1), "a write to layer 0 touched layer 1"

    store.set_queries(4)
    with pytest.raises(ValueError, match=r"queries \[4, 6\) run past the store's 5 columns"):
        store.update(new_keys, new_values, 1)
    fresh = PositionalKVCache(5)
    fresh.set_queries(1)
    with pytest.raises(
        ValueError,
        match=r"first forward into a positional store must start at column 0 and "
        r"write every row, got columns \[1, 3\)",
    ):
        fresh.update(new_keys, new_values, 0)
    fresh.set_queries(0, write)
    with pytest.raises(ValueError, match="with a write mask"):
        fresh.update(new_keys, new_values, 0)
    fresh.set_queries(0)  # a first forward shorter than the store: the columns after it hold zeros
    read_keys, _ = fresh.update(new_keys, new_values, 0)
    assert torch.equal(read_keys[:, :, :2], new_keys) and not read_keys[:, :, 2:].any()
    fresh.set_queries(1, key_end=3)  # queries [1, 3) attending to columns [0, 3) only
    assert fresh.get_mask_sizes(2, 0) == (3, 0)
    read_keys, read_values = fresh.update(new_keys + 1, new_values + 1, 0)
    assert read_keys.shape[2] == read_values.shape[2] == 3
    assert torch.equal(read_keys[:, :, 1:3], new_keys + 1) and torch.equal(read_keys[:, :, :1], new_keys[:, :, :1])


def tiny_hf(family: str):
    """A random bidirectional HF model of ``family`` with grouped-query attention (1 key/value head of 2)."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    config_cls, model_cls = {"llama": (LlamaConfig, LlamaForCausalLM), "qwen2": (Qwen2Config, Qwen2ForCausalLM)}[family]
    size: TinySize = {"max_positions": 64}
    return random_model(
        (config_cls, model_cls), size, vocab_size=50, num_key_value_heads=1, initializer_range=0.5, is_causal=False
    ).eval()


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@torch.inference_mode()
def test_store_threads_positions_and_masks_through_hf_attention(family):
    """Left-padded batch: a span forward against the store filled by a full forward reproduces the full forward's
    logits (unchanged tokens have unchanged keys/values), and a row the write mask skips keeps its keys/values."""
    model = tiny_hf(family)
    attention = torch.ones(3, 12, dtype=torch.bool)
    attention[1, :4] = attention[2, :7] = False
    ids = torch.randint(1, 50, (3, 12), generator=torch.Generator().manual_seed(1))
    positions, mask = position_ids_from_mask(attention), bidirectional_mask(attention)
    store = PositionalKVCache(12)
    store.set_queries(0)
    full = run_hf(model, ids, positions, mask, store)
    assert_logits_close(full, run_hf(model, ids, positions, mask))  # a write-all store leaves the forward as is

    start, end = 7, 10
    store.set_queries(start)
    span = run_hf(model, ids[:, start:end], positions[:, start:end], mask[:, :, start:end], store)
    assert_logits_close(span, full[:, start:end])

    before = [layer.keys.clone() for layer in store.layers]
    changed = ids.clone()
    changed[:, start:end] = (changed[:, start:end] + 1) % 50
    write = torch.zeros(3, end - start, dtype=torch.bool)
    write[0] = True
    store.set_queries(start, write)
    masked_write = run_hf(model, changed[:, start:end], positions[:, start:end], mask[:, :, start:end], store)
    assert all(torch.equal(layer.keys[1:], old[1:]) for layer, old in zip(store.layers, before))
    assert not torch.equal(store.layers[0].keys[0], before[0][0])
    reference = PositionalKVCache(12)
    reference.set_queries(0)
    run_hf(model, ids, positions, mask, reference)
    reference.set_queries(start)
    written = run_hf(model, changed[:, start:end], positions[:, start:end], mask[:, :, start:end], reference)
    assert_logits_close(masked_write[0], written[0])  # the write mask of other rows leaves row 0 as is


# --- decoding ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [3, 8, 32])
def test_with_one_layer_the_caches_decode_exactly_like_no_cache(one_layer, size):
    """A layer-0 key/value depends only on its own token and position, so reused keys/values are exact as long as
    their tokens did not change: any difference from ``none`` is a bug in spans, positions, masks or refreshes
    (including the refresh after an EOS fills a row's tail). Size 32 is one block spanning the generated region."""
    common = [f"decoder.window.size={size}", "decoder.verification.threshold=0.5", "generation.max_new_tokens=24"]
    plain = decoder(one_layer, *common).generate(PROMPTS)
    assert any(len(ids) < 24 for ids in plain.token_ids), "no row ended early: the EOS-fill path went untested"
    assert any(max(s.commits_per_step) > 1 for s in plain.stats), "no step committed in parallel"
    for cache in ("prefix", "dual"):
        cached = decoder(one_layer, *common, f"decoder.cache={cache}").generate(PROMPTS)
        assert cached.token_ids == plain.token_ids, cache
        assert [s.nfe for s in cached.stats] == [s.nfe for s in plain.stats], cache


def test_one_block_spanning_the_canvas_makes_prefix_and_dual_the_same(sharp):
    """With a single block there is no suffix to reuse: both caches recompute the generated region every step.
    (They still differ from ``none`` for models of two layers or more: the prompt's keys/values at layer >= 1 were
    computed at the refresh, when the generated region was all masks.)"""
    common = ["decoder.window.size=16", "decoder.verification.threshold=0.5", "generation.max_new_tokens=16"]
    prefix = decoder(sharp, *common, "decoder.cache=prefix").generate(PROMPTS)
    assert decoder(sharp, *common, "decoder.cache=dual").generate(PROMPTS).token_ids == prefix.token_ids


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_one_forward_per_step_full_at_each_block_start(sharp, cache):
    """Batch 1: the forward covers the whole canvas at the first step of each block (or after an EOS fill, for
    dual), else the block (dual) or the block and everything after it (prefix), always with every key."""
    model, recorder = ForwardRecorder(sharp), StepRecorder()
    out = decoder(
        model,
        "decoder.window.size=4",
        "decoder.verification.threshold=0.3",
        f"decoder.cache={cache}",
        observers=[recorder],
    ).generate(["pick a fruit please"])
    run = recorder.runs[0]
    width = run.initial.shape[1]
    before = [run.initial] + [step.canvas for step in run.steps[:-1]]
    masked = [run.initial == sharp.mask_token_id] + [step.masked for step in run.steps[:-1]]
    block = [run.gen_start + (int(m[0].int().argmax()) - run.gen_start) // 4 * 4 for m in masked]
    expected = []
    for step, first in enumerate(block):
        filled_suffix = step > 0 and bool((before[step][0, first + 4 :] != before[step - 1][0, first + 4 :]).any())
        if step == 0 or first != block[step - 1] or (cache == "dual" and filled_suffix):
            expected.append((0, width, width))
        else:
            expected.append((first, min(first + 4, width) if cache == "dual" else width, width))
    assert [(i.start, i.end, i.attention_mask.shape[-1]) for i in model.inputs] == expected
    assert out.stats[0].nfe == len(out.stats[0].commits_per_step) == len(expected)
    assert sum(1 for span in expected if span[0] == 0) < len(expected), "every step refreshed"


@pytest.mark.parametrize("cache", ["prefix", "dual"])
def test_batch_of_16_decodes_like_batch_of_1_with_caches(sharp, cache):
    prompts = [f"{word} {n}" for n in range(4) for word in ("sort:", "hi", "reverse: ab", "7+5=")]
    dec = decoder(
        sharp,
        "decoder.window.size=4",
        "decoder.verification.threshold=0.5",
        f"decoder.cache={cache}",
        "generation.max_new_tokens=16",
    )
    together = dec.generate(prompts, batch_size=16)
    assert len({tuple(ids) for ids in together.token_ids}) > 8, "rows too alike to test invariance"
    assert together.token_ids == [dec.generate([p], batch_size=1).token_ids[0] for p in prompts]


def test_an_eligible_column_outside_the_block_is_a_named_error(sharp):
    class BlockOfOne(BlockWindow):
        """Reports blocks of one column but makes a whole block of 4 eligible."""

        @hookimpl
        def dlm_window(self, state) -> Window:
            window = super().dlm_window(state)
            window.block_end = window.block_start + 1
            return window

    registry = registry_with(("window", "block_of_one", BlocksConfig, lambda config, context: BlockOfOne(4)))
    config = load_config(
        {}, ["decoder.window=block_of_one", "decoder.cache=dual", "decoder.verification=threshold"], registry=registry
    )
    with pytest.raises(PluginError, match="(?s)outside its row's block.*decoder.window=blocks"):
        Decoder(config, dllm=sharp, registry=registry).generate(["hi"])


@pytest.mark.parametrize("preset", ["fast-dllm", "fast-dllm-prefix"])
def test_presets_decode_several_tokens_per_forward(sharp, preset):
    config = load_config(f"configs/decoders/{preset}.yaml", ["generation.max_new_tokens=16"])
    out = Decoder(config, dllm=sharp).generate(PROMPTS)
    assert all(s.nfe == len(s.commits_per_step) for s in out.stats)
    assert any(max(s.commits_per_step) > 1 for s in out.stats)
