"""Record what LLaDA 2.x's modeling code and its ``generate`` do on tiny random-weight checkpoints.

The project loads LLaDA 2.0 / 2.1 checkpoints (``model_type: llada2_moe``, inclusionAI/LLaDA2.0-mini, -flash,
LLaDA2.1-mini) natively on transformers' ``Glm4MoeForCausalLM``; ``tests/test_llada2.py`` compares that with the
official code through the files this script writes. Run it once, in a separate environment, with the official files
passed in as paths (nothing of them is copied into the repository)::

    /work/ref/venv/bin/python -m venv /work/ref/venv-llada2      # torch 2.13 CPU reused through a .pth file
    /work/ref/venv-llada2/bin/pip install transformers==4.57.1
    TORCHDYNAMO_DISABLE=1 /work/ref/venv-llada2/bin/python tests/reference/record_llada2.py \
        --hub20 LLaDA2.0-code --hub21 LLaDA2.1-code --out tests/reference

``--hub20`` and ``--hub21`` are directories holding the ``modeling_llada2_moe.py`` and ``configuration_llada2_moe.py``
published with the LLaDA 2.0 and LLaDA 2.1 checkpoints. The hub is not reachable here; the committed fixtures come
from the copies vendored, unchanged in substance, by the dLLM library (``ZHZisZZ/dllm``): LLaDA 2.0's at
``d8cc1190`` (``dllm/pipelines/llada2/models/``, the hub file black-formatted, with its ``generate(threshold=0.95,
...)``) and LLaDA 2.1's at ``lingjiechen2/dllm`` ``9268328a`` ("support llada2.1 inference":
``dllm/pipelines/llada21/models/``, the hub file as published, with its ``generate(threshold, editing_threshold,
max_post_steps, num_to_transfer, ...)``); docs/block-diffusion.md says how they were identified. Transformers 4.57.1
(the files import ``TransformersKwargs``, which 4.49 lacks) on Python 3.11.

What it writes into ``--out`` (a few hundred KB):

* ``llada2-tiny/``: LLaDA 2.x's ``config.json`` keys (``model_type: llada2_moe``, ``num_experts``,
  ``num_shared_experts``, ``n_group``, ``topk_group``, ``routed_scaling_factor``, ``first_k_dense_replace``,
  ``partial_rotary_factor``, ``use_qk_norm``, ...) at a tiny scale, weights under the hub's names
  (``model.word_embeddings``, ``attention.query_key_value``, ``attention.dense``, ``attention.query_layernorm`` /
  ``key_layernorm``, ``mlp.gate.weight``, ``mlp.gate.expert_bias``, ``mlp.experts.{e}.*``, ``mlp.shared_experts.*``),
  one dense first layer, random norms, router weights and expert biases; a ``PreTrainedTokenizerFast`` with LLaDA
  2.x's special tokens (``<|endoftext|>``, ``<|mask|>``, the ``<role>`` chat markers) and its chat template.
* ``logits_llada2.safetensors``: logits of full forwards (one prompt; a left-padded batch), with their inputs.
* ``official_llada2.json``: prompt ids, the experts each token chose in the first sparse layer, and the tokens
  LLaDA 2.0's and LLaDA 2.1's ``generate`` returned, with all their arguments and how often parallel commits and
  edits fired; then an edge batch (``EDGE_PROMPTS``: prompts filling whole blocks among prompts ending inside one,
  LLaDA 2.1 at ``num_to_transfer`` 4 to 6) as ``edge_prompts``, ``edge_prompt_ids`` and ``edge_cases``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record_block import block_causal  # noqa: E402
from record_sdar_moe import moe_fixture  # noqa: E402

from record import (  # noqa: E402
    _CHARACTERS,
    GEN_LENGTH,
    PADDED_PROMPTS,
    PROMPTS,
    OfficialFiles,
    _added_tokens,
    _chat_ids,
    _normal,
    _save_shards,
    _silence_rows,
    _write_json,
    character_tokenizer,
    pairwise_mask,
    recorder_parser,
    run_recorder,
)

#: LLaDA 2.x's special tokens (ids 156891... in the real tokenizer; here after the characters).
SPECIALS = ("<|startoftext|>", "<|endoftext|>", "<|role_end|>", "<role>", "</role>", "<|mask|>")
TEMPLATE = (
    "{% for m in messages %}<role>{{ 'HUMAN' if m['role'] == 'user' else m['role'] | upper }}</role>"
    "{{ m['content'] }}<|role_end|>{% endfor %}{% if add_generation_prompt %}<role>ASSISTANT</role>{% endif %}"
)
HEAD = 112  # > 102 tokens, as LLaDA 2.x's 157,184 logits exceed its tokenizer
D, HEADS, KV_HEADS, HEAD_DIM, LAYERS = 32, 4, 2, 8, 3
EXPERTS, TOP_K, GROUPS, TOPK_GROUP, EXPERT_HIDDEN, DENSE_HIDDEN = 8, 2, 4, 2, 16, 64


def build_tokenizer(directory: Path) -> dict[str, int]:
    """A character vocabulary, then LLaDA 2.x's special tokens (``PreTrainedTokenizerFast``). Returns their ids."""
    vocab = character_tokenizer(directory, SPECIALS)
    ids = {t: vocab[t] for t in SPECIALS}
    _write_json(
        directory / "tokenizer_config.json",
        {
            "add_bos_token": False,
            "add_eos_token": False,
            "added_tokens_decoder": _added_tokens({i: t for t, i in ids.items()}),
            "bos_token": "<|startoftext|>",
            "eos_token": "<|endoftext|>",
            "pad_token": "<|endoftext|>",
            "mask_token": "<|mask|>",
            "clean_up_tokenization_spaces": False,
            "model_max_length": 32768,
            "chat_template": TEMPLATE,
            "tokenizer_class": "PreTrainedTokenizerFast",
        },
    )
    _write_json(
        directory / "special_tokens_map.json",
        {
            "bos_token": "<|startoftext|>",
            "eos_token": "<|endoftext|>",
            "pad_token": "<|endoftext|>",
            "mask_token": "<|mask|>",
        },
    )
    return ids


