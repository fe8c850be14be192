"""Family adapters on local stand-ins: a Dream-like shifted-logit Qwen2 and a LLaDA-like Llama (both loaded as
remote code, offline), a causal Qwen2 verifier with a narrower head, and APD across them.

The spiked stand-ins have a known answer by construction (no training): a correct adapter decodes the letter
``SPIKE_LETTERS[p % 26]`` at every generated position ``p``, so an off-by-one in Dream's realignment, in the
first column of a cached span or in LLaDA's positions shows up as wrong text.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from dlm_decode import ModelError
from dlm_decode.cli import main
from dlm_decode.config import load_config
from dlm_decode.config.schema import ModelSpec
from dlm_decode.decoder import Decoder
from dlm_decode.masks import bidirectional_mask, position_ids_from_mask
from dlm_decode.models.dry_run import dry_run
from dlm_decode.models.hf import DiffusionLM, new_cache
from dlm_decode.models.kv_store import PositionalKVCache
from dlm_decode.state import ModelInputs
from dlm_decode.testing.models import (
    build_dream_like,
    build_llada_like,
    build_qwen_like_verifier,
    build_tiny_checkpoint,
    dream_like_tokenizer,
    llada_like_tokenizer,
    spike_text,
)
from helpers import assert_logits_close

SPIKE = 40.0
PROMPTS = ["hi", "sort 3 1 2", "reverse abc"]  # different lengths: left padding in a batch
REMOTE = ["model.dllm.implementation=remote", "model.dllm.trust_remote_code=true"]  # the stand-ins run their code


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("families")
    return {
        "dream": build_dream_like(root / "dream", seed=0),
        "dream1": build_dream_like(root / "dream1", seed=0, layers=1),
        "dream_spike": build_dream_like(root / "dream_spike", position_spike=SPIKE),
        "llada": build_llada_like(root / "llada"),
        "llada_spike": build_llada_like(root / "llada_spike", position_spike=SPIKE),
        "llada_legacy": build_llada_like(root / "llada_legacy", position_spike=SPIKE, legacy=True),
        "qwen": build_qwen_like_verifier(root / "qwen"),
    }


def load(path, **spec) -> DiffusionLM:
    return DiffusionLM.from_spec(ModelSpec(path=str(path), implementation="remote", trust_remote_code=True, **spec))


def decoder(path, *overrides, **kwargs) -> Decoder:
    return Decoder.from_config({}, [f"model.dllm.path={path}", *REMOTE, "generation.max_new_tokens=10",
                                    "decoder.proposal=greedy", *overrides], **kwargs)


def expected_texts(dllm: DiffusionLM, prompts: list[str], new_tokens: int) -> list[str]:
    """The spike answer: generated column k of a prompt with n tokens has position n + k."""
    return [spike_text(range(len(ids), len(ids) + new_tokens)) for ids in dllm.encode(prompts)]


# --- family detection and special ids ---------------------------------------------------------------------------

def test_remote_code_needs_trust_remote_code(dirs):
    for name in ("dream", "llada"):
        with pytest.raises(ModelError, match=r"(?s)runs the checkpoint's own modeling code \(configuration_.*"
                                             r"model\.dllm\.trust_remote_code=true.*implementation=native"):
            DiffusionLM.from_spec(ModelSpec(path=str(dirs[name]), implementation="remote"))


def test_a_stand_in_in_another_layout_is_refused_natively(dirs):
    """The LLaDA stand-in keeps Llama's config fields under model_type llada: not LLaDA's layout, which the native
    mapping refuses instead of reading its defaults for the missing dimensions."""
    with pytest.raises(ModelError, match=r"(?s)has no d_model, n_heads, n_layers, which every LLaDA checkpoint's "
                                         r"config.json has.*implementation=remote"):
        DiffusionLM.from_spec(ModelSpec(path=str(dirs["llada"])))


def test_dream_like_ids_come_from_dreams_special_tokens(dirs):
    dllm = load(dirs["dream"])
    tok = dream_like_tokenizer()
    assert dllm.family.name == "dream" and dllm.family.shifted_logits
    assert type(dllm.model).__name__ == "DreamModel", "AutoModel fallback: Dream's auto_map has no causal-LM entry"
    assert dllm.mask_token_id == tok.convert_tokens_to_ids("<|mask|>")
    assert dllm.eos_token_ids == [tok.convert_tokens_to_ids("<|endoftext|>"), tok.convert_tokens_to_ids("<|im_end|>")]
    assert dllm.pad_token_id == dllm.fill_token_id == tok.convert_tokens_to_ids("<|endoftext|>")
    assert dllm.vocab_size == 112 > len(tok), "the head is wider than the tokenizer, as Dream's"


def test_llada_like_mask_id_comes_from_the_family_table(dirs):
    tok = llada_like_tokenizer()
    assert tok.mask_token_id is None, "LLaDA's tokenizer names no mask token"
    dllm = load(dirs["llada"])
    assert dllm.family.name == "llada" and not dllm.family.shifted_logits
    assert dllm.mask_token_id == tok.convert_tokens_to_ids("<|mdm_mask|>")
    assert dllm.eos_token_ids == [tok.convert_tokens_to_ids("<|endoftext|>"), tok.convert_tokens_to_ids("<|eot_id|>")]
    assert load(dirs["llada"], mask_token_id=5).mask_token_id == 5, "an explicit id wins"


def test_special_ids_outside_the_head_are_refused(dirs):
    with pytest.raises(ModelError, match="outside the dLLM's 104 logits"):
        load(dirs["llada"], mask_token_id=126336)


def test_dtype_and_device_auto(dirs):
    dllm = load(dirs["dream"], dtype="bfloat16", device="auto")
    assert next(dllm.model.parameters()).dtype == torch.bfloat16
    assert dllm.device.type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_device_map_places_the_weights(dirs):
    pytest.importorskip("accelerate")
    dllm = load(dirs["dream"], device_map="cpu")
    assert dllm.device.type == "cpu"


# --- Dream's realignment ----------------------------------------------------------------------------------------

def canvas_inputs(dllm: DiffusionLM, prompts: list[str], masks: int, seed: int = 0):
    """A left-padded canvas [B, N] of prompt + random generated tokens, its positions and full mask."""
    encoded = dllm.encode(prompts)
    width = max(map(len, encoded)) + masks
    ids = torch.full((len(prompts), width), dllm.pad_token_id)
    attention = torch.zeros(ids.shape, dtype=torch.bool)
    generator = torch.Generator().manual_seed(seed)
    for row, prompt in enumerate(encoded):
        tail = torch.randint(0, 96, (masks,), generator=generator)
        ids[row, width - masks - len(prompt):] = torch.cat([torch.tensor(prompt), tail])
        attention[row, width - masks - len(prompt):] = True
    return ids, position_ids_from_mask(attention), bidirectional_mask(attention)


def span(ids, positions, mask, start, end, cached: bool) -> ModelInputs:
    keys = slice(0, end) if cached else slice(start, end)
    return ModelInputs(ids[:, start:end], positions[:, start:end], mask[:, :, start:end, keys], start, end)


def test_dream_logits_are_shifted_back_onto_their_columns(dirs):
    dllm = load(dirs["dream"])
    ids, positions, mask = canvas_inputs(dllm, PROMPTS, 6)
    raw = dllm.model(input_ids=ids, position_ids=positions, attention_mask=mask).logits
    realigned = dllm.forward(span(ids, positions, mask, 0, ids.shape[1], cached=False))
    assert torch.equal(realigned[:, 1:], raw[:, :-1]), "the same values, moved one column"
    as_bidirectional = load(dirs["dream"], family="bidirectional").forward(span(ids, positions, mask, 0,
                                                                                ids.shape[1], cached=False))
    assert torch.equal(as_bidirectional, raw)


@pytest.mark.parametrize("store", ["dynamic", "positional"])
def test_a_cached_span_takes_its_first_logit_from_the_column_before_it(dirs, store):
    """One layer: keys/values depend only on token and position, so any cached span must reproduce the full
    forward exactly, including the span's first column, whose prediction sits at the column before the span."""
    dllm = load(dirs["dream1"])
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


