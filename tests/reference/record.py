"""Record what the official LLaDA, Fast-dLLM, WINO, Dream and APD code does on tiny random-weight checkpoints.

The project decodes LLaDA and Dream checkpoints with transformers' own Llama and Qwen2 classes
(:mod:`dlm_decode.models.native`); its tests compare that with the official code through the files this script
writes. The official code does not run on the transformers the project requires, so run this script once, in a
separate environment, with the official files passed in as paths (nothing of them is copied into the repository)::

    python -m venv /tmp/ref && /tmp/ref/bin/pip install torch==2.13.0 transformers==4.49.0 einops
    TORCHDYNAMO_DISABLE=1 /tmp/ref/bin/python tests/reference/record.py \
        --llada LLaDA --fast-dllm Fast-dLLM --wino WINO-DLLM --dream Dream-v0-Instruct-7B --apd apd \
        --out tests/reference

``--llada``, ``--fast-dllm``, ``--wino`` and ``--apd`` are checkouts of ``ML-GSAI/LLaDA``, ``NVlabs/Fast-dLLM``,
``Feng-Hong/WINO-DLLM`` and ``danielmisrael/apd``; ``--dream`` is a directory holding the code files published
with the ``Dream-org/Dream-v0-Instruct-7B`` checkpoint (``modeling_dream.py``, ``configuration_dream.py``,
``generation_utils.py``, ``tokenization_dream.py``). ``TORCHDYNAMO_DISABLE=1`` is needed because Fast-dLLM's
modeling file wraps its attention in ``torch.compile``. The files used and their SHA-256 go into
``official.json``; docs/real-models.md lists the commits the committed fixtures were recorded from.

What it writes into ``--out`` (a few hundred KB in all):

* ``llada-tiny/``, ``dream-tiny/``, ``qwen2-tiny/``: checkpoints in the official layouts (LLaDA's weight names in
  two safetensors shards with an index, its ``PreTrainedFast`` tokenizer; Dream's Qwen2 weight names, its
  ``DreamTokenizer`` files over a byte-level BPE vocabulary; a causal Qwen2 sharing that vocabulary as APD's
  verifier). Dimensions and vocabularies are tiny, the special ids are placed as in the real checkpoints (mask,
  EOS, pad, end of turn, an output head wider than the tokenizer), and the weights are random, drawn with fixed
  seeds, so rerunning the script rebuilds the same files. The head rows of the mask id and of the padding ids are
  zero (the trained models never predict them), so the official code, whose softmax includes them, and the
  project, which excludes them, see the same candidates.
* ``official.json``: for fixed prompts, the prompt ids of the official tokenizers and the tokens each official
  decoder returns at temperature 0, with its arguments.
* ``logits.safetensors``: the logits of full forwards of the official modeling code (one unpadded prompt, and a
  left-padded batch with a 4-D mask and position ids where the official code accepts them).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import importlib.util
import json
import os
import string
import sys
import tempfile
from pathlib import Path

import torch

# --- checkpoints -------------------------------------------------------------------------------------------------

#: Prompts decoded by every official decoder (with the checkpoint's chat template applied).
PROMPTS = ["sort 3 1 2", "What is 17 * 24?", "hi", "Name three fruits, then stop.", "reverse the word stone"]
#: Prompts of the left-padded logits batch.
PADDED_PROMPTS = ["hi", "What is 17 * 24?", "sort 3 1 2"]
GEN_LENGTH = 32

_CHARACTERS = tuple(sorted(set(string.printable) - set("\t\r\x0b\x0c")))  # 96 ids

LLADA_SPECIALS = (
    "<|startoftext|>",
    "<|endoftext|>",
    "<|mdm_mask|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eot_id|>",
)
LLADA_TEMPLATE = (
    "{% for m in messages %}{% if loop.first %}{{ bos_token }}{% endif %}<|start_header_id|>"
    "{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
LLADA_HEAD = 104  # > 102 tokens, as LLaDA's 126,464 logits exceed its 126,349 tokens

QWEN_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
DREAM_ADDED = ("<|beginoftext|>", "<|mask|>")
QWEN_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
QWEN_MERGES = (
    ("Ġ", "t"),
    ("h", "e"),
    ("Ġt", "he"),
    ("i", "n"),
    ("e", "r"),
    ("a", "n"),
    ("Ġ", "a"),
    ("o", "n"),
    ("r", "e"),
    ("Ġ", "s"),
    ("o", "r"),
    ("Ġ", "w"),
    ("e", "n"),
    ("Ġ", "f"),
    ("i", "s"),
    ("a", "t"),
)
DREAM_HEAD = 280  # > the 272 + 5 tokens, as Dream's 152,064 logits exceed its 151,667 tokens


def _byte_alphabet() -> list[str]:
    """The 256 printable characters byte-level BPE (GPT-2, Qwen2) writes for the bytes 0..255, in byte order."""
    direct = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    shifted = iter(range(256, 512))
    return [chr(b) if b in direct else chr(next(shifted)) for b in range(256)]


def _write_json(path: Path, value) -> None:
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _added_tokens(specials: dict[int, str]) -> dict[str, dict]:
    return {
        str(i): {
            "content": t,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for i, t in specials.items()
    }


def character_tokenizer(directory: Path, specials: tuple[str, ...]) -> dict[str, int]:
    """Write ``directory/tokenizer.json``: one token per printable character, then ``specials`` (added special
    tokens). Returns the vocabulary."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

    vocab = {token: i for i, token in enumerate(_CHARACTERS + specials)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=None))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    core.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])
    core.save(str(directory / "tokenizer.json"))
    return vocab


