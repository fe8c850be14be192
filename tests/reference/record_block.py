"""Record what the official SDAR and Fast-dLLM v2 code does on tiny random-weight block-diffusion checkpoints.

The companion of ``record.py`` (LLaDA, Dream) for the block-diffusion models, whose checkpoints hold plain Qwen3
(SDAR) and Qwen2 (Fast-dLLM v2) weights under transformers' own names. The official code does not run on the
transformers the project requires, so run this script once, in a separate environment, with the official files passed
in as paths (nothing of them is copied into the repository)::

    python -m venv /tmp/ref-bd && /tmp/ref-bd/bin/pip install torch==2.13.0 transformers==4.53.1 einops triton==3.4.0
    TORCHDYNAMO_DISABLE=1 /tmp/ref-bd/bin/python tests/reference/record_block.py \
        --sdar SDAR --fast-dllm Fast-dLLM --fast-dllm-v2-hub Fast_dLLM_v2_7B --out tests/reference

``--sdar`` is a checkout of ``JetAstra/SDAR`` (its ``generate.py``, its evaluation's
``evaluation/opencompass/opencompass/models/huggingface_bd3.py`` and the remote code published with the checkpoints,
``training/model/SDAR-4B-Chat/{modeling_sdar,configuration_sdar,fused_linear_diffusion_cross_entropy}.py``);
``--fast-dllm`` a checkout of ``NVlabs/Fast-dLLM`` with its ``v2/`` folder (``v2/generation_functions.py``);
``--fast-dllm-v2-hub`` a directory holding the remote code published with ``Efficient-Large-Model/Fast_dLLM_v2_7B``
(``modeling.py``, ``configuration.py``). The files used and their SHA-256 go into ``official_block.json``. The
committed fixtures were recorded from JetAstra/SDAR c2041a8 (2025-12-15), NVlabs/Fast-dLLM 8292f3c (2025-10-11,
``v2/``) and the 7B checkpoint's remote code as vendored in Satgoy152/DualDiffusion 189fa7a
(``FastDLLM-inferencing/Fast_dLLM_v2_7B``; its only edit, an extra ``steps=None`` argument of ``generate``, does
nothing at its default), with transformers 4.53.1 (Fast-dLLM v2's pin; SDAR asks for >= 4.52.4) on Python 3.11.

The official code needs CUDA-only packages at import time; this script puts plain-torch stand-ins on the path, written
here, never taken from those packages (their semantics are what the official call sites use):

* ``flash_attn``: SDAR's RMSNorm calls ``flash_attn.ops.triton.layer_norm.rms_norm_fn`` (the RMSNorm in float32,
  times the weight) and its cached decoding calls ``flash_attn_func(q, k, v, causal=False, softmax_scale=s)`` (plain
  non-causal attention, grouped-query heads as in flash-attn: query head ``h`` reads key head ``h // (H / H_kv)``).
* ``mmengine`` and ``opencompass``: only the names ``huggingface_bd3.py`` imports at its top; its
  ``block_diffusion_generate`` uses none of them.

What it writes into ``--out`` (well under a megabyte):

* ``sdar-tiny/``, ``fastdllm-v2-tiny/``: checkpoints in the official layouts (SDAR's ``config.json`` keys,
  ``model_type: sdar``, ``block_size``, ``mask_token_id``, Qwen3 weight names, Qwen2 tokenizer files with Qwen3's
  added tokens and ``<|MASK|>`` in their real order; Fast-dLLM v2's ``Fast_dLLM_Qwen`` config with ``bd_size``, Qwen2
  weight names with q/k/v biases, Qwen2.5's added tokens then ``|<MASK>|``). Tiny dimensions, random weights from
  fixed seeds (a rerun writes the same bytes), zero head rows for the mask id and the ids past the tokenizer.
* ``logits_block.safetensors``: logits of full forwards of the official modeling code, with the exact input ids,
  position ids and the boolean 4-D mask the official code used (for Fast-dLLM v2 the mask its forward builds itself).
  The logits are raw: Fast-dLLM v2's generator shifts them (position ``j`` reads the logits of ``j - 1``).
* ``official_block.json``: prompt ids, and the tokens each official decoder returned, with all its arguments.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record import (  # noqa: E402
    GEN_LENGTH,
    PADDED_PROMPTS,
    PROMPTS,
    QWEN_MERGES,
    QWEN_TEMPLATE,
    OfficialFiles,
    _added_tokens,
    _byte_alphabet,
    _chat_ids,
    _normal,
    _qwen_linears,
    _save_shards,
    _silence_rows,
    _write_json,
)

# --- checkpoints -------------------------------------------------------------------------------------------------

#: Qwen3's added tokens in id order from 151643, then SDAR's mask (151669); ``False`` marks the non-special ones.
SDAR_ADDED = (
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
    ("<tool_response>", False),
    ("</tool_response>", False),
    ("<think>", False),
    ("</think>", False),
    ("<|MASK|>", False),
)
#: Qwen2.5's added tokens in id order from 151643 (to <|file_sep|>, 151664), then Fast-dLLM v2's mask (151665).
FAST_ADDED = SDAR_ADDED[:22] + (("|<MASK>|", True),)
#: The eleven multimodal markers both tokenizers list in additional_special_tokens with <|im_start|>, <|im_end|>.
_EXTRA_SPECIALS = [t for t, _ in SDAR_ADDED[1:14]]
QK_NORM = 4.0  # sharpens the tiny SDAR model's attention (q/k RMSNorm weights), else every mask predicts alike
EOS_BOOST = 2.0  # lets SDAR's stop ids win now and then
HEAD = 320  # > 272 + 27 tokens, as SDAR's 151,936 (Fast-dLLM v2 7B's 152,064) logits exceed its 151,670 tokens
FAST_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}" + QWEN_TEMPLATE
)  # Fast-dLLM v2's template adds this system turn when none is given


def build_tokenizer(directory: Path, added: tuple, config: dict) -> dict[str, int]:
    """Qwen2's tokenizer files (byte-level BPE ``vocab.json`` + ``merges.txt``) over a tiny vocabulary, then
    ``added`` in order. Returns the ids of the added tokens."""
    alphabet = _byte_alphabet()
    vocab = {c: i for i, c in enumerate(alphabet)}
    for left, right in QWEN_MERGES:
        vocab[left + right] = len(vocab)
    _write_json(directory / "vocab.json", vocab)
    (directory / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in QWEN_MERGES), encoding="utf-8"
    )
    ids = {t: len(vocab) + i for i, (t, _) in enumerate(added)}
    decoder = _added_tokens({ids[t]: t for t, _ in added})
    for token, special in added:
        decoder[str(ids[token])]["special"] = special
    _write_json(
        directory / "tokenizer_config.json",
        {"add_bos_token": False, "add_prefix_space": False, "added_tokens_decoder": decoder, **config},
    )
    return ids


def _qwen_tensors(
    g: torch.Generator,
    d: int,
    heads: int,
    kv_heads: int,
    layers: int,
    hidden: int,
    qk_norm: bool,
    head_std: float = 1.0,
    width: int = HEAD,
) -> dict[str, torch.Tensor]:
    """Random weights under transformers' Qwen3 (``qk_norm``: per-head q/k RMSNorm, no biases) or Qwen2 names, with
    ``width`` embedding rows and logits."""
    head_dim = d // heads
    tensors = {"model.embed_tokens.weight": _normal(g, width, d, std=1.0)}
    for i in range(layers):
        layer = f"model.layers.{i}."
        _qwen_linears(tensors, g, layer, d, heads, kv_heads, hidden, qkv_bias=not qk_norm)
        if qk_norm:
            tensors[layer + "self_attn.q_norm.weight"] = QK_NORM * (1.0 + _normal(g, head_dim, std=0.3))
            tensors[layer + "self_attn.k_norm.weight"] = QK_NORM * (1.0 + _normal(g, head_dim, std=0.3))
        tensors[layer + "input_layernorm.weight"] = 1.0 + _normal(g, d, std=0.1)
        tensors[layer + "post_attention_layernorm.weight"] = 1.0 + _normal(g, d, std=0.1)
    tensors["model.norm.weight"] = 1.0 + _normal(g, d, std=0.1)
    tensors["lm_head.weight"] = _normal(g, width, d, std=head_std)
    return tensors


def build_sdar(directory: Path, seed: int = 3) -> dict[str, int]:
    """An SDAR checkpoint (SDAR's ``config.json`` keys, Qwen3 weight names, its tokenizer layout) at a tiny scale."""
    directory.mkdir(parents=True, exist_ok=True)
    ids = build_tokenizer(
        directory,
        SDAR_ADDED,
        {
            "additional_special_tokens": _EXTRA_SPECIALS + ["<|MASK|>"],
            "auto_map": {"AutoTokenizer": ["tokenization_qwen2.Qwen2Tokenizer", None]},
            "bos_token": None,
            "chat_template": QWEN_TEMPLATE,
            "clean_up_tokenization_spaces": False,
            "eos_token": "<|endoftext|>",
            "mask_token": "<|MASK|>",
            "errors": "replace",
            "model_max_length": 131072,
            "pad_token": "<|endoftext|>",
            "split_special_tokens": False,
            "tokenizer_class": "Qwen2Tokenizer",
            "unk_token": None,
        },
    )
    token = {"lstrip": False, "normalized": False, "rstrip": False, "single_word": False}
    _write_json(
        directory / "special_tokens_map.json",
        {
            "additional_special_tokens": _EXTRA_SPECIALS + ["<|MASK|>"],
            "eos_token": {"content": "<|endoftext|>", **token},
            "pad_token": {"content": "<|endoftext|>", **token},
        },
    )
    _write_json(directory / "added_tokens.json", dict(sorted(ids.items())))
    d, heads, kv_heads, layers, hidden = 64, 4, 2, 2, 96
    _write_json(
        directory / "config.json",
        {
            "architectures": ["SDARForCausalLM"],
            "auto_map": {
                "AutoConfig": "configuration_sdar.SDARConfig",
                "AutoModel": "modeling_sdar.SDARModel",
                "AutoModelForCausalLM": "modeling_sdar.SDARForCausalLM",
            },
            "attention_bias": False,
            "attention_dropout": 0.0,
            "attn_implementation": "flex_attention",
            "bos_token_id": ids["<|endoftext|>"],
            "debug": False,
            "eos_token_id": ids["<|endoftext|>"],
            "block_size": 4,
            "mask_token_id": ids["<|MASK|>"],
            "ep_size": 1,
            "fuse_cross_entropy": True,
            "head_dim": d // heads,
            "hidden_act": "silu",
            "hidden_size": d,
            "initializer_range": 0.02,
            "intermediate_size": hidden,
            "max_position_embeddings": 4096,
            "max_window_layers": layers,
            "micro_forward": False,
            "model_type": "sdar",
            "num_attention_heads": heads,
            "num_hidden_layers": layers,
            "num_key_value_heads": kv_heads,
            "rms_norm_eps": 1e-06,
            "rope_scaling": None,
            "rope_theta": 1000000,
            "skip_checkpoint": False,
            "sliding_window": None,
            "tie_word_embeddings": False,
            "torch_dtype": "float32",
            "transformers_version": "4.52.4",
            "use_cache": False,
            "use_deepep": False,
            "use_sliding_window": False,
            "vocab_size": HEAD,
        },
    )
    _write_json(
        directory / "generation_config.json",
        {
            "bos_token_id": ids["<|endoftext|>"],
            "do_sample": True,
            "eos_token_id": [ids["<|im_end|>"], ids["<|endoftext|>"]],
            "pad_token_id": ids["<|endoftext|>"],
            "temperature": 0.6,
            "top_k": 20,
            "top_p": 0.95,
            "transformers_version": "4.51.0",
        },
    )
    g = torch.Generator().manual_seed(seed)
    tensors = _qwen_tensors(g, d, heads, kv_heads, layers, hidden, qk_norm=True)
    tensors["lm_head.weight"][[ids["<|im_end|>"], ids["<|endoftext|>"]]] *= EOS_BOOST
    _silence_rows(tensors["lm_head.weight"], [ids["<|MASK|>"], *range(len(ids) + 272, HEAD)])
    _save_shards(tensors, directory, shards=2)
    return ids


def build_fast_dllm_v2(directory: Path, seed: int = 4) -> dict[str, int]:
    """A Fast-dLLM v2 checkpoint (its ``Fast_dLLM_Qwen`` config, Qwen2 weight names, its tokenizer layout)."""
    directory.mkdir(parents=True, exist_ok=True)
    ids = build_tokenizer(
        directory,
        FAST_ADDED,
        {
            "additional_special_tokens": ["|<MASK>|"],
            "bos_token": None,
            "clean_up_tokenization_spaces": False,
            "eos_token": "<|im_end|>",
            "errors": "replace",
            "extra_special_tokens": {},
            "model_max_length": 131072,
            "pad_token": "<|endoftext|>",
            "padding_side": "right",
            "split_special_tokens": False,
            "tokenizer_class": "Qwen2Tokenizer",
            "unk_token": None,
        },
    )
    (directory / "chat_template.jinja").write_text(FAST_TEMPLATE, encoding="utf-8")
    token = {"lstrip": False, "normalized": False, "rstrip": False, "single_word": False}
    _write_json(
        directory / "special_tokens_map.json",
        {
            "additional_special_tokens": [{"content": "|<MASK>|", **token}],
            "eos_token": {"content": "<|im_end|>", **token},
            "pad_token": {"content": "<|endoftext|>", **token},
        },
    )
    _write_json(directory / "added_tokens.json", dict(sorted(ids.items())))
    d, heads, kv_heads, layers, hidden = 64, 4, 2, 2, 96
    _write_json(
        directory / "config.json",
        {
            "architectures": ["Fast_dLLM_QwenForCausalLM"],
            "attention_dropout": 0.0,
            "auto_map": {
                "AutoConfig": "configuration.Fast_dLLM_QwenConfig",
                "AutoModel": "modeling.Fast_dLLM_QwenModel",
                "AutoModelForCausalLM": "modeling.Fast_dLLM_QwenForCausalLM",
            },
            "bd_size": 8,
            "bos_token_id": ids["<|endoftext|>"],
            "conplemenrary_mask": True,
            "eos_token_id": ids["<|im_end|>"],
            "hidden_act": "silu",
            "hidden_size": d,
            "initializer_range": 0.02,
            "intermediate_size": hidden,
            "layer_types": ["full_attention"] * layers,
            "max_position_embeddings": 4096,
            "max_window_layers": layers,
            "model_type": "Fast_dLLM_Qwen",
            "num_attention_heads": heads,
            "num_hidden_layers": layers,
            "num_key_value_heads": kv_heads,
            "pad_token_id": ids["<|im_end|>"],
            "rms_norm_eps": 1e-06,
            "rope_scaling": None,
            "rope_theta": 1000000.0,
            "sliding_window": None,
            "tie_word_embeddings": False,
            "torch_dtype": "float32",
            "transformers_version": "4.53.1",
            "use_cache": True,
            "use_sliding_window": False,
            "vocab_size": HEAD,
        },
    )
    _write_json(
        directory / "generation_config.json",
        {
            "bos_token_id": ids["<|endoftext|>"],
            "do_sample": True,
            "eos_token_id": [ids["<|im_end|>"], ids["<|endoftext|>"]],
            "pad_token_id": ids["<|endoftext|>"],
            "repetition_penalty": 1.05,
            "temperature": 0.7,
            "top_k": 20,
            "top_p": 0.8,
            "transformers_version": "4.53.1",
        },
    )
    g = torch.Generator().manual_seed(seed)
    tensors = _qwen_tensors(g, d, heads, kv_heads, layers, hidden, qk_norm=False)
    tensors["lm_head.weight"][ids["<|im_end|>"]] *= 1.6
    _silence_rows(tensors["lm_head.weight"], [ids["|<MASK>|"], *range(len(ids) + 272, HEAD)])
    _save_shards(tensors, directory, shards=1)
    return ids


# --- official code ----------------------------------------------------------------------------------------------

_SHIMS = {
    "flash_attn/__init__.py": '''\
import torch.nn.functional as F


def flash_attn_func(q, k, v, dropout_p=0.0, softmax_scale=None, causal=False, **kwargs):
    """[B, L, H, D] attention; key head h // (H / H_kv) serves query head h, as flash-attn's grouped heads."""
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), is_causal=causal,
                                         scale=softmax_scale, enable_gqa=True)
    return out.transpose(1, 2)


def flash_attn_varlen_func(*args, **kwargs):
    raise NotImplementedError("stand-in")
''',
    "flash_attn/bert_padding.py": """\
def _missing(*args, **kwargs):
    raise NotImplementedError("stand-in")


index_first_axis = pad_input = unpad_input = _missing
""",
    "flash_attn/ops/__init__.py": "",
    "flash_attn/ops/triton/__init__.py": "",
    "flash_attn/ops/triton/layer_norm.py": '''\
import torch


def rms_norm_fn(x, weight, bias=None, eps=1e-6, **kwargs):
    """x / sqrt(mean(x^2) + eps) * weight (+ bias), computed in float32, returned in x's dtype."""
    h = x.float()
    y = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps) * weight.float()
    return (y if bias is None else y + bias.float()).to(x.dtype)
''',
    "mmengine/__init__.py": "",
    "mmengine/device.py": "def is_npu_available():\n    return False\n",
    "opencompass/__init__.py": "",
    "opencompass/models/__init__.py": "",
    "opencompass/models/base.py": "class BaseModel:\n    pass\n\n\nclass LMTemplateParser:\n    pass\n",
    "opencompass/models/base_api.py": "class APITemplateParser:\n    pass\n",
    "opencompass/registry.py": (
        "class _Registry:\n    def register_module(self, *args, **kwargs):\n"
        "        return lambda cls: cls\n\n\nMODELS = _Registry()\n"
    ),
    "opencompass/utils/__init__.py": "",
    "opencompass/utils/logging.py": "from logging import getLogger as get_logger\n",
    "opencompass/utils/prompt.py": "PromptList = list\n",
}


class Official(OfficialFiles):
    """The official SDAR and Fast-dLLM v2 modules."""

    SDAR_HUB = Path("training/model/SDAR-4B-Chat")

    def __init__(self, args: argparse.Namespace, scratch: Path):
        super().__init__(
            {name: getattr(args, name.replace("-", "_")) for name in ("sdar", "fast-dllm", "fast-dllm-v2-hub")}
        )
        for name, text in _SHIMS.items():
            (scratch / "shims" / name).parent.mkdir(parents=True, exist_ok=True)
            (scratch / "shims" / name).write_text(text, encoding="utf-8")
        sys.path.insert(0, str(scratch / "shims"))
        sys.path.insert(0, str(scratch))
        self.sdar = self.package(
            scratch,
            "sdar_hub",
            args.sdar / self.SDAR_HUB,
            ("configuration_sdar.py", "fused_linear_diffusion_cross_entropy.py", "modeling_sdar.py"),
        )
        self.sdar_generate = self.load("sdar_generate", args.sdar / "generate.py")
        self.sdar_bd3 = self.load(
            "sdar_bd3", args.sdar / "evaluation/opencompass/opencompass/models/huggingface_bd3.py"
        )
        self.fast = self.package(
            scratch, "fast_dllm_v2_hub", args.fast_dllm_v2_hub, ("configuration.py", "modeling.py")
        )
        self.fast_generation = self.load("fast_dllm_v2_generation", args.fast_dllm / "v2/generation_functions.py")


def block_causal(length: int, block: int, offset: int = 0) -> torch.Tensor:
    """``[L, L]`` bool: query ``i`` sees key ``j`` iff ``(j + offset) // block <= (i + offset) // block``."""
    blocks = (torch.arange(length) + offset) // block
    return blocks[None, :] <= blocks[:, None]


def record(args: argparse.Namespace) -> None:
    import transformers
    from safetensors.torch import save_file

    torch.manual_seed(0)
    out = args.out
    sdar_ids = build_sdar(out / "sdar-tiny")
    fast_ids = build_fast_dllm_v2(out / "fastdllm-v2-tiny")
    with tempfile.TemporaryDirectory() as scratch:
        official = Official(args, Path(scratch))
        sdar_tok = transformers.Qwen2Tokenizer.from_pretrained(str(out / "sdar-tiny"))
        fast_tok = transformers.Qwen2Tokenizer.from_pretrained(str(out / "fastdllm-v2-tiny"))
        sdar = (
            official.sdar["modeling_sdar"]
            .SDARForCausalLM.from_pretrained(str(out / "sdar-tiny"), torch_dtype=torch.float32)
            .eval()
        )
        fast = (
            official.fast["modeling"]
            .Fast_dLLM_QwenForCausalLM.from_pretrained(str(out / "fastdllm-v2-tiny"), torch_dtype=torch.float32)
            .eval()
        )
        sdar_mask, fast_mask = sdar_ids["<|MASK|>"], fast_ids["|<MASK>|"]
        prompts = {
            "sdar": [_chat_ids(sdar_tok, p) for p in PROMPTS],
            "fastdllm_v2": [_chat_ids(fast_tok, p) for p in PROMPTS],
        }

        tensors, forwards = {}, []

        def keep(name: str, model: str, note: str, ids, positions, mask, logits) -> None:
            tensors.update(
                {
                    f"{name}.input_ids": ids,
                    f"{name}.position_ids": positions,
                    f"{name}.mask": mask,
                    f"{name}.logits": logits,
                }
            )
            forwards.append({"name": name, "model": model, "note": note})

        with torch.no_grad():
            for block in (4,):  # SDAR: generate.py's mask, block_diffusion_attention_mask[:, :L, :L]
                ids = torch.tensor([prompts["sdar"][1] + [sdar_mask] * GEN_LENGTH])
                length = ids.shape[1]
                blocks = -(-length // block)
                full = torch.tril(torch.ones(blocks, blocks)).repeat_interleave(block, 0).repeat_interleave(block, 1)
                mask = full[:length, :length].unsqueeze(0)  # [1, L, L] float 0/1, as the official code passes it
                positions = torch.arange(length).unsqueeze(0)
                logits = sdar(ids, attention_mask=mask, position_ids=positions).logits
                assert torch.equal(mask[0].bool(), block_causal(length, block))
                keep(
                    f"sdar.full.b{block}",
                    "sdar",
                    f"prompt {PROMPTS[1]!r} + {GEN_LENGTH} masks; block-causal, blocks of {block} from position 0",
                    ids,
                    positions,
                    mask.bool()[:, None],
                    logits,
                )
            # A left-padded batch through the official forward: its generators take one unpadded row; the inputs are
            # the project's choice (blocks and positions counted from each row's first real token, pad keys hidden,
            # a pad query sees itself), the forward is SDAR's, which takes any mask and position ids.
            rows = [_chat_ids(sdar_tok, p) + [sdar_mask] * 8 for p in PADDED_PROMPTS]
            width = max(len(r) for r in rows)
            ids = torch.tensor([[sdar_ids["<|endoftext|>"]] * (width - len(r)) + r for r in rows])
            masks, positions = [], []
            for r in rows:
                pad = width - len(r)
                real = torch.arange(width) >= pad
                m = block_causal(width, 4, offset=-pad) & real[None, :] & real[:, None]
                masks.append(m | (torch.eye(width, dtype=torch.bool) & ~real[:, None]))
                positions.append((torch.arange(width) - pad).clamp(min=0))
            mask, positions = torch.stack(masks)[:, None], torch.stack(positions)
            logits = sdar(ids, attention_mask=mask, position_ids=positions).logits
            keep(
                "sdar.padded.b4",
                "sdar",
                "left-padded batch (pad <|endoftext|>), per-row block-causal mask of 4 "
                "aligned to the first real token, positions from 0 there (pads at 0)",
                ids,
                positions,
                mask,
                logits,
            )
            for block in (8, 32):  # Fast-dLLM v2: the forward builds eval_mask(L, block_size, 0) itself
                ids = torch.tensor([prompts["fastdllm_v2"][1] + [fast_mask] * GEN_LENGTH])
                length = ids.shape[1]
                logits = fast(ids, block_size=block).logits
                mask = fast.model.eval_mask(length, block, 0)
                mask = (mask if mask.dtype == torch.bool else mask == 0).reshape(1, 1, length, length)
                assert torch.equal(mask[0, 0], block_causal(length, block))
                keep(
                    f"fastdllm_v2.full.b{block}",
                    "fastdllm_v2",
                    f"prompt {PROMPTS[1]!r} + {GEN_LENGTH} masks; forward(input_ids, block_size={block}); raw "
                    "(unshifted) logits",
                    ids,
                    torch.arange(length).unsqueeze(0),
                    mask,
                    logits,
                )
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / "logits_block.safetensors"))

        cases = []

        def run(model: str, decoder: str, arguments: dict, call) -> None:
            for index, prompt in enumerate(prompts[model]):
                torch.manual_seed(0)
                with torch.no_grad():
                    tokens = call(torch.tensor([prompt]), **arguments)
                assert tokens[0, : len(prompt)].tolist() == prompt
                cases.append(
                    {
                        "model": model,
                        "decoder": decoder,
                        "arguments": arguments,
                        "prompt": index,
                        "generated": tokens[0, len(prompt) :].tolist(),
                    }
                )

        stops = [sdar_ids["<|im_end|>"], sdar_ids["<|endoftext|>"]]  # generation_config.json's eos_token_id
        # huggingface_bd3.block_diffusion_generate, SDAR's evaluation decoder; greedy is its temperature=1.0, top_k=1
        # (it asserts temperature > 0), its confidence the unfiltered softmax probability of the chosen token.
        bd3 = {
            "mask_id": sdar_mask,
            "gen_length": GEN_LENGTH,
            "temperature": 1.0,
            "top_k": 1,
            "top_p": 1.0,
            "remasking": "low_confidence",
            "stopping_criteria_idx": stops,
        }
        for block, steps, threshold in ((4, 4, 1.0), (4, 2, 1.0), (8, 8, 1.0), (8, 4, args.sdar_threshold)):
            run(
                "sdar",
                "sdar.huggingface_bd3.block_diffusion_generate",
                {**bd3, "block_length": block, "denoising_steps": steps, "threshold": threshold},
                lambda p, **a: official.sdar_bd3.block_diffusion_generate(
                    sdar, None, {"input_ids": p, "attention_mask": torch.ones_like(p)}, **a
                ),
            )
        # generate.py's block_diffusion_generate: its confidence is the probability after top-k/top-p filtering, 1.0
        # for every token at top_k=1; 'sequential' and 'low_confidence_dynamic' (all > threshold: the whole block in
        # one step) are thus deterministic, 'low_confidence_static' would follow torch.topk's order among ties.
        gen = {
            "mask_id": sdar_mask,
            "gen_length": GEN_LENGTH,
            "temperature": 1.0,
            "top_k": 1,
            "top_p": 1.0,
            "stopping_criteria_idx": stops,
        }
        for strategy, block, steps in (("sequential", 4, 4), ("sequential", 8, 4), ("low_confidence_dynamic", 4, 4)):
            run(
                "sdar",
                "sdar.generate.block_diffusion_generate",
                {
                    **gen,
                    "remasking_strategy": strategy,
                    "block_length": block,
                    "denoising_steps": steps,
                    "confidence_threshold": 0.85,
                },
                lambda p, **a: official.sdar_generate.block_diffusion_generate(sdar, {"input_ids": p}, **a),
            )

        # Fast-dLLM v2: the checkpoint's own generate (temperature 0: argmax, confidence = softmax probability).
        fast_args = {
            "max_new_tokens": GEN_LENGTH,
            "mask_id": fast_mask,
            "stop_token": fast_ids["<|im_end|>"],
            "temperature": 0,
        }
        for block, small, threshold, cache in (
            (8, 4, 1, False),
            (8, 8, args.fast_threshold, False),
            (16, 8, 1, False),
            (16, 4, args.fast_threshold, True),
        ):
            run(
                "fastdllm_v2",
                "fastdllm_v2.generate",
                {
                    **fast_args,
                    "block_size": block,
                    "small_block_size": small,
                    "threshold": threshold,
                    "use_block_cache": cache,
                },
                lambda p, **a: fast.generate(p, **a),
            )
        # v2/generation_functions.py batch_sample, as v2/eval.py calls it: prompts right-padded with the mask id.
        batches = []
        rows = prompts["fastdllm_v2"]
        width = max(len(r) for r in rows)
        padded = torch.tensor([r + [fast_mask] * (width - len(r)) for r in rows])
        seq_len = torch.tensor([len(r) for r in rows])
        sample = types.MethodType(official.fast_generation.Fast_dLLM_QwenForCausalLM.batch_sample, fast)
        for block, small, threshold, cache in ((8, 4, 1, False), (16, 8, args.fast_threshold, True)):
            arguments = {
                "block_size": block,
                "small_block_size": small,
                "max_new_tokens": GEN_LENGTH,
                "min_len": int(seq_len.min()),
                "mask_id": fast_mask,
                "threshold": threshold,
                "stop_token": fast_ids["<|im_end|>"],
                "use_block_cache": cache,
                "temperature": 0.0,
            }
            torch.manual_seed(0)
            with torch.no_grad():
                result = sample(padded.clone(), fast_tok, seq_len=seq_len.clone(), **arguments)
            batches.append(
                {
                    "model": "fastdllm_v2",
                    "decoder": "fastdllm_v2.generation_functions.batch_sample",
                    "arguments": arguments,
                    "input_ids": padded.tolist(),
                    "seq_len": seq_len.tolist(),
                    "pad_token_id": fast_tok.pad_token_id,
                    "rows": [result[i].tolist() for i in range(len(rows))],
                }
            )

    _write_json(
        out / "official_block.json",
        {
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "python": sys.version.split()[0],
            "official_files": official.files,
            "shims": sorted(_SHIMS),
            "prompts": PROMPTS,
            "padded_prompts": PADDED_PROMPTS,
            "gen_length": GEN_LENGTH,
            "special_ids": {"sdar": sdar_ids, "fastdllm_v2": fast_ids},
            "prompt_ids": prompts,
            "forwards": forwards,
            "cases": cases,
            "batches": batches,
        },
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for name in ("sdar", "fast-dllm", "fast-dllm-v2-hub"):
        parser.add_argument(f"--{name}", type=Path, required=True)
    parser.add_argument(
        "--sdar-threshold",
        type=float,
        default=0.3,
        help="a threshold the tiny model's "
        "confidences cross now and then (its tokens are far less certain than a trained model's)",
    )
    parser.add_argument("--fast-threshold", type=float, default=0.3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    args = parser.parse_args()
    if not os.environ.get("TORCHDYNAMO_DISABLE"):
        parser.error("set TORCHDYNAMO_DISABLE=1 (the official modeling files compile their training attention)")
    record(args)


if __name__ == "__main__":
    main()