def test_the_previous_column_keeps_its_frozen_key_value(dirs):
    """Two layers: after the tokens change, a span from `start` sees the frozen (stale) keys/values before it,
    including column start - 1's, whichever store holds them."""
    dllm = load(dirs["dream"])
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


# --- end to end: the spiked stand-ins decode their constructed answer -------------------------------------------

SETUPS = {
    "none": [],
    "kv_window+lookahead": ["decoder.cache=kv_window", "decoder.cache.window=1", "decoder.window=lookahead",
                            "decoder.window.max_lookahead=3"],
    "prefix": ["decoder.window=blocks", "decoder.window.size=4", "decoder.cache=prefix"],
    "dual": ["decoder.window=blocks", "decoder.window.size=4", "decoder.cache=dual"],
    "threshold": ["decoder.verification=threshold", "decoder.verification.threshold=0.5"],
}


@pytest.mark.parametrize("family", ["dream_spike", "llada_spike"])
@pytest.mark.parametrize("setup", list(SETUPS))
def test_spiked_stand_ins_decode_their_answer_under_every_cache(dirs, family, setup):
    dec = decoder(dirs[family], *SETUPS[setup])
    out = dec.generate(PROMPTS)
    assert out.texts == expected_texts(dec.dllm, PROMPTS, 10)