def build_llada_tokenizer(directory: Path) -> int:
    """LLaDA's tokenizer layout at a tiny scale: a character vocabulary, then LLaDA's special tokens (a
    ``PreTrainedTokenizerFast`` with ``tokenizer.json``, no mask_token attribute). Returns its size."""
    vocab = character_tokenizer(directory, LLADA_SPECIALS)
    specials = {vocab[t]: t for t in LLADA_SPECIALS}
    _write_json(
        directory / "tokenizer_config.json",
        {
            "add_bos_token": False,
            "add_eos_token": False,
            "added_tokens_decoder": _added_tokens(specials),
            "bos_token": "<|startoftext|>",
            "eos_token": "<|endoftext|>",
            "pad_token": "<|endoftext|>",
            "clean_up_tokenization_spaces": False,
            "model_max_length": 4096,
            "chat_template": LLADA_TEMPLATE,
            "tokenizer_class": "PreTrainedTokenizerFast",
        },
    )
    _write_json(
        directory / "special_tokens_map.json",
        {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>"},
    )
    return len(vocab)


def build_qwen_tokenizer(directory: Path, dream: bool) -> int:
    """Qwen2's tokenizer files (``vocab.json`` + ``merges.txt``, byte-level BPE) over a tiny vocabulary, with
    Qwen's special tokens and, for Dream, Dream's two additions and its ``DreamTokenizer`` class. Returns its size."""
    alphabet = _byte_alphabet()
    vocab = {c: i for i, c in enumerate(alphabet)}
    for left, right in QWEN_MERGES:
        vocab[left + right] = len(vocab)
    _write_json(directory / "vocab.json", vocab)
    (directory / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in QWEN_MERGES), encoding="utf-8"
    )
    tokens = QWEN_SPECIALS + (DREAM_ADDED if dream else ())
    specials = {len(vocab) + i: t for i, t in enumerate(tokens)}
    config = {
        "add_prefix_space": False,
        "added_tokens_decoder": _added_tokens(specials),
        "bos_token": None,
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "errors": "replace",
        "clean_up_tokenization_spaces": False,
        "model_max_length": 2048,
        "split_special_tokens": False,
        "chat_template": QWEN_TEMPLATE,
        "tokenizer_class": "Qwen2Tokenizer",
    }
    if dream:
        config.update(
            {
                "bos_token": "<|beginoftext|>",
                "mask_token": "<|mask|>",
                "tokenizer_class": "DreamTokenizer",
                "additional_special_tokens": list(DREAM_ADDED),
                "auto_map": {"AutoTokenizer": ["tokenization_dream.DreamTokenizer", None]},
            }
        )
    _write_json(directory / "tokenizer_config.json", config)
    _write_json(
        directory / "special_tokens_map.json",
        {k: config[k] for k in ("eos_token", "pad_token")}
        | ({"bos_token": "<|beginoftext|>", "mask_token": "<|mask|>"} if dream else {}),
    )
    return len(vocab) + len(tokens)


