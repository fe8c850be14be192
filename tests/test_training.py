"""The trainer (smoke run, canvas layout, loss, quick evaluator) and the shipped embedded checkpoints."""

from __future__ import annotations

import os
import random
import shutil
import sysconfig
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from dlm_decode.errors import ModelError
from dlm_decode.eval.tasks import TASKS, load_examples
from dlm_decode.models.embedded import EMBEDDED_MODELS, embedded_model_dir
from dlm_decode.models.tokenizer import build_char_tokenizer
from dlm_decode.recipes import common
from dlm_decode.recipes import train_embedded as train

from helpers import assert_logits_close


@pytest.fixture(scope="module")
def tokenizer():
    return build_char_tokenizer()


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("pair")
    table = train.main(["--out", str(out), "--smoke", "--threads", "1"])
    return out, table


def test_smoke_run_writes_both_checkpoints_and_the_model_card(smoke_run):
    out, table = smoke_run
    for kind in ("dllm", "ar"):
        files = {p.name for p in (out / kind).iterdir()}
        assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= files
    card = (out / "MODEL_CARD.md").read_text()
    assert "python -m dlm_decode.recipes.train_embedded --out" in card and "--smoke" in card
    assert "| dllm k=all |" in card and "| ar |" in card
    assert set(table) == {"dllm k=1", "dllm k=2", "dllm k=4", "dllm k=all", "ar"}
    assert all(set(row) == {*TASKS, "mean"} for row in table.values())


def _logits(model, input_ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=input_ids).logits


def test_checkpoints_load_through_plain_transformers(smoke_run, tokenizer):
    out, _ = smoke_run
    dllm = AutoModelForCausalLM.from_pretrained(out / "dllm")
    ar = AutoModelForCausalLM.from_pretrained(out / "ar")
    assert dllm.config.is_causal is False and getattr(ar.config, "is_causal", True) is True
    assert common.count_parameters(ar) < common.count_parameters(dllm)
    # Perturbing the last token moves the dLLM's earlier logits (bidirectional), never the AR model's (causal).
    input_ids = torch.tensor([tokenizer.encode("12+34=", add_special_tokens=False)])
    perturbed = input_ids.clone()
    perturbed[0, -1] = tokenizer.mask_token_id
    assert not torch.allclose(_logits(dllm, input_ids)[0, :-1], _logits(dllm, perturbed)[0, :-1])
    assert_logits_close(_logits(ar, input_ids)[0, :-1], _logits(ar, perturbed)[0, :-1])
    loaded = AutoTokenizer.from_pretrained(out / "dllm")
    assert (loaded.pad_token_id, loaded.bos_token_id, loaded.eos_token_id, loaded.mask_token_id) == (0, 1, 2, 3)


def test_tokenizer_round_trips_every_task(tokenizer, smoke_run):
    loaded = AutoTokenizer.from_pretrained(smoke_run[0] / "ar")
    for example in load_examples(None, "test", 20):
        for text in (example.prompt, example.answer):
            ids = tokenizer.encode(text, add_special_tokens=False)
            assert len(ids) == len(text) and tokenizer.decode(ids) == text
            assert loaded.encode(text, add_special_tokens=False) == ids


def test_prompt_ids_follow_the_chat_template(tokenizer):
    prompts = ["sort 3 1 2", "name a fruit"]
    messages = [[{"role": "user", "content": p}] for p in prompts]
    expected = [tokenizer.apply_chat_template(m, tokenize=True, return_dict=False) for m in messages]
    assert common.prompt_ids(tokenizer, prompts) == expected


def test_dllm_rows_follow_the_decoder_canvas(tokenizer):
    rng = random.Random(0)
    examples = load_examples(None, "train", 50)
    rows = common.dllm_rows(examples, tokenizer, rng)
    lengths, truncated = set(), 0
    for example, (ids, region) in zip(examples, rows, strict=True):
        prompt = common.prompt_ids(tokenizer, [example.prompt])[0]
        answer = tokenizer.encode(example.answer, add_special_tokens=False)
        assert ids[: len(prompt)] == prompt and len(ids) == len(prompt) + region
        generated = ids[len(prompt) :]
        if region <= len(answer):  # a canvas cut inside the answer
            truncated += 1
            assert generated == answer[:region]
        else:
            assert generated == answer + [tokenizer.eos_token_id] * (region - len(answer))
            assert region <= common.MAX_REGION
        lengths.add(region)
    assert 0 < truncated < len(rows) / 4 and len(lengths) > 20
    batches = common.make_batches(rows, tokenizer.pad_token_id, 128)
    assert [b.input_ids.shape[0] for b in batches] == [128, 128, 44]
    for batch in batches:
        assert not (batch.targets & ~batch.attention_mask).any()
        assert batch.input_ids.shape[1] == batch.attention_mask.sum(1).max()
    shortest = sorted(rows, key=lambda row: len(row[0]))[:128]
    assert batches[0].targets.sum(1).tolist() == [region for _, region in shortest]