def test_without_realignment_the_dream_answer_is_off_by_one(dirs):
    """The control: reading the Dream-like model as an unshifted model writes the next position's letter."""
    dec = decoder(dirs["dream_spike"], "model.dllm.family=bidirectional")
    shifted = [spike_text(range(len(ids) + 1, len(ids) + 11)) for ids in dec.dllm.encode(PROMPTS)]
    assert dec.generate(PROMPTS).texts == shifted


def test_wino_shadow_is_refused_for_shifted_logits(dirs):
    dec = decoder(dirs["dream"], "decoder.window=blocks", "decoder.window.size=4", "decoder.verification=wino")
    with pytest.raises(ModelError, match="shadow block"):
        dec.generate(["hi"])


# --- LLaDA's official calling convention (no position_ids, no cache) --------------------------------------------

def test_legacy_llada_decodes_alone_like_the_modern_convention(dirs):
    legacy = decoder(dirs["llada_legacy"], "generation.batch_size=1")
    assert type(legacy.dllm.model).__name__ == "LLaDALegacyModelLM"
    assert legacy.generate(PROMPTS).texts == expected_texts(legacy.dllm, PROMPTS, 10)
    same_length = ["abc", "xyz"]  # no padding: a batch is fine
    assert decoder(dirs["llada_legacy"]).generate(same_length).texts == expected_texts(legacy.dllm, same_length, 10)


def test_legacy_llada_refuses_ragged_batches_and_caches(dirs):
    with pytest.raises(ModelError, match=r"(?s)position_ids.*generation\.batch_size=1"):
        decoder(dirs["llada_legacy"]).generate(PROMPTS)
    with pytest.raises(ModelError, match=r"decoder\.cache=none"):
        decoder(dirs["llada_legacy"], "decoder.cache=kv_window", "generation.batch_size=1").generate(["hi"])


# --- APD: Dream-like dLLM + Qwen-like verifier with a narrower head ---------------------------------------------

def apd(dirs, dllm_dir, *overrides):
    return decoder(dllm_dir, "decoder.verification=apd", f"model.ar.path={dirs['qwen']}",
                   "decoder.window=lookahead", "decoder.window.max_lookahead=4", "decoder.cache=kv_window",
                   "decoder.cache.window=2", "decoder.proposal=sample", "decoder.proposal.temperature=0.2",
                   "decoder.proposal.top_p=0.95", "generation.max_new_tokens=12", *overrides)


