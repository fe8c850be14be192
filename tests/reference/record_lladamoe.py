"""Record what LLaDA-MoE's modeling code and its decoders do on a tiny random-weight checkpoint.

The companion of ``record.py`` for LLaDA-MoE-7B-A1B (``inclusionAI/LLaDA-MoE-7B-A1B-Base`` / ``-Instruct``; Zhu et
al. 2025, arXiv 2509.24389), which the project loads on transformers' own ``Qwen3MoeForCausalLM`` with bidirectional
attention. Run it once, in a separate environment, with the official files passed in as paths (nothing of them is
copied into the repository)::

    TORCHDYNAMO_DISABLE=1 OMP_NUM_THREADS=1 /work/ref/venv/bin/python tests/reference/record_lladamoe.py \
        --lladamoe-hub LLaDA-MoE-code --llada LLaDA --dinfer dInfer --out tests/reference

(the environment of ``record.py``: torch 2.13 CPU, transformers 4.49.0, the version family the hub file was written
for: it imports ``AttentionMaskConverter``, ``is_flash_attn_greater_or_equal_2_10`` and the 4.4x rotary classes.)

``--lladamoe-hub`` is a directory holding the two code files published with the checkpoints,
``modeling_lladamoe.py`` and ``configuration_lladamoe.py``; they are imported as a package (symlinks in a temporary
directory). The hub is not reachable here: the committed fixtures come from the copies in InfiniTensor/InfiniLM
0a7e522 (``modeling_lladamoe.py``, added there verbatim on 2025-12-16; inclusionAI/dInfer's
``tools/modeling_fused_lladamoe.py`` is the same file plus a fused expert block, line for line otherwise) and
inclusionAI/dInfer fce4e32 (``tools/configuration_lladamoe.py``). ``--llada`` is a checkout of ``ML-GSAI/LLaDA``
(its ``generate.py``, the sampler the model card publishes with ``mask_id=156895``), ``--dinfer`` a checkout of
``inclusionAI/dInfer`` (``python/dinfer/decoding/{utils,parallel_strategy,generate_uniform}.py``, imported as
``record_dinfer.py`` does: ``ThresholdParallelDecoder`` in ``BlockWiseDiffusionLLM``, dInfer's LLaDA-MoE setting).

What the modeling file does, as recorded here: bidirectional attention that ignores any attention mask (the forward
sets it to ``None``), per-head query/key RMSNorm (``qk_layernorm``), rotary embeddings, a router ``mlp.gate`` (softmax
in float32 over all experts, top-``num_experts_per_tok``, never renormalised: ``norm_topk_prob`` is fixed to
``False`` whatever ``config.json`` says), SiLU-gated experts of ``expert_intermediate_size`` looped with
``index_add_``, and dense MLPs of ``dense_intermediate_size`` where ``moe_layer_freq`` is 0.

What it writes into ``--out`` (well under a megabyte):

* ``lladamoe-tiny/``: LLaDA-MoE's ``config.json`` keys (``configuration_lladamoe.py``'s, ``model_type: llada``,
  ``architectures: [LLaDAMoEModelLM]``) at a tiny scale: 3 layers, the middle one dense (``moe_layer_freq``),
  8 experts with 3 per token, grouped-query heads, and ``norm_topk_prob: true`` (which the official block ignores, so
  a port that read it would fail the logits test); weights under the hub's names in bfloat16 (the published dtype),
  loaded by the official class with no missing or unexpected tensor; random norms and router weights. Its tokenizer
  is ``record_llada2.build_tokenizer``'s (LLaDA-MoE shares LLaDA 2.x's tokenizer: 157,184 logits, mask 156895, end
  of text 156892, the ``<role>`` chat format): a ``PreTrainedTokenizerFast`` over characters, then the special tokens.
* ``logits_lladamoe.safetensors``: float32 logits of the official model: one prompt followed by 32 masks, and each
  prompt of ``PADDED_PROMPTS`` followed by 8 masks on its own (the official forward ignores masks, so a left-padded
  batch through it lets the padding in; the project must give each row of such a batch these logits).
* ``official_lladamoe.json``: prompt ids, the experts each token of the first forward chose in the first layer, and
  the tokens of LLaDA's ``generate`` and dInfer's threshold decoder per prompt (batch 1), with their arguments.

A rerun writes the same bytes (fixed seeds).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record_block import _qwen_tensors  # noqa: E402
from record_llada2 import build_tokenizer  # noqa: E402
from record_sdar_moe import moe_fixture, sparse_experts  # noqa: E402

from record import (  # noqa: E402
    GEN_LENGTH,
    PADDED_PROMPTS,
    PROMPTS,
    OfficialFiles,
    _chat_ids,
    _save_shards,
    _silence_rows,
    _write_json,
    recorder_parser,
    run_recorder,
)

HEAD = 104  # > 102 tokens, as the published 157,184 logits exceed the tokenizer (the same as LLaDA 2.x's)
D, HEADS, KV_HEADS, LAYERS, DENSE_HIDDEN = 64, 4, 2, 3, 128
EXPERTS, TOP_K, EXPERT_HIDDEN = 8, 3, 16
MOE_LAYER_FREQ = [1, 0, 1]
EOS_BOOST = 1.6  # lets the end of text win now and then

DECODING = ("utils.py", "parallel_strategy.py", "generate_uniform.py")
#: (steps, block_length) of LLaDA's generate over GEN_LENGTH columns.
LLADA_CASES = ((32, 8), (16, 32), (8, 16))
#: (block_length, threshold) of dInfer's threshold decoder: dInfer's LLaDA-MoE setting (32, 0.9) and smaller blocks (the
#: tiny model commits 1 to 16 positions per step under them).
DINFER_CASES = ((32, 0.9), (8, 0.95), (16, 0.9))


def build_lladamoe(directory: Path, seed: int = 6) -> dict[str, int]:
    """A LLaDA-MoE checkpoint (its ``config.json`` keys, the hub's weight names) at a tiny scale; returns the
    special tokens' ids."""
    directory.mkdir(parents=True, exist_ok=True)
    ids = build_tokenizer(directory)
    tokens, eos = max(ids.values()) + 1, ids["<|endoftext|>"]
    dimensions = {"hidden_size": D, "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS, "vocab_size": HEAD}
    dimensions |= {
        "num_hidden_layers": LAYERS,
        "moe_layer_freq": MOE_LAYER_FREQ,
        "dense_intermediate_size": DENSE_HIDDEN,
    }
    dimensions |= {"num_experts": EXPERTS, "num_experts_per_tok": TOP_K, "expert_intermediate_size": EXPERT_HIDDEN}
    config = {
        "architectures": ["LLaDAMoEModelLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "auto_map": {
            "AutoConfig": "configuration_lladamoe.LLaDAConfig",
            "AutoModel": "modeling_lladamoe.LLaDAMoEModelLM",
            "AutoModelForCausalLM": "modeling_lladamoe.LLaDAMoEModelLM",
        },
        "bos_token_id": None,
        "clip_qkv": None,
        "eos_token_id": eos,
        "hidden_act": "silu",
        "initializer_range": 0.02,
        "max_position_embeddings": 8192,
        "model_type": "llada",
        "moe_router_enable_expert_bias": False,
        "moe_router_score_function": "softmax",
        "norm_topk_prob": True,
        "output_router_logits": False,
        "pad_token_id": eos,
        "partial_rotary_factor": 1,
        "qk_layernorm": True,
        "rms_norm_eps": 1e-05,
        "rope_scaling": None,
        "rope_theta": 50000,
        "routed_scaling_factor": 1,
        "router_aux_loss_coef": 0.01,
        "router_num_group": None,
        "router_topk_group": None,
        "shared_expert_intermediate_size": None,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "transformers_version": "4.49.0",
        "use_cache": False,
    }
    _write_json(directory / "config.json", dict(sorted((config | dimensions).items())))
    _write_json(directory / "generation_config.json", {"eos_token_id": eos, "pad_token_id": eos})
    g = torch.Generator().manual_seed(seed)
    tensors = _qwen_tensors(g, D, HEADS, KV_HEADS, LAYERS, DENSE_HIDDEN, qk_norm=True, width=HEAD)
    sparse_experts(tensors, g, [i for i, sparse in enumerate(MOE_LAYER_FREQ) if sparse], EXPERTS, EXPERT_HIDDEN)
    tensors["lm_head.weight"][eos] *= EOS_BOOST
    _silence_rows(tensors["lm_head.weight"], [ids["<|mask|>"], *range(tokens, HEAD)])
    _save_shards({name: t.to(torch.bfloat16) for name, t in tensors.items()}, directory, shards=2)
    return ids


def record(args: argparse.Namespace) -> None:
    import transformers
    from safetensors.torch import save_file

    torch.manual_seed(0)
    checkpoint = args.out / "lladamoe-tiny"
    ids = build_lladamoe(checkpoint)
    mask_id = ids["<|mask|>"]
    official = OfficialFiles({"lladamoe-hub": args.lladamoe_hub, "llada": args.llada, "dinfer": args.dinfer})
    with tempfile.TemporaryDirectory() as scratch:
        hub = official.package(
            Path(scratch), "lladamoe_hub", args.lladamoe_hub, ("configuration_lladamoe.py", "modeling_lladamoe.py")
        )
        decoding = official.package(Path(scratch), "dinfer_decoding", args.dinfer / "python/dinfer/decoding", DECODING)
        llada = official.load("llada_generate", args.llada / "generate.py")
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(checkpoint))
        model, info = hub["modeling_lladamoe"].LLaDAMoEModelLM.from_pretrained(
            str(checkpoint), torch_dtype=torch.float32, output_loading_info=True
        )
        assert not any(info.values()), f"the tiny checkpoint does not have the official layout: {info}"
        model.eval()
        prompts = [_chat_ids(tokenizer, p) for p in PROMPTS]
        tensors, chosen = {}, []
        hook = model.model.layers[0].mlp.gate.register_forward_hook(
            lambda module, inputs, output: chosen.append(output.softmax(-1).topk(TOP_K, dim=-1).indices.tolist())
        )
        with torch.no_grad():
            row = torch.tensor([prompts[1] + [mask_id] * GEN_LENGTH])
            tensors["full.input_ids"], tensors["full.logits"] = row, model(row).logits
            hook.remove()
            for index, prompt in enumerate(PADDED_PROMPTS):
                row = torch.tensor([_chat_ids(tokenizer, prompt) + [mask_id] * 8])
                tensors[f"alone.{index}.input_ids"], tensors[f"alone.{index}.logits"] = row, model(row).logits
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(args.out / "logits_lladamoe.safetensors"))

        cases = []

        def case(decoder: str, arguments: dict, index: int, tokens: torch.Tensor) -> None:
            prompt = prompts[index]
            assert tokens[0, : len(prompt)].tolist() == prompt
            generated = tokens[0, len(prompt) :].tolist()
            cases.append({"decoder": decoder, "arguments": arguments, "prompt": index, "generated": generated})

        for steps, block in LLADA_CASES:
            arguments = {"steps": steps, "gen_length": GEN_LENGTH, "block_length": block, "temperature": 0.0}
            arguments |= {"cfg_scale": 0.0, "remasking": "low_confidence", "mask_id": mask_id}
            for index, prompt in enumerate(prompts):
                case("llada.generate", arguments, index, llada.generate(model, torch.tensor([prompt]), **arguments))
        strategy, loop, utils = (decoding[name] for name in ("parallel_strategy", "generate_uniform", "utils"))
        for block, threshold in DINFER_CASES:
            arguments = {"temperature": 0.0, "threshold": threshold, "mask_id": mask_id, "eos_id": -1}
            for index, prompt in enumerate(prompts):
                decoder = strategy.ThresholdParallelDecoder(**arguments)
                dllm = loop.BlockWiseDiffusionLLM(model, decoder, utils.BlockIteratorFactory(), early_stop=False)
                with torch.no_grad():
                    tokens = dllm.generate(torch.tensor([prompt]), gen_length=GEN_LENGTH, block_length=block)
                shown = {**arguments, "gen_length": GEN_LENGTH, "block_length": block}
                case("dinfer.ThresholdParallelDecoder", shown, index, tokens)

    repositories = {
        "lladamoe-hub": "InfiniTensor/InfiniLM 0a7e522afb6079a30c7ecb50ce8abafe6cc3f808 (modeling); "
        "inclusionAI/dInfer fce4e32804103baa5d55230dff0352da0cdd6ceb tools/ (configuration)",
        "llada": "ML-GSAI/LLaDA b7e6c3565f194352da44b38dd12b6970597309f3",
        "dinfer": "inclusionAI/dInfer fce4e32804103baa5d55230dff0352da0cdd6ceb",
    }
    forwards = [{"name": "full", "note": f"prompt {PROMPTS[1]!r} + {GEN_LENGTH} masks"}]
    forwards += [{"name": f"alone.{i}", "note": f"prompt {p!r} + 8 masks, alone"} for i, p in enumerate(PADDED_PROMPTS)]
    fixture = moe_fixture(
        official,
        head={"repositories": repositories},
        stand_ins=None,
        ids=ids,
        prompts=prompts,
        experts=chosen[0],
        forwards=forwards,
        cases=cases,
    )
    _write_json(args.out / "official_lladamoe.json", fixture)


def main() -> None:
    parser = recorder_parser(__doc__, "lladamoe-hub", "llada", "dinfer")
    run_recorder(parser, record, "dInfer's decoders are wrapped in torch.compile")


if __name__ == "__main__":
    main()