def _normal(generator: torch.Generator, *shape: int, std: float) -> torch.Tensor:
    return torch.randn(*shape, generator=generator) * std


def _silence_rows(head: torch.Tensor, rows: list[int]) -> torch.Tensor:
    head[rows] = 0.0
    return head


def _save_shards(tensors: dict[str, torch.Tensor], directory: Path, shards: int) -> None:
    """Save ``tensors`` as ``shards`` safetensors files with a ``model.safetensors.index.json`` (or one file)."""
    from safetensors.torch import save_file

    names = list(tensors)
    if shards == 1:
        save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
        return
    weight_map = {}
    for shard in range(shards):
        file = f"model-{shard + 1:05d}-of-{shards:05d}.safetensors"
        part = names[shard::shards]
        save_file({n: tensors[n].contiguous() for n in part}, str(directory / file), metadata={"format": "pt"})
        weight_map.update({n: file for n in part})
    size = sum(t.numel() * t.element_size() for t in tensors.values())
    _write_json(
        directory / "model.safetensors.index.json",
        {"metadata": {"total_size": size}, "weight_map": dict(sorted(weight_map.items()))},
    )


def build_llada(directory: Path, seed: int = 0) -> None:
    """A LLaDA checkpoint (LLaDA's ``config.json`` fields and weight names) with tiny dimensions."""
    directory.mkdir(parents=True, exist_ok=True)
    tokens = build_llada_tokenizer(directory)
    d, heads, layers, hidden = 64, 4, 2, 128
    ids = {t: _CHARACTERS.__len__() + i for i, t in enumerate(LLADA_SPECIALS)}
    _write_json(
        directory / "config.json",
        {
            "activation_type": "silu",
            "alibi": False,
            "alibi_bias_max": 8.0,
            "architectures": ["LLaDAModelLM"],
            "attention_dropout": 0.0,
            "attention_layer_norm": False,
            "attention_layer_norm_with_affine": True,
            "auto_map": {
                "AutoConfig": "configuration_llada.LLaDAConfig",
                "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM",
                "AutoModel": "modeling_llada.LLaDAModelLM",
            },
            "bias_for_layer_norm": False,
            "block_group_size": 1,
            "block_type": "llama",
            "d_model": d,
            "embedding_dropout": 0.0,
            "embedding_size": LLADA_HEAD,
            "eos_token_id": ids["<|endoftext|>"],
            "flash_attention": False,
            "include_bias": False,
            "include_qkv_bias": False,
            "init_cutoff_factor": None,
            "init_device": "meta",
            "init_fn": "mitchell",
            "init_std": 0.02,
            "input_emb_norm": False,
            "layer_norm_type": "rms",
            "layer_norm_with_affine": True,
            "mask_token_id": ids["<|mdm_mask|>"],
            "max_sequence_length": 512,
            "mlp_hidden_size": hidden,
            "mlp_ratio": 4,
            "model_type": "llada",
            "multi_query_attention": None,
            "n_heads": heads,
            "n_kv_heads": heads,
            "n_layers": layers,
            "pad_token_id": ids["<|endoftext|>"],
            "precision": "amp_bf16",
            "residual_dropout": 0.0,
            "rms_norm_eps": 1e-05,
            "rope": True,
            "rope_full_precision": True,
            "rope_theta": 500000.0,
            "scale_logits": False,
            "transformers_version": "4.46.3",
            "use_cache": False,
            "vocab_size": LLADA_HEAD,
            "weight_tying": False,
        },
    )
    _write_json(
        directory / "generation_config.json",
        {"bos_token_id": ids["<|startoftext|>"], "eos_token_id": ids["<|endoftext|>"]},
    )
    g = torch.Generator().manual_seed(seed)
    linear = 1.0 / d**0.5
    tensors = {"model.transformer.wte.weight": _normal(g, LLADA_HEAD, d, std=0.5)}
    for i in range(layers):
        block = f"model.transformer.blocks.{i}."
        for name, shape in (
            ("q_proj", (d, d)),
            ("k_proj", (d, d)),
            ("v_proj", (d, d)),
            ("attn_out", (d, d)),
            ("ff_proj", (hidden, d)),
            ("up_proj", (hidden, d)),
            ("ff_out", (d, hidden)),
        ):
            tensors[block + name + ".weight"] = _normal(
                g, *shape, std=linear * (3.0 if name in ("q_proj", "k_proj") else 1.0)
            )
        tensors[block + "attn_norm.weight"] = 1.0 + _normal(g, d, std=0.1)
        tensors[block + "ff_norm.weight"] = 1.0 + _normal(g, d, std=0.1)
    tensors["model.transformer.ln_f.weight"] = 1.0 + _normal(g, d, std=0.1)
    head = _normal(g, LLADA_HEAD, d, std=0.8)
    head[ids["<|endoftext|>"]] *= 1.8
    tensors["model.transformer.ff_out.weight"] = _silence_rows(head, [ids["<|mdm_mask|>"], *range(tokens, LLADA_HEAD)])
    _save_shards(tensors, directory, shards=2)