def test_ar_rows_end_with_one_eos(tokenizer):
    examples = load_examples(["gsm"], "train", 3)
    for example, (ids, targets) in zip(examples, train.ar_rows(examples, tokenizer), strict=True):
        assert tokenizer.decode(ids[-targets:]) == example.answer + tokenizer.eos_token
        assert ids[-targets - 1] == tokenizer.convert_tokens_to_ids("\n")


@pytest.mark.parametrize("kind", ["dllm", "ar"])
def test_losses_fall_when_fitting_one_batch(kind, tokenizer):
    torch.manual_seed(0)
    arch = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}
    model = train.LlamaForCausalLM(train.model_config(tokenizer, arch, causal=kind == "ar"))
    examples = load_examples(["reverse"], "train", 8)
    if kind == "ar":
        rows = train.ar_rows(examples, tokenizer)
    else:
        rows = common.dllm_rows(examples, tokenizer, random.Random(0))
    (batch,) = common.make_batches(rows, tokenizer.pad_token_id, 8)

    def loss_fn(step: int) -> torch.Tensor:
        if kind == "ar":
            return train.ar_loss(model, batch)
        generator = torch.Generator().manual_seed(step % 4)
        return train.masked_diffusion_loss(model, batch, tokenizer.mask_token_id, generator)

    with torch.no_grad():
        before = sum(loss_fn(s).item() for s in range(4))
    schedule = common.LearningRateSchedule(steps=40, lr=1e-2, warmup=2)
    common.train_model(model, loss_fn, schedule, label=kind, log_every=100)
    with torch.no_grad():
        after = sum(loss_fn(s).item() for s in range(4))
    assert after < 0.7 * before


def _can_compile_on_cpu() -> bool:
    """Inductor builds C++ kernels: it needs a compiler and the Python headers."""
    headers = Path(sysconfig.get_paths()["include"]) / "Python.h"
    return shutil.which(os.environ.get("CXX", "g++")) is not None and headers.exists()


@pytest.mark.slow  # compiling the forwards (torch.compile on the CPU)
@pytest.mark.skipif(not _can_compile_on_cpu(), reason="torch.compile on the CPU needs g++ and Python.h")
@pytest.mark.parametrize("kind", ["dllm", "ar"])
def test_compiled_training_matches_eager_training(kind, tokenizer):
    """``--compile`` changes how the forwards run, not what is trained: same data, masks and updates."""
    arch = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}
    runs = [
        train.train(kind, tokenizer, common.TrainingRun(steps=3, batch_size=8, lr=1e-2, compile=compiled), arch)[0]
        for compiled in (False, True)
    ]
    eager, compiled = (dict(model.named_parameters()) for model in runs)
    assert eager.keys() == compiled.keys()
    for name, value in eager.items():  # three AdamW steps of lr 1e-2 move weights by about 3e-2: a difference of
        # 1% of one step (plus 0.1% of the weight itself) would be another update, not float reordering
        torch.testing.assert_close(compiled[name], value, rtol=1e-3, atol=1e-4, msg=name)


def test_training_draws_tasks_with_their_weights():
    """Each task's share of 6,000 draws is within 5 binomial standard deviations of its weight's share."""
    assert set(common.TASK_WEIGHTS) == set(TASKS)
    draws = common.draw_examples(random.Random(0), 6000, common.TASK_WEIGHTS)
    total = sum(common.TASK_WEIGHTS.values())
    for name, weight in common.TASK_WEIGHTS.items():
        share = weight / total
        count = sum(example.task == name for example in draws)
        assert abs(count - 6000 * share) <= 5 * (6000 * share * (1 - share)) ** 0.5, (name, count)
    assert all(TASKS[example.task].check(example, example.answer) for example in draws[:500])