def test_apd_accepts_whole_windows_when_the_dream_draft_dominates(dirs):
    """R = 0.7 times a spike of 40 outweighs the verifier's random logits: every window of M = 4 is accepted,
    and the committed text is the constructed answer (through kv_window's cached spans)."""
    dec = apd(dirs, dirs["dream_spike"])
    assert dec.strategies["verification"][1].ar.vocab_size == 104 < dec.dllm.vocab_size == 112
    out = dec.generate(PROMPTS)
    assert out.texts == expected_texts(dec.dllm, PROMPTS, 12)
    for stats in out.stats:
        assert stats.commits_per_step == [4, 4, 4]
        assert stats.ar_forwards == stats.nfe == 3


def test_apd_on_random_stand_ins_is_batch_invariant_and_within_bounds(dirs):
    dec = apd(dirs, dirs["dream"], "decoder.proposal=greedy")
    together = dec.generate(PROMPTS)
    assert together.token_ids == [dec.generate([p]).token_ids[0] for p in PROMPTS]
    for ids, stats in zip(together.token_ids, together.stats):
        assert all(1 <= c <= 4 for c in stats.commits_per_step)
        assert stats.ar_forwards == stats.nfe


def test_apd_kv_window_covering_the_canvas_equals_no_cache_on_dream(dirs):
    plain = apd(dirs, dirs["dream"], "decoder.cache=none").generate(PROMPTS)
    wide = apd(dirs, dirs["dream"], "decoder.cache.window=1000").generate(PROMPTS)
    assert wide.token_ids == plain.token_ids


def test_apd_refuses_a_verifier_with_another_tokenizer(dirs):
    with pytest.raises(ModelError, match="tokenizer differs"):
        apd(dirs, dirs["llada"])


# --- --dry-run: every incompatibility it claims to catch, on edited copies of the stand-ins ----------------------


def variant(source, target, *, config=None, tokenizer_config=None, vocab=None, drop=()):
    """Copy a checkpoint, update its config.json / tokenizer_config.json (None values delete keys), edit
    tokenizer.json's vocabulary with ``vocab(dict)``, and delete files; the weights are removed (never read)."""
    shutil.copytree(source, target)
    (target / "model.safetensors").unlink()
    for name, updates in (("config.json", config), ("tokenizer_config.json", tokenizer_config)):
        if updates:
            data = json.loads((target / name).read_text())
            for key, value in updates.items():
                data.pop(key, None) if value is None else data.__setitem__(key, value)
            (target / name).write_text(json.dumps(data))
    if vocab:
        data = json.loads((target / "tokenizer.json").read_text())
        vocab(data["model"]["vocab"])
        (target / "tokenizer.json").write_text(json.dumps(data))
    for name in drop:
        (target / name).unlink()
    return target


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-pair")
    return {"dllm": build_tiny_checkpoint(root / "dllm"), "ar": build_tiny_checkpoint(root / "ar", causal=True)}


def check(dllm, ar=None, *overrides, trust=True, **kwargs):
    items = [f"model.dllm.path={dllm}", "model.dllm.implementation=remote",
             f"model.dllm.trust_remote_code={str(trust).lower()}", *overrides]
    if ar is not None:
        items += [f"model.ar.path={ar}", "decoder.verification=apd", "decoder.window=lookahead"]
    if "prompts" not in kwargs:
        kwargs.setdefault("prompt_budget", 16)  # the stand-ins have 256 positions
    return dry_run({}, items, **kwargs)