def _qwen_linears(
    tensors: dict[str, torch.Tensor],
    g: torch.Generator,
    layer: str,
    d: int,
    heads: int,
    kv_heads: int,
    hidden: int,
    qkv_bias: bool,
) -> None:
    """Add the attention and MLP projections of the Qwen layer named ``layer`` (``model.layers.{i}.``) to
    ``tensors``, drawn from ``g`` in a fixed order: each weight normal with std ``1/sqrt(d)`` (three times that for q
    and k), each q/k/v bias (``qkv_bias``) normal with std 0.1, right after its weight."""
    head_dim = d // heads
    linear = 1.0 / d**0.5
    for name, shape, bias in (
        ("self_attn.q_proj", (heads * head_dim, d), qkv_bias),
        ("self_attn.k_proj", (kv_heads * head_dim, d), qkv_bias),
        ("self_attn.v_proj", (kv_heads * head_dim, d), qkv_bias),
        ("self_attn.o_proj", (d, heads * head_dim), False),
        ("mlp.gate_proj", (hidden, d), False),
        ("mlp.up_proj", (hidden, d), False),
        ("mlp.down_proj", (d, hidden), False),
    ):
        scale = 3.0 if name in ("self_attn.q_proj", "self_attn.k_proj") else 1.0
        tensors[layer + name + ".weight"] = _normal(g, *shape, std=linear * scale)
        if bias:
            tensors[layer + name + ".bias"] = _normal(g, shape[0], std=0.1)


def _qwen2_tensors(
    g: torch.Generator, d: int, heads: int, kv_heads: int, layers: int, hidden: int, head_width: int, tied: bool
) -> dict[str, torch.Tensor]:
    tensors = {"model.embed_tokens.weight": _normal(g, head_width, d, std=1.0)}
    for i in range(layers):
        layer = f"model.layers.{i}."
        _qwen_linears(tensors, g, layer, d, heads, kv_heads, hidden, qkv_bias=True)
        tensors[layer + "input_layernorm.weight"] = 1.0 + _normal(g, d, std=0.1)
        tensors[layer + "post_attention_layernorm.weight"] = 1.0 + _normal(g, d, std=0.1)
    tensors["model.norm.weight"] = 1.0 + _normal(g, d, std=0.1)
    if not tied:
        tensors["lm_head.weight"] = _normal(g, head_width, d, std=1.0)
    return tensors