def test_schedule_warms_up_then_decays():
    schedule = common.LearningRateSchedule(steps=100, lr=1.0, warmup=10)
    factors = [schedule.factor(step) for step in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(factors[9:], factors[10:]))
    assert factors[-1] == pytest.approx(schedule.min_lr_ratio, abs=1e-3)


class ScriptedModel:
    """A stand-in model: at the last ``len(script)`` positions, favour ``script[j]`` with logit ``strength[j]``
    (bidirectional view), or at the last position favour ``script[generated]`` (causal view)."""

    def __init__(self, script: list[int], strength: list[float], causal: bool, vocab: int = 100):
        self.config = SimpleNamespace(is_causal=causal)
        self.script, self.strength, self.vocab, self.calls = script, strength, vocab, []

    def __call__(self, input_ids, attention_mask, position_ids):
        self.calls.append(input_ids.shape[1])
        logits = torch.zeros(*input_ids.shape, self.vocab)
        if self.config.is_causal:
            logits[:, -1, self.script[len(self.calls) - 1]] = 5.0
        else:
            width = len(self.script)
            for j, (token, strength) in enumerate(zip(self.script, self.strength, strict=True)):
                logits[:, input_ids.shape[1] - width + j, token] = strength
        return SimpleNamespace(logits=logits)


def test_dllm_greedy_commits_most_confident_first_and_fills_after_eos(tokenizer):
    a, b, c = (tokenizer.convert_tokens_to_ids(ch) for ch in "abc")
    eos = tokenizer.eos_token_id
    script, strength = [a, b, eos, c, c, c], [2.0, 3.0, 9.0, 8.0, 8.0, 8.0]
    for k, calls in ((1, 3), (2, 2), (None, 1)):
        model = ScriptedModel(script, strength, causal=False)
        outputs = train.dllm_generate_greedy(model, tokenizer, ["x", "yy"], max_new_tokens=6, tokens_per_step=k)
        # EOS (the most confident) is committed first and fills the later positions, so "c" never appears.
        assert outputs == ["ab", "ab"] and len(model.calls) == calls, k


def test_ar_greedy_stops_at_eos(tokenizer):
    x, y = (tokenizer.convert_tokens_to_ids(ch) for ch in "xy")
    model = ScriptedModel([x, y, tokenizer.eos_token_id, x], [], causal=True)
    assert train.ar_generate_greedy(model, tokenizer, ["abc", "d"], max_new_tokens=8) == ["xy", "xy"]
    assert len(model.calls) == 3


def test_quick_eval_scores_with_the_checkers():
    table = common.quick_eval(lambda prompts: ["0" for _ in prompts], n_per_task=4, tasks=("arith", "reverse"))
    assert table == {"arith": 0.0, "reverse": 0.0, "mean": 0.0}
    answers = {e.prompt: e.answer for e in load_examples(["sort"], "test", 4)}
    assert common.quick_eval(lambda ps: [answers[p] for p in ps], n_per_task=4, tasks=("sort",))["sort"] == 1.0


def test_embedded_models_are_listed_and_unknown_names_fail():
    assert set(EMBEDDED_MODELS) == {"dllm", "ar", "block"}
    with pytest.raises(ModelError, match="embedded:dllm, embedded:ar, embedded:block"):
        embedded_model_dir("gpt5")


def test_shipped_pair_loads_with_plain_transformers_and_is_trained(tokenizer):
    """The shipped pair: plain HF loading, a bidirectional dLLM, a smaller AR model, and the quality the model
    card reports (the AR model solves most sort/reverse/pick/sudoku problems; the dLLM, still under-trained,
    answers in the task formats rather than stopping at once)."""
    dllm = AutoModelForCausalLM.from_pretrained(embedded_model_dir("dllm"))
    ar = AutoModelForCausalLM.from_pretrained(embedded_model_dir("ar"))
    assert dllm.config.is_causal is False
    assert common.count_parameters(ar) < common.count_parameters(dllm)
    loaded = AutoTokenizer.from_pretrained(embedded_model_dir("dllm"))
    assert loaded.get_vocab() == AutoTokenizer.from_pretrained(embedded_model_dir("ar")).get_vocab()
    ar_table = common.quick_eval(
        lambda ps: train.ar_generate_greedy(ar, loaded, ps, common.EVAL_MAX_NEW_TOKENS),
        n_per_task=10,
        tasks=("sort", "reverse", "pick"),
    )
    assert ar_table["mean"] >= 0.6, ar_table
    prompts = [e.prompt for e in load_examples(["sort"], "test", 10)]
    outputs = train.dllm_generate_greedy(dllm, loaded, prompts, common.EVAL_MAX_NEW_TOKENS, 1)
    assert sum(bool(o.strip()) and set(o) <= set("0123456789 ") for o in outputs) >= 8, outputs
    assert (embedded_model_dir("dllm").parent / "MODEL_CARD.md").is_file()