def test_dry_run_passes_the_paper_pairing_without_weights(dirs, tmp_path):
    dream = variant(dirs["dream"], tmp_path / "dream")
    qwen = variant(dirs["qwen"], tmp_path / "qwen")
    report = check(dream, qwen, prompts=["What is 2+2?"])
    assert report.ok, report.format()
    assert "family dream" in report.facts["dllm"]
    tok = dream_like_tokenizer()
    assert report.facts["special_ids"].startswith(f"mask {tok.convert_tokens_to_ids('<|mask|>')}, ")
    assert main(["generate", "--dry-run", "-c", "configs/decoders/apd.yaml", f"model.dllm.path={dream}", *REMOTE,
                 f"model.ar.path={qwen}", "--prompt", "What is 2+2?"]) == 0
    assert main(["generate", "--dry-run", "-c", "configs/decoders/apd.yaml", f"model.dllm.path={dream}", *REMOTE,
                 f"model.ar.path={qwen}"]) == 2, "512 assumed + 32 > 256"


def test_dry_run_needs_trust_remote_code(dirs):
    assert check(dirs["llada"], trust=False).checks() == {"implementation"}


def test_dry_run_catches_tokenizers_that_disagree(dirs, tmp_path):
    def swap(vocab):
        vocab["a"], vocab["b"] = vocab["b"], vocab["a"]

    qwen = variant(dirs["qwen"], tmp_path / "qwen", vocab=swap)
    report = check(dirs["dream"], qwen)
    assert report.checks() == {"pair_tokenizer"}
    assert "2 AR token(s)" in report.errors[0].message
    assert check(dirs["llada"], dirs["qwen"]).checks() == {"pair_tokenizer"}, "LLaDA's tokenizer is not Qwen's"


def test_dry_run_catches_an_ar_head_wider_than_the_dllm_head(dirs, tmp_path):
    qwen = variant(dirs["qwen"], tmp_path / "qwen", config={"vocab_size": 120})
    report = check(dirs["dream"], qwen)
    assert report.checks() == {"pair_vocab"}
    assert "120" in report.errors[0].message and "112" in report.errors[0].message


def test_dry_run_catches_a_missing_or_out_of_range_mask(tiny, tmp_path):
    no_mask = variant(tiny["dllm"], tmp_path / "no-mask", tokenizer_config={"mask_token": None})
    assert check(no_mask).checks() == {"mask"}
    assert check(tiny["dllm"], None, "model.dllm.mask_token_id=100").checks() == {"mask"}, "head is 100 wide"
    assert check(no_mask, None, "model.dllm.mask_token_id=3").ok, "an explicit id fixes it"


def test_dry_run_catches_a_pad_equal_to_the_mask(tiny, tmp_path):
    pad_is_mask = variant(tiny["dllm"], tmp_path / "pad", tokenizer_config={"pad_token": "<mask>"})
    assert check(pad_is_mask).checks() == {"pad"}


def test_dry_run_catches_a_missing_eos(tiny, tmp_path):
    no_eos = variant(tiny["dllm"], tmp_path / "eos", tokenizer_config={"eos_token": None})
    assert check(no_eos).checks() == {"eos"}
    assert check(tiny["dllm"], None, "model.dllm.eos_token_ids=[2,150]").checks() == {"eos"}


def test_dry_run_catches_a_context_too_short(dirs, tiny, tmp_path):
    short = variant(tiny["dllm"], tmp_path / "short", config={"max_position_embeddings": 40})
    assert check(short, None, "generation.max_new_tokens=32", prompts=["x" * 6]).ok, "<bos> + 6 + newline + 32 = 40"
    report = check(short, None, "generation.max_new_tokens=32", prompts=["x" * 7])
    assert report.checks() == {"context"} and report.errors[0].key == "model.dllm.path"
    short_ar = variant(dirs["qwen"], tmp_path / "short-ar", config={"max_position_embeddings": 64})
    report = check(dirs["dream"], short_ar, "generation.max_new_tokens=32", prompt_budget=40)
    assert report.checks() == {"context"} and report.errors[0].key == "model.ar.path"
    long_dream = variant(dirs["dream"], tmp_path / "long", config={"max_position_embeddings": 131072})
    assert check(long_dream, None, prompt_budget=2048 - 32).ok
    assert check(long_dream, None, prompt_budget=2048 - 31).checks() == {"context"}, "Dream was trained on 2048"