def build_dream(directory: Path, seed: int = 1) -> None:
    """A Dream checkpoint (Dream's ``config.json`` fields, Qwen2 weight names, ``DreamTokenizer`` files)."""
    directory.mkdir(parents=True, exist_ok=True)
    tokens = build_qwen_tokenizer(directory, dream=True)
    base = len(_byte_alphabet()) + len(QWEN_MERGES)
    ids = {t: base + i for i, t in enumerate(QWEN_SPECIALS + DREAM_ADDED)}
    d, heads, kv_heads, layers, hidden = 64, 4, 2, 2, 128
    _write_json(
        directory / "config.json",
        {
            "architectures": ["DreamModel"],
            "attention_dropout": 0.0,
            "auto_map": {"AutoConfig": "configuration_dream.DreamConfig", "AutoModel": "modeling_dream.DreamModel"},
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|endoftext|>"],
            "hidden_act": "silu",
            "hidden_size": d,
            "initializer_range": 0.02,
            "intermediate_size": hidden,
            "mask_token_id": ids["<|mask|>"],
            "max_position_embeddings": 4096,
            "max_window_layers": layers,
            "model_type": "Dream",
            "num_attention_heads": heads,
            "num_hidden_layers": layers,
            "num_key_value_heads": kv_heads,
            "pad_token_id": ids["<|endoftext|>"],
            "rms_norm_eps": 1e-06,
            "rope_scaling": None,
            "rope_theta": 1000000.0,
            "sliding_window": None,
            "tie_word_embeddings": False,
            "torch_dtype": "float32",
            "transformers_version": "4.46.2",
            "use_cache": True,
            "use_mrope": False,
            "use_sliding_window": False,
            "vocab_size": DREAM_HEAD,
        },
    )
    _write_json(
        directory / "generation_config.json",
        {
            "alg": "origin",
            "alg_temp": None,
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|endoftext|>"],
            "eps": 0.001,
            "mask_token_id": None,
            "output_history": False,
            "pad_token_id": ids["<|endoftext|>"],
            "steps": 512,
            "temperature": 0.0,
            "top_k": None,
            "top_p": None,
        },
    )
    g = torch.Generator().manual_seed(seed)
    tensors = _qwen2_tensors(g, d, heads, kv_heads, layers, hidden, DREAM_HEAD, tied=False)
    tensors["lm_head.weight"][ids["<|endoftext|>"]] *= 1.3
    _silence_rows(tensors["lm_head.weight"], [ids["<|mask|>"], *range(tokens, DREAM_HEAD)])
    _save_shards(tensors, directory, shards=1)


def build_qwen_verifier(directory: Path, seed: int = 2) -> None:
    """A causal Qwen2 (tied embeddings, as Qwen2.5-0.5B) with Dream's vocabulary minus Dream's additions, and
    as many logits as the Dream checkpoint (the official APD code mixes the two heads column by column)."""
    directory.mkdir(parents=True, exist_ok=True)
    tokens = build_qwen_tokenizer(directory, dream=False)  # Dream's mask id lies past them: a zero row too
    base = len(_byte_alphabet()) + len(QWEN_MERGES)
    d, heads, kv_heads, layers, hidden = 32, 2, 1, 2, 64
    _write_json(
        directory / "config.json",
        {
            "architectures": ["Qwen2ForCausalLM"],
            "attention_dropout": 0.0,
            "bos_token_id": base,
            "eos_token_id": base,
            "hidden_act": "silu",
            "hidden_size": d,
            "initializer_range": 0.02,
            "intermediate_size": hidden,
            "max_position_embeddings": 4096,
            "max_window_layers": layers,
            "model_type": "qwen2",
            "num_attention_heads": heads,
            "num_hidden_layers": layers,
            "num_key_value_heads": kv_heads,
            "rms_norm_eps": 1e-06,
            "rope_theta": 1000000.0,
            "sliding_window": None,
            "tie_word_embeddings": True,
            "torch_dtype": "float32",
            "transformers_version": "4.43.1",
            "use_cache": True,
            "use_sliding_window": False,
            "vocab_size": DREAM_HEAD,
        },
    )
    g = torch.Generator().manual_seed(seed)
    tensors = _qwen2_tensors(g, d, heads, kv_heads, layers, hidden, DREAM_HEAD, tied=True)
    _silence_rows(tensors["model.embed_tokens.weight"], list(range(tokens, DREAM_HEAD)))  # the tied head's padding
    _save_shards(tensors, directory, shards=1)


def build_checkpoints(out: Path) -> dict[str, Path]:
    paths = {"llada": out / "llada-tiny", "dream": out / "dream-tiny", "qwen2": out / "qwen2-tiny"}
    build_llada(paths["llada"])
    build_dream(paths["dream"])
    build_qwen_verifier(paths["qwen2"])
    return paths