# --- the block-diffusion recipe ---------------------------------------------------------------------------------


def test_two_stream_training_shows_each_block_what_the_decoder_shows_it(tokenizer):
    """The noisy copy's logits of block b equal those of one decoding forward over [prompt, clean blocks < b, the
    noisy block b, masks after it] with the block-causal mask: training and decoding see the same context."""
    from dlm_decode.masks import AttentionPattern, position_ids_from_mask
    from dlm_decode.recipes import train_block

    model = AutoModelForCausalLM.from_pretrained(embedded_model_dir("dllm")).eval()
    rng = random.Random(0)
    rows = common.dllm_rows(common.draw_examples(rng, 6, common.TASK_WEIGHTS), tokenizer, rng)
    batch = common.make_batches(rows, tokenizer.pad_token_id, 16)[0]
    size = 8
    blocks = train_block.region_blocks(batch.targets, size)
    masked = batch.targets & (torch.rand(batch.input_ids.shape, generator=torch.Generator().manual_seed(1)) < 0.5)
    noisy = batch.input_ids.masked_fill(masked, tokenizer.mask_token_id)
    positions = position_ids_from_mask(batch.attention_mask)
    with torch.no_grad():
        both = model(
            input_ids=torch.cat([noisy, batch.input_ids], -1),
            position_ids=torch.cat([positions] * 2, -1),
            attention_mask=train_block.two_stream_mask(batch.attention_mask, batch.targets, blocks),
        ).logits
        compared = 0
        for row in range(noisy.shape[0]):
            for block in range(int(blocks[row].max()) + 1):
                canvas = torch.where(blocks[row] < block, batch.input_ids[row], noisy[row])
                canvas = torch.where(blocks[row] > block, tokenizer.mask_token_id, canvas)
                gen_start = int(batch.targets[row].int().argmax())  # the decoder's blocks start at the region
                decoding = AttentionPattern(size).mask(batch.attention_mask[row : row + 1], gen_start)
                alone = model(
                    input_ids=canvas[None], position_ids=positions[row : row + 1], attention_mask=decoding
                ).logits[0]
                columns = blocks[row] == block
                assert_logits_close(both[row, : noisy.shape[1]][columns], alone[columns])
                compared += 1
    assert compared > 10


def test_block_recipe_smoke_run_writes_a_block_causal_checkpoint(tmp_path):
    from dlm_decode.config.schema import ModelSpec
    from dlm_decode.masks import AttentionPattern
    from dlm_decode.models.adapter import DiffusionLM
    from dlm_decode.recipes import train_block

    table = train_block.main(["--out", str(tmp_path), "--smoke", "--threads", "1"])
    assert set(table) == {"block k=1", "block k=2", "block k=4", "block k=block"}
    card = (tmp_path / "block" / "MODEL_CARD.md").read_text()
    assert "python -m dlm_decode.recipes.train_block --out" in card and "--init embedded:dllm" in card
    dllm = DiffusionLM.from_spec(ModelSpec(path=str(tmp_path / "block")))
    assert dllm.attention == AttentionPattern(block_size=8)


def test_shipped_block_model_decodes_block_by_block(tokenizer):
    """The quality its model card reports, on a few sort and reverse problems (one token per step)."""
    from dlm_decode.recipes import train_block

    model = AutoModelForCausalLM.from_pretrained(embedded_model_dir("block")).eval()
    table = common.quick_eval(
        lambda ps: train_block.block_generate_greedy(model, tokenizer, ps, common.EVAL_MAX_NEW_TOKENS, 1),
        n_per_task=10,
        tasks=("sort", "reverse"),
    )
    assert table["mean"] >= 0.8, table