def test_dry_run_catches_causal_dllms_and_bidirectional_ar_models(tiny):
    assert check(tiny["ar"]).checks() == {"causal"}
    report = check(tiny["dllm"], tiny["dllm"])
    assert report.checks() == {"causal"} and report.errors[0].key == "model.ar.path"


def test_dry_run_and_loading_agree_on_causal_dllms_and_a_mask_id_that_is_an_eos_id(tiny):
    from dlm_decode.decoder import Decoder

    for path, overrides, problem in ((tiny["ar"], [], "causal"), (tiny["dllm"], ["model.dllm.mask_token_id=2"], "eos")):
        assert problem in check(path, None, *overrides).checks(), "the dry run finds it"
        with pytest.raises(ModelError, match="fix:"):  # and loading the weights refuses it too
            Decoder.from_config({}, [f"model.dllm.path={path}", *overrides])


def test_dry_run_catches_apd_without_an_ar_model(tiny):
    assert check(tiny["dllm"], None, "decoder.verification=apd").checks() == {"ar_missing"}


def test_dry_run_reports_unreadable_files_and_family_overrides(dirs, tiny, tmp_path):
    assert check(tmp_path / "nowhere").checks() == {"config"}
    no_tokenizer = variant(tiny["dllm"], tmp_path / "tok", drop=("tokenizer.json", "tokenizer_config.json"))
    assert check(no_tokenizer).checks() == {"tokenizer"}
    report = check(dirs["dream"], None, "model.dllm.family=llada")
    assert report.checks("warning") == {"family"}


@pytest.mark.parametrize("edit", [{"tokenizer_config": {"mask_token": None}},
                                  {"tokenizer_config": {"pad_token": "<mask>"}},
                                  {"tokenizer_config": {"eos_token": None}}])
def test_what_the_dry_run_refuses_the_real_load_refuses_too(tiny, tmp_path, edit):
    broken = variant(tiny["dllm"], tmp_path / "broken", **edit)
    shutil.copy(tiny["dllm"] / "model.safetensors", broken / "model.safetensors")
    assert not check(broken).ok
    with pytest.raises(ModelError):
        DiffusionLM.from_spec(ModelSpec(path=str(broken)))


def test_cli_dry_run_exit_status(tiny, capsys):
    assert main(["eval", "--dry-run", f"model.dllm.path={tiny['ar']}", "--limit", "2"]) == 2
    assert "[causal]" in capsys.readouterr().out
    assert main(["eval", "--dry-run", f"model.dllm.path={tiny['dllm']}", "--limit", "2", "--tasks", "arith"]) == 0


# --- the shipped real-model configs -----------------------------------------------------------------------------


def test_the_paper_setting_is_what_the_experiment_config_says():
    config = load_config("configs/experiments/apd-dream-qwen.yaml")
    strategies = {role: params for role, (_, params) in config.strategies.items()}
    assert strategies["verification"].mixture_weight == 0.7  # R
    assert strategies["cache"].window == 16  # W
    assert strategies["window"].max_lookahead == 100  # M
    assert (strategies["proposal"].temperature, strategies["proposal"].top_p) == (0.2, 0.95)
    assert config.config.generation.max_new_tokens == 256
    model = config.config.model
    assert (model.dllm.path, model.ar.path) == ("Dream-org/Dream-v0-Instruct-7B", "Qwen/Qwen2.5-0.5B")
    assert not model.dllm.trust_remote_code, "remote code is the user's decision, on the command line"
    llada = load_config(["configs/decoders/llada.yaml", "configs/models/llada-8b-instruct.yaml"]).config.model.dllm
    assert (llada.family, llada.dtype, llada.device) == ("llada", "bfloat16", "auto")
    pair = load_config(["configs/decoders/apd.yaml", "configs/models/dream-7b-instruct.yaml",
                        "configs/models/qwen2.5-0.5b.yaml"]).config.model
    assert (pair.dllm.family, pair.ar.path) == ("dream", "Qwen/Qwen2.5-0.5B")