# --- official code ----------------------------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class OfficialFiles:
    """Official modules imported from paths given on the command line, each file's SHA-256 recorded (packages are
    symlinks in a temp dir, never copies).

    :param roots: argument name -> the directory it names; every recorded file lies under one of them.
    """

    def __init__(self, roots: dict[str, Path]):
        self.files: dict[str, str] = {}  # "<argument>/<path in it>" -> SHA-256
        self.roots = {name: root.resolve() for name, root in roots.items()}

    def record(self, path: Path) -> None:
        path = path.resolve()
        name, root = next((n, r) for n, r in self.roots.items() if path.is_relative_to(r))
        self.files[f"{name}/{path.relative_to(root)}"] = _sha256(path)

    def load(self, name: str, path: Path):
        """Import the file ``path`` as module ``name``."""
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        self.record(path)
        return module

    def package(self, scratch: Path, name: str, source: Path, files: tuple[str, ...]):
        """Import ``source``'s files as package ``name`` (they import each other relatively)."""
        package = scratch / name
        package.mkdir()
        (package / "__init__.py").write_text("", encoding="utf-8")
        for file in files:
            (package / file).symlink_to((source / file).resolve())
            self.record(source / file)
        if str(scratch) not in sys.path:
            sys.path.insert(0, str(scratch))
        return {file[:-3]: importlib.import_module(f"{name}.{file[:-3]}") for file in files}

    def fast_dllm_llada(self, fast_dllm: Path):
        """Fast-dLLM's runnable copy of LLaDA's hub modeling code, imported as ``model.modeling_llada`` from the
        checkout ``fast_dllm`` (one of the roots), its modeling and configuration files recorded."""
        llada_dir = fast_dllm / "llada"
        sys.path.insert(0, str(llada_dir))  # the modeling file imports `configuration_llada` relatively
        modeling = importlib.import_module("model.modeling_llada")
        for name in ("model/modeling_llada.py", "model/configuration_llada.py"):
            self.record(llada_dir / name)
        return modeling

    def provenance(self) -> dict:
        """The fixture fields every recorder writes after its repository: the versions, the official files' SHA-256
        and the prompts (their ids follow, in each recorder's own layout)."""
        import transformers

        return {
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "official_files": self.files,
            "prompts": PROMPTS,
        }

    def write_llada_fixture(
        self, path: Path, repository: str, commit: str, prompt_ids: list[list[int]], cases: list[dict], **settings
    ) -> None:
        """Write ``path``, the fixture of a recorder of one official repository on the tiny LLaDA: ``repository`` and
        ``commit``, the :meth:`provenance` fields, the recorder's ``settings`` (in the order given), the prompts'
        LLaDA ids and the ``cases``."""
        _write_json(
            path,
            {
                "repository": repository,
                "commit": commit,
                **self.provenance(),
                **settings,
                "prompt_ids": {"llada": prompt_ids},
                "cases": cases,
            },
        )


def tiny_llada(modeling, out: Path):
    """The committed ``out/llada-tiny`` loaded with the official ``modeling`` module's ``LLaDAModelLM`` (float32, eval
    mode): its ``config.json`` as a dict, its tokenizer, the model and ``PROMPTS``' chat-template ids."""
    import transformers

    checkpoint = out / "llada-tiny"
    config = json.loads((checkpoint / "config.json").read_text(encoding="utf-8"))
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(checkpoint))
    model = modeling.LLaDAModelLM.from_pretrained(str(checkpoint), torch_dtype=torch.float32).eval()
    return config, tokenizer, model, [_chat_ids(tokenizer, prompt) for prompt in PROMPTS]


