"""Native loading of LLaDA and Dream checkpoints (``implementation: native``) on the tiny reference checkpoints:
no checkpoint code runs, the CLI works with the real-model configs, every preset decodes batches of mixed prompt
lengths exactly as one prompt at a time, and broken checkpoints or failing remote code get errors that name the
cause and the fix."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from dlm_decode import ModelError
from dlm_decode.cli import main
from dlm_decode.config.schema import ModelSpec
from dlm_decode.decoder import Decoder
from dlm_decode.models.adapter import DiffusionLM
from dlm_decode.models.dry_run import dry_run
from dlm_decode.testing.models import TinySize, random_model

from helpers import REFERENCE, decode_state, edited_copy
from stand_ins import REMOTE

LLADA, DREAM, QWEN2 = (str(REFERENCE / name) for name in ("llada-tiny", "dream-tiny", "qwen2-tiny"))
#: 16 prompts of 1 to 43 characters: left padding of every width in a batch.
PROMPTS = [
    "hi",
    "sort 3 1 2",
    "What is 17 * 24?",
    "a",
    "Name three fruits, then stop.",
    "reverse the word stone",
    "ok",
    "count from one to nine, slowly",
    "x = 4; y = x * 2; what is y?",
    "tell me a story about a cat",
    "yes or no?",
    "2+2",
    "translate 'dog' into French",
    "Which is larger, 7 or 9?",
    "Write a haiku about the sea.",
    "List the primes below twenty and explain each one.",
]


# --- loading --------------------------------------------------------------------------------------------------

RAISES_ON_IMPORT = 'raise RuntimeError("the checkpoint code ran")\n'


@pytest.mark.parametrize(
    "source, code",
    [
        (LLADA, ("configuration_llada.py", "modeling_llada.py")),
        (DREAM, ("configuration_dream.py", "modeling_dream.py", "tokenization_dream.py")),
    ],
)
def test_native_loading_runs_none_of_the_checkpoint_code(tmp_path, source, code):
    """The checkpoint's own files (named by config.json's auto_map, and for Dream by tokenizer_config.json's) raise
    when imported: loading and decoding still work, without trust_remote_code."""
    path = edited_copy(source, tmp_path / "ckpt", files={name: RAISES_ON_IMPORT for name in code})
    decoder = Decoder.from_config("configs/decoders/fast-dllm.yaml", [f"model.dllm.path={path}"])
    assert type(decoder.dllm.model).__name__ in ("LlamaForCausalLM", "Qwen2ForCausalLM")
    assert not decoder.config.config.model.dllm.trust_remote_code
    out = decoder.generate(["hi"])
    assert out.stats[0].generated_tokens >= 1


def test_the_native_families_keep_their_special_ids_and_layout():
    llada = DiffusionLM.from_spec(ModelSpec(path=LLADA))
    assert (llada.family.name, llada.mask_token_id, llada.eos_token_ids, llada.pad_token_id) == (
        "llada",
        98,
        [97, 101],
        97,
    )
    assert llada.vocab_size == 104 and llada.undecodable_ids == [102, 103], "the head is wider than the tokenizer"
    assert llada.max_context == 512
    dream = DiffusionLM.from_spec(ModelSpec(path=DREAM))
    assert (dream.family.name, dream.family.shifted_logits, dream.mask_token_id, dream.eos_token_ids) == (
        "dream",
        True,
        276,
        [272, 274],
    )
    assert dream.undecodable_ids == [277, 278, 279]


def test_a_natively_loaded_model_names_its_family_itself():
    """The native class's config keeps the checkpoint's architectures, so the adapter built without a spec still
    finds the family (Dream's shifted logits, its trained context)."""
    from dlm_decode.models.loading import load_hf

    dream = DiffusionLM(*load_hf(ModelSpec(path=DREAM), "model.dllm"))
    assert (dream.family.name, dream.family.shifted_logits, dream.max_context) == ("dream", True, 2048)
    assert DiffusionLM(*load_hf(ModelSpec(path=LLADA), "model.dllm")).family.name == "llada"


def test_an_eos_id_the_tokenizer_cannot_decode_is_refused():
    with pytest.raises(
        ModelError,
        match=r"(?s)EOS id\(s\) \[103\] are no token of the dLLM's tokenizer.*"
        r"model\.dllm\.eos_token_ids.*its EOS is 97",
    ):
        DiffusionLM.from_spec(ModelSpec(path=LLADA, eos_token_ids=[103]))


def test_sharded_weights_load_in_bfloat16():
    assert (REFERENCE / "llada-tiny" / "model.safetensors.index.json").exists(), "the LLaDA fixture is sharded"
    dllm = DiffusionLM.from_spec(ModelSpec(path=LLADA, dtype="bfloat16"))
    assert {p.dtype for p in dllm.model.parameters()} == {torch.bfloat16}


@pytest.mark.parametrize(
    "argv",
    [
        [
            "-c",
            "configs/decoders/fast-dllm.yaml",
            "-c",
            "configs/models/llada-8b-instruct.yaml",
            f"model.dllm.path={LLADA}",
        ],
        [
            "-c",
            "configs/experiments/apd-dream-qwen.yaml",
            f"model.dllm.path={DREAM}",
            f"model.ar.path={QWEN2}",
            "generation.max_new_tokens=32",
        ],
    ],
)
def test_the_real_model_configs_decode_the_reference_checkpoints_from_the_cli(argv, capsys):
    assert main(["generate", *argv, "--prompt", "What is 17 * 24?", "--prompt", "hi", "--json"]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(records) == 2 and all(r["generated_tokens"] >= 1 for r in records)
    assert main(["generate", "--dry-run", *argv, "--prompt", "hi"]) == 0


def test_dry_run_reports_the_native_family_without_weights():
    report = dry_run(
        "configs/experiments/apd-dream-qwen.yaml",
        [f"model.dllm.path={DREAM}", f"model.ar.path={QWEN2}"],
        prompts=["hi"],
    )
    assert report.ok, report.format()
    assert "family dream" in report.facts["dllm"]
    assert report.facts["special_ids"].startswith("mask 276, eos [272, 274], pad 272")


# --- errors ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "edit", "match"),
    [
        pytest.param(
            LLADA,
            {"config": {"alibi": True, "include_bias": True}},
            r"(?s)alibi=True \(maps only False\); include_bias=True.*implementation=remote",
            id="llada-fields-the-mapping-cannot-reproduce",
        ),
        pytest.param(  # LLaDA-MoE checkpoints are published with model_type llada and Hugging Face-style fields:
            # expert fields send a llada config.json to the LLaDA-MoE mapping (tests/test_lladamoe.py), which names
            # the fields its layout lacks
            LLADA,
            {
                "config": {
                    "hidden_size": 64,
                    "num_hidden_layers": 2,
                    "num_experts": 8,
                    "num_experts_per_tok": 2,
                    "expert_intermediate_size": 32,
                }
            },
            r"(?s)has no num_attention_heads, dense_intermediate_size, moe_layer_freq, which every LLaDA-MoE "
            r"checkpoint's config.json has.*implementation=remote",
            id="llada-expert-fields-read-by-the-lladamoe-mapping",
        ),
        pytest.param(  # SDAR-30B-A3B loads natively under its own model_type, sdar_moe: the dense mapping names it
            str(REFERENCE / "sdar-tiny"),
            {"config": {"num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 16}},
            r"(?s)a mixture of experts \(config.json has num_experts=8, num_experts_per_tok=2, "
            r"moe_intermediate_size=16\).*dense SDAR.*loads natively as `model_type: sdar_moe` "
            r"\(on Qwen3MoeForCausalLM\): set model_type to 'sdar_moe'",
            id="sdar-mixture-of-experts",
        ),
        pytest.param(
            DREAM,
            {"drop": ["model.safetensors"]},
            r"(?s)has no weights: none of model\.safetensors, model\.safetensors\.index\.json, pytorch_model\.bin.* "
            r"in .*dream-tiny.*fix: copy the checkpoint's weights",
            id="no-weight-files",
        ),
        pytest.param(
            LLADA,
            {"config": {"model_type": "my_dllm", "auto_map": {"AutoModel": "modeling_my.MyModel"}}},
            r"(?s)model_type 'my_dllm', which has no native implementation.*\(modeling_my\.py\).*"
            r"implementation=remote and model\.dllm\.trust_remote",
            id="unknown-model-type",
        ),
    ],
)
def test_a_checkpoint_native_loading_cannot_take_is_refused_with_the_cause_and_the_fix(tmp_path, source, edit, match):
    path = edited_copy(source, tmp_path / Path(source).name, **edit)
    with pytest.raises(ModelError, match=match):
        DiffusionLM.from_spec(ModelSpec(path=str(path)))


def test_the_dry_run_names_the_llada_fields_the_mapping_cannot_reproduce(tmp_path):
    path = edited_copy(LLADA, tmp_path / "llada", config={"alibi": True, "include_bias": True})
    report = dry_run({}, [f"model.dllm.path={path}"], prompt_budget=16)
    assert report.checks() == {"implementation"} and "alibi=True" in report.errors[0].message


def _rewrite_weights(path, edit) -> None:
    from safetensors.torch import load_file, save_file

    for file in sorted(path.glob("*.safetensors")):
        tensors = load_file(str(file))
        edit(tensors)
        save_file(tensors, str(file), metadata={"format": "pt"})
    index = path / "model.safetensors.index.json"
    if index.exists():
        data = json.loads(index.read_text())
        data["weight_map"] = {
            name: file.name for file in sorted(path.glob("*.safetensors")) for name in load_file(str(file))
        }
        index.write_text(json.dumps(data))


def test_weights_that_do_not_match_the_layout_are_listed(tmp_path):
    path = edited_copy(LLADA, tmp_path / "llada")

    def edit(tensors):
        ff_out, q_proj = "model.transformer.blocks.1.ff_out.weight", "model.transformer.blocks.0.q_proj.weight"
        if ff_out in tensors:
            tensors["model.transformer.blocks.1.feed_out.weight"] = tensors.pop(ff_out)
        if q_proj in tensors:
            tensors[q_proj] = tensors[q_proj][:32]

    _rewrite_weights(path, edit)
    with pytest.raises(ModelError) as error:
        DiffusionLM.from_spec(ModelSpec(path=str(path)))
    message = str(error.value)
    assert "do not have the LLaDA layout" in message
    assert "1 tensor(s) missing from the checkpoint: model.layers.1.mlp.down_proj.weight" in message
    assert "1 tensor(s) in the checkpoint but not in the model: model.transformer.blocks.1.feed_out.weight" in message
    assert "1 tensor(s) of another shape: model.layers.0.self_attn.q_proj.weight" in message


#: Remote code failing as the official LLaDA file does on transformers 5 (its model never calls post_init).
NO_POST_INIT = {
    "configuration_llada.py": (
        "from transformers import PretrainedConfig\n\n\nclass LLaDAConfig(PretrainedConfig):\n"
        "    model_type = 'llada'\n"
    ),
    "modeling_llada.py": (
        "import torch\nfrom transformers import PreTrainedModel\n\nfrom .configuration_llada import LLaDAConfig\n\n\n"
        "class LLaDAModelLM(PreTrainedModel):\n    config_class = LLaDAConfig\n\n"
        "    def __init__(self, config):\n        super().__init__(config)\n"
        "        self.wte = torch.nn.Embedding(8, 4)\n"
    ),
}


def test_remote_code_that_fails_to_load_names_its_exception_and_the_native_fix(tmp_path):
    path = edited_copy(LLADA, tmp_path / "llada", files=NO_POST_INIT)
    spec = ModelSpec(path=str(path), implementation="remote", trust_remote_code=True)
    with pytest.raises(ModelError) as error:
        DiffusionLM.from_spec(spec)
    message = str(error.value)
    assert (
        "the checkpoint's own modeling code (configuration_llada.py, modeling_llada.py) failed while loading" in message
    )
    assert "AttributeError" in message and "all_tied_weights_keys" in message, "the real exception, not the path"
    assert "fix: set model.dllm.implementation=native" in message and "check the path" not in message


#: Remote code whose forward handles a cache its own way (tuples indexed by layer), as the Fast-dLLM files do.
TUPLE_CACHE = {
    "configuration_llada.py": "from transformers import LlamaConfig\n\n\nclass LLaDAConfig(LlamaConfig):\n"
    "    model_type = 'llada'\n",
    "modeling_llada.py": (
        "from transformers import LlamaForCausalLM\n\nfrom .configuration_llada import LLaDAConfig\n\n\n"
        "class LLaDAModelLM(LlamaForCausalLM):\n    config_class = LLaDAConfig\n\n"
        "    def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,\n"
        "                use_cache=None, **kwargs):\n"
        "        if past_key_values is not None:\n            past_key_values[0][0]\n"
        "        return super().forward(input_ids=input_ids, attention_mask=attention_mask,\n"
        "                               position_ids=position_ids, use_cache=False)\n"
    ),
}


def _tuple_cache_checkpoint(path):
    """A remote-code LLaDA stand-in whose forward indexes the cache as tuples (TUPLE_CACHE)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    size: TinySize = {"hidden": 16, "layers": 1, "max_positions": 512}
    random_model((LlamaConfig, LlamaForCausalLM), size, vocab_size=104, is_causal=False).save_pretrained(path)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(REFERENCE / "llada-tiny" / name, path / name)
    data = json.loads((path / "config.json").read_text())
    data.update(
        model_type="llada",
        auto_map={
            "AutoConfig": "configuration_llada.LLaDAConfig",
            "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM",
        },
    )
    (path / "config.json").write_text(json.dumps(data))
    for name, text in TUPLE_CACHE.items():
        (path / name).write_text(text)
    return path


def test_remote_code_that_fails_with_a_cache_names_its_exception_and_the_fixes(tmp_path):
    path = _tuple_cache_checkpoint(tmp_path / "llada")
    assert Decoder.from_config("configs/decoders/llada.yaml", [f"model.dllm.path={path}", *REMOTE]).generate(["hi"])
    decoder = Decoder.from_config("configs/decoders/fast-dllm.yaml", [f"model.dllm.path={path}", *REMOTE])
    with pytest.raises(ModelError) as error:
        decoder.generate(["hi"])
    message = str(error.value)
    assert "own modeling code (LLaDAModelLM) failed in a forward with a key/value cache: TypeError:" in message
    assert "not subscriptable" in message
    assert "set decoder.cache=none" in message and "model.dllm.implementation=native" in message


# --- every preset, both families, batches of mixed lengths ---------------------------------------------------


@pytest.fixture(scope="module")
def llada_verifier(tmp_path_factory):
    """A causal Llama sharing the LLaDA fixture's tokenizer: an AR model APD can pair with LLaDA."""
    from transformers import LlamaConfig, LlamaForCausalLM

    path = tmp_path_factory.mktemp("llada-ar")
    size: TinySize = {"seed": 3, "layers": 1, "max_positions": 512}
    model = random_model((LlamaConfig, LlamaForCausalLM), size, vocab_size=104, tie_word_embeddings=True)
    model.save_pretrained(path)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(REFERENCE / "llada-tiny" / name, path / name)
    return str(path)


PRESETS = {  # preset: extra overrides
    "llada": [],
    "fast-dllm": [],
    "fast-dllm+none": ["decoder.cache=none"],
    "fast-dllm+prefix": ["decoder.cache=prefix"],
    "fast-dllm-prefix": [],
    "wino": [],
    "apd": [],
    "dream-entropy": [],
    "left-to-right": [],
}


@pytest.mark.parametrize(
    "preset, family",
    [
        (preset, family)
        for preset in sorted(PRESETS)
        for family in ("llada", "dream")
        if (preset, family) != ("wino", "dream")
    ],
)
def test_every_preset_decodes_a_batch_of_16_mixed_lengths_as_one_prompt_at_a_time(preset, family, llada_verifier):
    """WINO on Dream is refused instead (test_wino_is_refused_on_dream_with_the_reason)."""
    overrides = [f"model.dllm.path={LLADA if family == 'llada' else DREAM}", *PRESETS[preset]]
    if preset == "apd":
        overrides.append(f"model.ar.path={llada_verifier if family == 'llada' else QWEN2}")
    decoder = Decoder.from_config(f"configs/decoders/{preset.split('+')[0]}.yaml", overrides)
    batched = decoder.generate(PROMPTS, batch_size=16)
    alone = decoder.generate(PROMPTS, batch_size=1)
    assert batched.token_ids == alone.token_ids
    assert [s.nfe for s in batched.stats] == [s.nfe for s in alone.stats]
    assert all(s.generated_tokens >= 1 for s in batched.stats)


def test_wino_is_refused_on_dream_with_the_reason():
    decoder = Decoder.from_config("configs/decoders/wino.yaml", [f"model.dllm.path={DREAM}"])
    with pytest.raises(ModelError, match="shift"):
        decoder.generate(PROMPTS[:2])


def test_a_missing_weight_file_of_remote_code_is_not_blamed_on_the_code(tmp_path):
    path = _tuple_cache_checkpoint(tmp_path / "llada")
    (path / "model.safetensors").unlink()
    with pytest.raises(ModelError) as error:
        Decoder.from_config({}, [f"model.dllm.path={path}", *REMOTE])
    message = str(error.value)
    assert "has no weights: none of model.safetensors" in message
    assert "modeling code" not in message


@pytest.mark.parametrize(
    "fields, kv_heads",
    [({}, 4), ({"n_kv_heads": 2}, 2), ({"n_kv_heads": None}, 4), ({"multi_query_attention": True}, 1)],
)
def test_llada_key_value_heads_map_as_llada_reads_them(fields, kv_heads):
    """n_kv_heads (None: as many as n_heads), or one with multi_query_attention, as LLaDA's own config class."""
    from dlm_decode.models.native import ARCHITECTURES

    config = {**json.loads((REFERENCE / "llada-tiny" / "config.json").read_text()), **fields}
    assert ARCHITECTURES["llada"].convert(config, "model.dllm").num_key_value_heads == kv_heads


@pytest.mark.parametrize("masks, steps, step", [(19, 111, 109), (55, 37, 35), (32, 16, 5)])
def test_the_dream_quota_is_computed_in_dreams_float32_arithmetic(masks, steps, step):
    """Dream's sampler takes ``int(m * (1 - s / t))`` with float32 scalars of ``linspace(1, eps, steps + 1)``. The
    first two cases are among the rare ones (m <= 1024, steps <= 256) where the same formula in float64 (the product,
    or the timesteps) truncates to another count."""
    from dlm_decode.state import Window
    from dlm_decode.strategies.verification import Schedule, TopK, TopKConfig, TopKMemory

    timesteps = torch.linspace(1, 1e-3, steps + 1)
    dream = int(torch.tensor(float(masks)) * (1 - timesteps[step + 1] / timesteps[step]))  # Dream's expression
    state = decode_state([[1]], masks, mask=3, pad=0, eos=[2], fill=2)
    window = Window(
        eligible=state.masked.clone(),
        input_end=state.width,
        block_start=torch.tensor([1]),
        block_end=torch.tensor([state.width]),
    )
    topk = TopK(TopKConfig(schedule=Schedule.dream, steps_per_block=steps))
    state.memory(topk, lambda state: TopKMemory(window.block_start, torch.tensor([masks]), torch.tensor([step])))
    assert dream >= 1 and int(topk.quota(state, window)) == dream