def build_llada2(directory: Path, seed: int = 7) -> dict[str, int]:
    """A LLaDA 2.x checkpoint (its ``config.json`` keys, hub weight names, tokenizer layout) at a tiny scale."""
    directory.mkdir(parents=True, exist_ok=True)
    ids = build_tokenizer(directory)
    _write_json(
        directory / "config.json",
        {
            "architectures": ["LLaDA2MoeModelLM"],
            "attention_dropout": 0.0,
            "auto_map": {
                "AutoConfig": "configuration_llada2_moe.LLaDA2MoeConfig",
                "AutoModel": "modeling_llada2_moe.LLaDA2MoeModel",
                "AutoModelForCausalLM": "modeling_llada2_moe.LLaDA2MoeModelLM",
            },
            "dtype": "bfloat16",
            "embedding_dropout": 0.0,
            "eos_token_id": ids["<|endoftext|>"],
            "first_k_dense_replace": 1,
            "head_dim": HEAD_DIM,
            "hidden_act": "silu",
            "hidden_size": D,
            "initializer_range": 0.02,
            "intermediate_size": DENSE_HIDDEN,
            "max_position_embeddings": 32768,
            "max_window_layers": LAYERS,
            "model_type": "llada2_moe",
            "moe_intermediate_size": EXPERT_HIDDEN,
            "moe_router_enable_expert_bias": True,
            "moe_shared_expert_intermediate_size": EXPERT_HIDDEN,
            "mtp_loss_scaling_factor": 0,
            "n_group": GROUPS,
            "norm_head": False,
            "norm_softmax": False,
            "norm_topk_prob": True,
            "num_attention_heads": HEADS,
            "num_experts": EXPERTS,
            "num_experts_per_tok": TOP_K,
            "num_hidden_layers": LAYERS,
            "num_key_value_heads": KV_HEADS,
            "num_nextn_predict_layers": 0,
            "num_shared_experts": 1,
            "output_dropout": 0.0,
            "output_router_logits": False,
            "pad_token_id": ids["<|endoftext|>"],
            "partial_rotary_factor": 0.5,
            "rms_norm_eps": 1e-06,
            "rope_scaling": None,
            "rope_theta": 600000,
            "rotary_dim": HEAD_DIM // 2,
            "routed_scaling_factor": 2.5,
            "router_dtype": "fp32",
            "score_function": "sigmoid",
            "tie_word_embeddings": False,
            "topk_group": TOPK_GROUP,
            "transformers_version": "4.57.1",
            "use_bias": False,
            "use_cache": False,
            "use_qk_norm": True,
            "use_qkv_bias": False,
            "use_rmsnorm": True,
            "using_split_qkv_in_self_attention": False,
            "vocab_size": HEAD,
        },
    )
    _write_json(
        directory / "generation_config.json",
        {
            "bos_token_id": ids["<|startoftext|>"],
            "eos_token_id": ids["<|endoftext|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
    )
    g = torch.Generator().manual_seed(seed)
    tensors = {"model.word_embeddings.weight": _normal(g, HEAD, D, std=1.0)}
    qkv = (HEADS + 2 * KV_HEADS) * HEAD_DIM
    for i in range(LAYERS):
        layer = f"model.layers.{i}."
        tensors[layer + "input_layernorm.weight"] = 1.0 + _normal(g, D, std=0.1)
        tensors[layer + "post_attention_layernorm.weight"] = 1.0 + _normal(g, D, std=0.1)
        tensors[layer + "attention.query_key_value.weight"] = _normal(g, qkv, D, std=D**-0.5)
        tensors[layer + "attention.query_layernorm.weight"] = 3.0 * (1.0 + _normal(g, HEAD_DIM, std=0.3))
        tensors[layer + "attention.key_layernorm.weight"] = 3.0 * (1.0 + _normal(g, HEAD_DIM, std=0.3))
        tensors[layer + "attention.dense.weight"] = _normal(g, D, HEADS * HEAD_DIM, std=(HEADS * HEAD_DIM) ** -0.5)
        mlp = layer + "mlp."
        if i == 0:  # first_k_dense_replace: 1
            tensors[mlp + "gate_proj.weight"] = _normal(g, DENSE_HIDDEN, D, std=D**-0.5)
            tensors[mlp + "up_proj.weight"] = _normal(g, DENSE_HIDDEN, D, std=D**-0.5)
            tensors[mlp + "down_proj.weight"] = _normal(g, D, DENSE_HIDDEN, std=DENSE_HIDDEN**-0.5)
            continue
        tensors[mlp + "gate.weight"] = _normal(g, EXPERTS, D, std=0.5)
        tensors[mlp + "gate.expert_bias"] = _normal(g, EXPERTS, std=0.3)
        for e in range(EXPERTS):
            expert = f"{mlp}experts.{e}."
            tensors[expert + "gate_proj.weight"] = _normal(g, EXPERT_HIDDEN, D, std=D**-0.5)
            tensors[expert + "up_proj.weight"] = _normal(g, EXPERT_HIDDEN, D, std=D**-0.5)
            tensors[expert + "down_proj.weight"] = _normal(g, D, EXPERT_HIDDEN, std=EXPERT_HIDDEN**-0.5)
        tensors[mlp + "shared_experts.gate_proj.weight"] = _normal(g, EXPERT_HIDDEN, D, std=D**-0.5)
        tensors[mlp + "shared_experts.up_proj.weight"] = _normal(g, EXPERT_HIDDEN, D, std=D**-0.5)
        tensors[mlp + "shared_experts.down_proj.weight"] = _normal(g, D, EXPERT_HIDDEN, std=EXPERT_HIDDEN**-0.5)
    tensors["model.norm.weight"] = 1.0 + _normal(g, D, std=0.1)
    head = _normal(g, HEAD, D, std=1.0)
    head[ids["<|endoftext|>"]] *= 1.5
    tensors["lm_head.weight"] = _silence_rows(head, [ids["<|mask|>"], *range(len(_CHARACTERS) + len(SPECIALS), HEAD)])
    _save_shards({name: t.to(torch.bfloat16) for name, t in tensors.items()}, directory, shards=2)
    return ids


class Observed:
    """The official model as its ``generate`` calls it, with the one stand-in the recording needs, and a count of
    what each call did.

    The published ``generate`` builds its 4-D mask in bfloat16 (``.to(torch.bfloat16)``), which scaled-dot-product
    attention refuses next to float32 queries; the model runs in float32 here, so the mask is cast to float32 (its
    values unchanged). ``additive`` also turns a 0/1 mask into 0/-inf: LLaDA 2.1's file passes ``block_mask`` 0/1
    where LLaDA 2.0's takes its ``.log()``, and attention adds the mask to the scores, so as published earlier blocks
    still attend to the current one (their scores raised by 1 instead of lowered to -inf). Counts: forwards, and
    tokens of the current block changed from one forward to the next other than by filling a mask (edits).
    """

    def __init__(self, model, mask_id: int, additive: bool):
        self.model, self.mask_id, self.additive = model, mask_id, additive
        self.forwards = self.edits = 0
        self.last: torch.Tensor | None = None
        original = type(model).forward.__get__(model)  # the class's, not an earlier runner's wrapper

        def forward(input_ids, attention_mask=None, **kwargs):
            mask = attention_mask.float()
            if self.additive and not bool((mask < 0).any()):
                mask = mask.log()
            if self.last is not None and self.last.shape == input_ids.shape:
                before = self.last[0]
                self.edits += int(((before != mask_id) & (before != input_ids[0])).sum())
            self.last = input_ids.clone()
            self.forwards += 1
            return original(input_ids, attention_mask=mask, **kwargs)

        model.forward = forward

    def generate(self, prompt: list[int], **arguments) -> tuple[list[int], int, int]:
        """``(generated ids, forwards, edits)`` of one official ``generate`` call."""
        self.forwards = self.edits = 0
        self.last = None
        with torch.no_grad():
            tokens = self.model.generate(torch.tensor([prompt]), **arguments)
        return tokens[0].tolist(), self.forwards, self.edits


def official_models(args: argparse.Namespace, scratch: Path, checkpoint: Path):
    """``(files, tokenizer, LLaDA 2.0's model, LLaDA 2.1's model)``: each modeling file imported as a package from
    its directory, its ``LLaDA2MoeModelLM`` loaded from ``checkpoint`` in float32, eval mode."""
    import transformers

    files = OfficialFiles({"hub20": args.hub20, "hub21": args.hub21})
    names = ("modeling_llada2_moe.py", "configuration_llada2_moe.py")
    models = [
        files.package(scratch, package, source, names)["modeling_llada2_moe"]
        .LLaDA2MoeModelLM.from_pretrained(str(checkpoint), dtype=torch.float32)
        .eval()
        for package, source in (("llada20_hub", args.hub20), ("llada21_hub", args.hub21))
    ]
    return files, transformers.AutoTokenizer.from_pretrained(str(checkpoint)), *models


#: LLaDA 2.0's ``generate`` settings recorded: ``(block_length, steps, threshold)``; 0.95 and 32/32 are its defaults.
SETTINGS_20 = ((32, 32, 0.95), (32, 32, 0.5), (8, 8, 0.5), (8, 2, 0.7))
#: LLaDA 2.1's: ``(block_length, threshold, editing_threshold)`` (``max_post_steps`` 16, ``num_to_transfer`` 1).
SETTINGS_21 = ((32, 0.5, 0.5), (8, 0.7, 0.5), (8, 0.5, 0.3), (32, 0.95, 0.9))
#: The edge batch (``edge_prompts``, ``edge_prompt_ids``, ``edge_cases`` in the json), after the cases above: prompts
#: of 32 and 24 tokens after the chat template (one whole block of 32; whole blocks of 8: the official ``generate``
#: runs them through its first forward unchanged and decodes from the next block on; the template alone is 19 tokens,
#: so no prompt is 8 or 16 long) among prompts of 29, 35, 38 and 21 tokens, whose tails fill 5, 3, 6 and 5 positions
#: of their first block of 8 (29, 3, 6, 21 of a block of 32).
EDGE_PROMPTS = ["count to ten!", "sort 3 1 2", "hello", "What is 17 * 24?", "list two primes, ok", "hi"]
#: LLaDA 2.0's ``generate`` on the edge batch: ``(block_length, steps, threshold)``.
EDGE_20 = ((32, 32, 0.95), (8, 4, 0.6))
#: LLaDA 2.1's: ``(block_length, threshold, editing_threshold, num_to_transfer)``, each step committing at least
#: ``num_to_transfer`` >= 4 masks, more than a partial first block of 8 holds for some prompts (the official
#: ``generate`` then commits them all), fewer for others.
EDGE_21 = ((8, 0.7, 0.5, 4), (8, 0.5, 0.3, 5), (32, 0.95, 0.9, 6))


def run_cases(
    runner: Observed, decoder: str, settings: list[dict], prompts: list[list[int]], edits: bool
) -> list[dict]:
    """One case per setting (``generate``'s keyword arguments) and prompt, in that order: the generated ids, the
    forwards taken and, when ``edits``, the edits made."""
    cases = []
    for arguments in settings:
        for index, prompt in enumerate(prompts):
            generated, calls, edited = runner.generate(prompt, **arguments)
            case = {"decoder": decoder, "arguments": arguments, "prompt": index, "generated": generated}
            cases.append({**case, "forwards": calls, **({"edits": edited} if edits else {})})
    return cases


def record(args: argparse.Namespace) -> None:
    from safetensors.torch import save_file

    torch.manual_seed(0)
    ids = build_llada2(args.out / "llada2-tiny")
    mask_id, eos_id = ids["<|mask|>"], ids["<|endoftext|>"]
    with tempfile.TemporaryDirectory() as scratch:
        files, tokenizer, model20, model21 = official_models(args, Path(scratch), args.out / "llada2-tiny")
        prompts = [_chat_ids(tokenizer, p) for p in PROMPTS]
        tensors, forwards, chosen = {}, [], {}

        def route(module, inputs, output):  # the first sparse layer's (top-k experts, weights, router logits)
            chosen.setdefault("experts", output[0].tolist())

        hook = model20.model.layers[1].mlp.gate.register_forward_hook(route)
        with torch.no_grad():
            row = torch.tensor([prompts[1] + [mask_id] * GEN_LENGTH])
            length = row.shape[1]
            allowed = block_causal(length, 8)[None, None]
            additive = torch.zeros(allowed.shape).masked_fill(~allowed, float("-inf"))
            positions = torch.arange(length)[None]
            logits = model20(row, attention_mask=additive, position_ids=positions).logits
            hook.remove()
            same = model21(row, attention_mask=additive, position_ids=positions).logits
            assert torch.equal(logits, same), "LLaDA 2.0's and 2.1's modeling files disagree"
            tensors.update({"full.input_ids": row, "full.position_ids": positions, "full.mask": allowed})
            tensors["full.logits"] = logits
            forwards.append({"name": "full", "note": f"prompt {PROMPTS[1]!r} + {GEN_LENGTH} masks, blocks of 8"})
            rows = [_chat_ids(tokenizer, p) + [mask_id] * 8 for p in PADDED_PROMPTS]
            width = max(len(r) for r in rows)
            batch = torch.tensor([[eos_id] * (width - len(r)) + r for r in rows])
            real = batch != eos_id
            pad = [width - len(r) for r in rows]
            masks = torch.stack([block_causal(width, 8, offset=-p) for p in pad])[:, None] & pairwise_mask(real)
            places = torch.stack([(torch.arange(width) - p).clamp(min=0) for p in pad])
            additive = torch.zeros(masks.shape).masked_fill(~masks, float("-inf"))
            tensors.update({"padded.input_ids": batch, "padded.position_ids": places, "padded.mask": masks})
            tensors["padded.logits"] = model20(batch, attention_mask=additive, position_ids=places).logits
            forwards.append({"name": "padded", "note": "left-padded batch (pad <|endoftext|>), blocks of 8"})
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(args.out / "logits_llada2.safetensors"))

        common = {"temperature": 0.0, "gen_length": GEN_LENGTH, "eos_id": eos_id, "mask_id": mask_id}
        # LLaDA 2.0's file samples with torch.multinomial at temperature 0 (its sampler has no greedy branch);
        # LLaDA 2.1's takes the argmax there. The 2.0 cases run 2.0's generate with 2.1's sampler.
        model20._sample_with_temperature_topk_topp = types.MethodType(
            type(model21)._sample_with_temperature_topk_topp, model20
        )
        runner20 = Observed(model20, mask_id, additive=False)

        def settings20(settings) -> list[dict]:
            return [{**common, "block_length": b, "steps": s, "threshold": t} for b, s, t in settings]

        def settings21(settings) -> list[dict]:
            names = ("block_length", "threshold", "editing_threshold", "max_post_steps", "num_to_transfer")
            return [{**common, **dict(zip(names, (b, t, e, 16, k), strict=True))} for b, t, e, k in settings]

        one = [(*setting, 1) for setting in SETTINGS_21]  # num_to_transfer 1
        cases = run_cases(runner20, "llada2.0.generate", settings20(SETTINGS_20), prompts, edits=False)
        for published in (False, True):
            decoder = "llada2.1.generate" + (" (mask as published: 0/1)" if published else "")
            runner21 = Observed(model21, mask_id, additive=not published)
            cases += run_cases(runner21, decoder, settings21(one), prompts, edits=True)
        edge_ids = [_chat_ids(tokenizer, p) for p in EDGE_PROMPTS]
        edge = run_cases(runner20, "llada2.0.generate", settings20(EDGE_20), edge_ids, edits=False)
        runner21 = Observed(model21, mask_id, additive=True)
        edge += run_cases(runner21, "llada2.1.generate", settings21(EDGE_21), edge_ids, edits=True)

    result = moe_fixture(
        files,
        head={
            "repositories": {
                "hub20": "ZHZisZZ/dllm d8cc1190ddbe47a7c38fd0eb5d29d3a0b12043c5 dllm/pipelines/llada2/models/",
                "hub21": "lingjiechen2/dllm 9268328a71b56e08a0be48e4319b938e29cfe1a8 dllm/pipelines/llada21/models/",
            }
        },
        stand_ins=None,
        ids=ids,
        prompts=prompts,
        experts=chosen["experts"],
        forwards=forwards,
        cases=cases,
    )
    result.update({"edge_prompts": EDGE_PROMPTS, "edge_prompt_ids": edge_ids, "edge_cases": edge})
    (args.out / "official_llada2.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")


def main() -> None:
    run_recorder(recorder_parser(__doc__, "hub20", "hub21"), record, why="recorded as the other recorders are")


if __name__ == "__main__":
    main()