def recorder_parser(doc: str, *checkouts: str) -> argparse.ArgumentParser:
    """A recorder's command line: a required ``--<name>`` path per official checkout and ``--out`` (default: this
    folder, where the committed checkpoints and fixtures are)."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    for name in checkouts:
        parser.add_argument(f"--{name}", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent)
    return parser


def run_recorder(
    parser: argparse.ArgumentParser, record, why: str = "Fast-dLLM's modeling file compiles its attention"
) -> None:
    """Parse the command line and ``record(args)``; refuse to start without ``TORCHDYNAMO_DISABLE=1``, which the
    official code needs because it uses ``torch.compile`` (``why`` says where, in the message)."""
    args = parser.parse_args()
    if not os.environ.get("TORCHDYNAMO_DISABLE"):
        parser.error(f"set TORCHDYNAMO_DISABLE=1 ({why})")
    record(args)


class Official(OfficialFiles):
    """The official LLaDA, Fast-dLLM, WINO, Dream and APD modules."""

    def __init__(self, args: argparse.Namespace, scratch: Path):
        super().__init__(
            {name: getattr(args, name.replace("-", "_")) for name in ("llada", "fast-dllm", "wino", "dream", "apd")}
        )
        llada_dir = args.fast_dllm / "llada"
        sys.path.insert(0, str(llada_dir))  # Fast-dLLM's generate.py imports `model.modeling_llada`
        self.fast_model = importlib.import_module("model.modeling_llada")
        self.fast_generate = self.load("fast_dllm_generate", llada_dir / "generate.py")
        self.llada_generate = self.load("llada_generate", args.llada / "generate.py")
        sys.path.insert(0, str(args.wino / "LLaDA"))  # WINO's modeling file imports `configuration_llada`
        self.wino_model = self.load("modeling_llada", args.wino / "LLaDA" / "modeling_llada.py")
        self.wino_decoding = self.load("wino_decoding", args.wino / "LLaDA" / "decoding.py")
        for name in ("model/modeling_llada.py", "model/configuration_llada.py"):
            self.record(llada_dir / name)
        self.record(args.wino / "LLaDA" / "configuration_llada.py")
        self.dream = self.package(
            scratch,
            "dream_hub",
            args.dream,
            ("configuration_dream.py", "modeling_dream.py", "generation_utils.py", "tokenization_dream.py"),
        )
        self.apd = self.package(
            scratch,
            "dream_apd",
            args.apd / "dream",
            ("configuration_dream.py", "modeling_dream.py", "generation_utils.py"),
        )


def _chat_ids(tokenizer, prompt: str) -> list[int]:
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
    )
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _padded(rows: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded ``[B, N]`` ids and the ``[B, N]`` bool mask of real tokens."""
    width = max(len(r) for r in rows)
    ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows])
    real = torch.tensor([[False] * (width - len(r)) + [True] * len(r) for r in rows])
    return ids, real


def pairwise_mask(real: torch.Tensor) -> torch.Tensor:
    """``[B, 1, N, N]`` bool: real queries see real keys; a padding query sees itself (no empty softmax row)."""
    eye = torch.eye(real.shape[1], dtype=torch.bool)
    return (real[:, None, :, None] & real[:, None, None, :]) | (eye & ~real[:, None, :, None])