def test_the_experiment_config_runs_on_the_stand_ins(dirs):
    paths = [f"model.dllm.path={dirs['dream_spike']}", *REMOTE, f"model.ar.path={dirs['qwen']}"]
    report = dry_run("configs/experiments/apd-dream-qwen.yaml", paths, prompts=["hi"])
    assert report.checks() == {"context"}, "256 new tokens do not fit the stand-ins' 256 positions"
    decoder = Decoder.from_config("configs/experiments/apd-dream-qwen.yaml", [*paths, "generation.max_new_tokens=12"])
    assert next(decoder.dllm.model.parameters()).dtype == torch.bfloat16
    out = decoder.generate(PROMPTS)
    assert out.texts == expected_texts(decoder.dllm, PROMPTS, 12)
    assert all(s.commits_per_step == [12] for s in out.stats), "M = 100 covers the canvas; the spike is accepted"


PROMPTS_FOR_TEMPLATES = ["sort 4 1 7", " padded  ", "two\nlines", "{{ not jinja }}", "x" * 40]


@pytest.mark.parametrize("template, wraps", [
    ("{{ bos_token }}{% for m in messages %}{{ m['content'] }}{% endfor %}{{ '\n' }}", True),
    ("{{ bos_token }}{% for m in messages %}{{ m['content'] | trim }}{% endfor %}{{ '\n' }}", False),
    ("{% for m in messages %}{% if m['content'] %}<u>{{ m['content'] }}</u>{% endif %}{% endfor %}", False),
    ("{% for m in messages %}{% set c = m.content %}<u>{{ c }}</u>{% endfor %}", False),
    ("{{ strftime_now('%d %b %Y') }}{% for m in messages %}{{ m['content'] }}{% endfor %}", False),
    ("{% for m in messages %}{{ m['content'].replace('a', 'b') }}{% endfor %}", False),
])
def test_prompt_encoding_with_or_without_template_affixes_equals_the_template(template, wraps):
    """The affix shortcut is taken only for templates that wrap the content verbatim, and the ids always equal
    rendering the template per prompt."""
    from transformers import AutoTokenizer

    from dlm_decode.models.embedded import embedded_model_dir
    from dlm_decode.models.prompts import encode_prompts, template_affixes

    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir("dllm"))
    tokenizer.chat_template = template
    affixes = template_affixes(tokenizer)
    assert (affixes is not None) is wraps
    expected = [tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=True,
                                              add_generation_prompt=True, return_dict=True)["input_ids"]
                for p in PROMPTS_FOR_TEMPLATES]
    assert encode_prompts(tokenizer, PROMPTS_FOR_TEMPLATES, True, affixes) == [list(ids) for ids in expected]


def test_prompt_encoding_follows_a_replaced_template_and_ignores_leftover_truncation():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dlm_decode.models.embedded import embedded_model_dir

    directory = embedded_model_dir("dllm")
    dllm = DiffusionLM(AutoModelForCausalLM.from_pretrained(directory), AutoTokenizer.from_pretrained(directory))
    tokenizer = dllm.tokenizer
    prompts = ["sort 4 1 7", "reverse abcdefghijklmnop"]

    def by_template():
        return [list(tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=True,
                                                   add_generation_prompt=True, return_dict=True)["input_ids"])
                for p in prompts]

    assert dllm.chat_affixes is not None and dllm.encode(prompts) == by_template()
    tokenizer.chat_template = "{% for m in messages %}[{{ m['content'] }}]{% endfor %}"
    assert dllm.chat_affixes == ("[", "]") and dllm.encode(prompts) == by_template()
    tokenizer("a long text that an earlier call truncated", truncation=True, max_length=4)
    assert dllm.encode(prompts) == by_template(), "a truncation left set on the backend must not cut prompts"