def record(args: argparse.Namespace) -> None:
    import transformers
    from safetensors.torch import save_file

    torch.manual_seed(0)
    out = args.out
    paths = build_checkpoints(out)
    with tempfile.TemporaryDirectory() as scratch:
        official = Official(args, Path(scratch))
        llada_config = json.loads((paths["llada"] / "config.json").read_text())
        dream_config = json.loads((paths["dream"] / "config.json").read_text())
        llada_tok = transformers.AutoTokenizer.from_pretrained(str(paths["llada"]))
        dream_tok = official.dream["tokenization_dream"].DreamTokenizer.from_pretrained(str(paths["dream"]))
        llada_mask, dream_mask = llada_config["mask_token_id"], dream_config["mask_token_id"]
        fast = official.fast_model.LLaDAModelLM.from_pretrained(str(paths["llada"]), torch_dtype=torch.float32).eval()
        wino = official.wino_model.LLaDAModelLM.from_pretrained(str(paths["llada"]), torch_dtype=torch.float32).eval()
        dream = (
            official.dream["modeling_dream"]
            .DreamModel.from_pretrained(str(paths["dream"]), torch_dtype=torch.float32)
            .eval()
        )
        apd = (
            official.apd["modeling_dream"]
            .DreamModel.from_pretrained(str(paths["dream"]), torch_dtype=torch.float32)
            .eval()
        )
        verifier = transformers.Qwen2ForCausalLM.from_pretrained(str(paths["qwen2"]), torch_dtype=torch.float32).eval()

        prompts = {
            "llada": [_chat_ids(llada_tok, p) for p in PROMPTS],
            "dream": [_chat_ids(dream_tok, p) for p in PROMPTS],
        }
        logits = {}
        with torch.no_grad():
            canvas = torch.tensor([prompts["llada"][1] + [llada_mask] * GEN_LENGTH])
            logits["llada.full"] = fast(canvas).logits
            ids, real = _padded(
                [_chat_ids(llada_tok, p) + [llada_mask] * 8 for p in PADDED_PROMPTS], llada_config["pad_token_id"]
            )
            logits["llada.padded"] = wino(
                ids, attention_mask=pairwise_mask(real), position_ids=torch.arange(ids.shape[1])
            ).logits
            logits["llada.padded.input_ids"], logits["llada.padded.real"] = ids, real
            canvas = torch.tensor([prompts["dream"][1] + [dream_mask] * GEN_LENGTH])
            logits["dream.full"] = dream(canvas, "full").logits  # Dream's own _sample passes "full" without padding
            ids, real = _padded(
                [_chat_ids(dream_tok, p) + [dream_mask] * 8 for p in PADDED_PROMPTS], dream_config["pad_token_id"]
            )
            positions = (real.long().cumsum(-1) - 1).masked_fill(~real, 1)  # Dream's own tok_idx
            logits["dream.padded"] = dream(ids, pairwise_mask(real), positions).logits
            logits["dream.padded.input_ids"], logits["dream.padded.real"] = ids, real
            logits["qwen2.full"] = verifier(torch.tensor([prompts["dream"][1]])).logits
        save_file({k: v.contiguous() for k, v in logits.items()}, str(out / "logits.safetensors"))

        cases = []

        def run(model: str, decoder: str, arguments: dict, call) -> None:
            for index, prompt in enumerate(prompts[model]):
                with torch.no_grad():
                    tokens = call(torch.tensor([prompt]), **arguments)
                cases.append(
                    {
                        "model": model,
                        "decoder": decoder,
                        "arguments": arguments,
                        "prompt": index,
                        "generated": tokens[0, len(prompt) :].tolist(),
                    }
                )

        llada_args = {"mask_id": llada_mask, "gen_length": GEN_LENGTH, "temperature": 0.0}
        for steps, block in ((32, 8), (16, 32)):
            run(
                "llada",
                "llada.generate",
                {**llada_args, "steps": steps, "block_length": block},
                lambda p, **a: official.llada_generate.generate(fast, p, **a),
            )
        run(
            "llada",
            "fast_dllm.generate",
            {**llada_args, "steps": 32, "block_length": 8, "threshold": 0.9},
            lambda p, **a: official.fast_generate.generate(fast, p, **a)[0],
        )
        for name in ("generate_with_prefix_cache", "generate_with_dual_cache"):
            function = getattr(official.fast_generate, name)
            for extra in ({"steps": 32, "threshold": 0.9}, {"steps": 16, "threshold": None}):
                run(
                    "llada",
                    f"fast_dllm.{name}",
                    {**llada_args, "block_length": 8, **extra},
                    lambda p, _f=function, **a: _f(fast, p, **a)[0],
                )
        for block, tau1, tau2 in ((16, 0.6, 0.9), (32, 0.5, 0.95)):
            run(
                "llada",
                "wino.decoding_wino",
                {**llada_args, "block_length": block, "threshold": tau1, "threshold_back": tau2},
                lambda p, **a: official.wino_decoding.decoding_wino(wino, p, **a)[0],
            )

        dream_args = {
            "max_new_tokens": GEN_LENGTH,
            "temperature": 0.0,
            "mask_token_id": dream_mask,
            "eos_token_id": dream_config["eos_token_id"],
            "pad_token_id": dream_config["pad_token_id"],
        }
        for alg, steps in (("entropy", 32), ("topk_margin", 16), ("maskgit_plus", 32)):
            run(
                "dream",
                "dream.diffusion_generate",
                {**dream_args, "alg": alg, "steps": steps},
                lambda p, **a: dream.diffusion_generate(p, **a),
            )
        for window, lookahead, weight in ((4, 8, 0.7), (None, None, 0.5)):
            run(
                "dream",
                "apd.diffusion_generate",
                {
                    **dream_args,
                    "alg": "apd",
                    "kv_window": window,
                    "max_lookahead": lookahead,
                    "apd_mixture_weight": weight,
                },
                lambda p, **a: apd.diffusion_generate(p, verifier_model=verifier, **a),
            )
        for k in (1, 2):
            run(
                "dream",
                "apd.diffusion_generate",
                {**dream_args, "alg": "leftright", "tokens_per_step": k},
                lambda p, **a: apd.diffusion_generate(p, **a),
            )

    _write_json(
        out / "official.json",
        {
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "official_files": official.files,
            "prompts": PROMPTS,
            "padded_prompts": PADDED_PROMPTS,
            "prompt_ids": prompts,
            "cases": cases,
        },
    )


def main() -> None:
    run_recorder(recorder_parser(__doc__, "llada", "fast-dllm", "wino", "dream", "apd"), record)


if __name__ == "__main__":
    main()
