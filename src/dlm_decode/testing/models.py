"""Tiny randomly initialised HF checkpoints, built in seconds on a CPU.

* :func:`build_tiny_checkpoint`: a Llama (bidirectional unless ``causal``) with the project's char tokenizer; every
  builder takes the model's size and seed as keyword arguments (:class:`TinySize`), and :func:`random_model` is
  the seeded random model they save, for a test that needs one in memory.
* Stand-ins for remote-code derivatives of the real families, with their special-token *layout* scaled down and a
  *code layout* of their own: the checkpoint ships ``configuration_*.py``/``modeling_*.py`` and an ``auto_map`` in
  ``config.json`` and loads with ``implementation: remote`` and ``trust_remote_code`` (offline; the code is the
  files written here, which subclass transformers' Llama/Qwen2). The real LLaDA and Dream layouts, which load
  natively, are the reference checkpoints in the repository's ``tests/reference``.

  - :func:`build_dream_like`: a bidirectional Qwen2 (``model_type: Dream``, ``AutoModel`` only in its
    ``auto_map``) whose head is wider than its tokenizer (Dream: 152,064 logits for 151,667 tokens), with the
    Qwen chat template and Dream's special tokens ``<|endoftext|>`` (pad and EOS), ``<|im_end|>``, ``<|mask|>``.
  - :func:`build_llada_like`: a bidirectional Llama (``model_type: llada``) whose tokenizer has LLaDA's
    ``<|endoftext|>``, ``<|mdm_mask|>`` and ``<|eot_id|>`` but no ``mask_token`` attribute (as LLaDA's), so
    the mask id can only come from the family table. ``legacy=True`` gives it the official LLaDA calling
    convention (``forward`` without ``position_ids``).
  - :func:`build_qwen_like_verifier`: a causal Qwen2 sharing the Dream-like tokenizer minus Dream's added tokens,
    with a head narrower than the Dream-like one (Qwen2.5-0.5B: 151,936 vs Dream's 152,064).

  ``position_spike`` makes the answer known by construction, with no training: the model's raw logit at a
  column with position ``p`` gets ``+position_spike`` on ``SPIKE_TOKENS[(p + shift) % len]``, where ``shift`` is
  1 for the Dream-like model (raw logit ``i`` predicts column ``i + 1``) and 0 for the LLaDA-like one. A correct
  adapter therefore decodes, greedily, the token ``SPIKE_TOKENS[p % len]`` at every generated position ``p``
  (:func:`spike_text`), whatever the cache or window; an off-by-one in the realignment shows as a wrong letter.
"""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import TYPE_CHECKING, TypedDict

import torch

from dlm_decode.models.tokenizer import build_char_tokenizer

if TYPE_CHECKING:
    from typing_extensions import Unpack

#: Characters the position spike cycles through (position ``p`` gets ``SPIKE_LETTERS[p % 26]``).
SPIKE_LETTERS = string.ascii_lowercase


class TinySize(TypedDict, total=False):
    """The keyword arguments every builder takes (each left out is :data:`DEFAULT_SIZE`'s): the random weights'
    ``seed``, ``layers`` layers of width ``hidden`` (MLP ``2 * hidden``), ``heads`` attention heads and as many
    key/value heads, ``max_positions`` positions."""

    seed: int
    hidden: int
    layers: int
    heads: int
    max_positions: int


DEFAULT_SIZE: TinySize = {"seed": 0, "hidden": 32, "layers": 2, "heads": 2, "max_positions": 256}


def random_model(
    classes: tuple[type, type], size: TinySize, *, vocab_size: int, is_causal: bool | None = None, **config_fields
):
    """A seeded random model (``classes``: a transformers config class and its model class) of ``size`` (what it
    leaves out is :data:`DEFAULT_SIZE`'s) with ``vocab_size`` logits. ``config_fields`` (tying, token ids,
    ``num_key_value_heads`` for grouped-query attention, ...) go to the config; ``is_causal``, when given, is set on
    it after construction."""
    config_class, model_class = classes
    size = {**DEFAULT_SIZE, **size}
    config = config_class(
        vocab_size=vocab_size,
        hidden_size=size["hidden"],
        intermediate_size=2 * size["hidden"],
        num_hidden_layers=size["layers"],
        num_attention_heads=size["heads"],
        max_position_embeddings=size["max_positions"],
        **{"num_key_value_heads": size["heads"], **config_fields},
    )
    if is_causal is not None:
        config.is_causal = is_causal
    torch.manual_seed(size["seed"])
    return model_class(config)


def _save_random(directory: str | Path, tokenizer, classes: tuple[type, type], size: TinySize, **fields) -> Path:
    """Save :func:`random_model` (``fields``: its keyword arguments) with the tokenizer's BOS, EOS and pad ids, and
    ``tokenizer``, into ``directory``."""
    token_ids = {f"{name}_token_id": getattr(tokenizer, f"{name}_token_id") for name in ("bos", "eos", "pad")}
    model = random_model(classes, size, **token_ids, **fields)
    directory = Path(directory)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def build_tiny_checkpoint(directory: str | Path, *, causal: bool = False, **size: Unpack[TinySize]) -> Path:
    """Save a random Llama (bidirectional unless ``causal``) and the char tokenizer into ``directory``.

    The result loads with plain ``AutoModelForCausalLM.from_pretrained(directory)``.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_char_tokenizer()
    classes = (LlamaConfig, LlamaForCausalLM)
    return _save_random(
        directory, tokenizer, classes, size, vocab_size=len(tokenizer), tie_word_embeddings=True, is_causal=causal
    )


# ---------------------------------------------------------------------------------------------------------------
# Tokenizers with a family's special-token layout

_CHARACTERS = tuple(sorted(set(string.printable) - set("\t\r\x0b\x0c")))  # 96 ids, 0..95

#: Dream/Qwen layout: the characters, then Qwen's specials, then Dream's own additions (absent from Qwen).
DREAM_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
DREAM_ADDED = ("<|beginoftext|>", "<|mask|>")
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
#: LLaDA layout: the characters, then LLaDA's specials (its tokenizer sets no mask_token).
LLADA_SPECIALS = ("<|startoftext|>", "<|endoftext|>", "<|mdm_mask|>", "<|eot_id|>")
LLADA_CHAT_TEMPLATE = "<|startoftext|>{% for message in messages %}{{ message['content'] }}{% endfor %}{{ '\\n' }}"


def _layout_tokenizer(specials: tuple[str, ...], template: str, **special_attributes: str):
    """The char vocabulary (ids 0..95) followed by ``specials``; ``special_attributes`` names e.g. ``eos_token``."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: index for index, token in enumerate(_CHARACTERS + specials)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=None))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    core.add_special_tokens([AddedToken(token, special=True, normalized=False) for token in specials])
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, padding_side="left", clean_up_tokenization_spaces=False, **special_attributes
    )
    tokenizer.chat_template = template
    return tokenizer


def dream_like_tokenizer(with_dream_additions: bool = True):
    """Qwen-style tokenizer (101 ids with Dream's additions, 99 without): pad = EOS = ``<|endoftext|>``."""
    specials = DREAM_SPECIALS + (DREAM_ADDED if with_dream_additions else ())
    extra = {"mask_token": "<|mask|>", "bos_token": "<|beginoftext|>"} if with_dream_additions else {}
    return _layout_tokenizer(
        specials, QWEN_CHAT_TEMPLATE, eos_token="<|endoftext|>", pad_token="<|endoftext|>", **extra
    )


def llada_like_tokenizer():
    """LLaDA-style tokenizer (100 ids): ``<|endoftext|>`` is EOS; no mask, no pad attribute."""
    return _layout_tokenizer(
        LLADA_SPECIALS, LLADA_CHAT_TEMPLATE, bos_token="<|startoftext|>", eos_token="<|endoftext|>"
    )


# ---------------------------------------------------------------------------------------------------------------
# Remote code written into the stand-in checkpoints (loaded by transformers with trust_remote_code=True)

_SPIKE_CODE = '''
import torch


def add_position_spike(config, logits, input_ids, position_ids, past_length):
    """raw logit at position p += spike on spike_tokens[(p + spike_shift) % len(spike_tokens)]."""
    if not getattr(config, "position_spike", 0.0):
        return logits
    if position_ids is None:
        position_ids = torch.arange(past_length, past_length + input_ids.shape[1], device=input_ids.device)[None]
    tokens = torch.tensor(config.spike_tokens, device=logits.device)
    target = tokens[(position_ids + config.spike_shift) % len(config.spike_tokens)]
    spike = torch.nn.functional.one_hot(target, logits.shape[-1]).to(logits.dtype) * config.position_spike
    return logits + spike
'''

_DREAM_CONFIGURATION = '''
from transformers import Qwen2Config


class DreamConfig(Qwen2Config):
    """Stand-in for Dream's DreamConfig: a Qwen2 config with its own model_type."""

    model_type = "Dream"
'''

_DREAM_MODELING = (
    _SPIKE_CODE
    + '''
from transformers import Qwen2ForCausalLM

from .configuration_dream import DreamConfig


class DreamModel(Qwen2ForCausalLM):
    """Stand-in for Dream's DreamModel: a bidirectional Qwen2 whose raw logit at column i predicts column i + 1."""

    config_class = DreamConfig

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None, use_cache=None, **kwargs):
        past = cache.get_seq_length() if cache is not None else 0
        out = super().forward(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                              cache=cache, use_cache=use_cache, **kwargs)
        out.logits = add_position_spike(self.config, out.logits, input_ids, position_ids, past)
        return out
'''
)

_LLADA_CONFIGURATION = '''
from transformers import LlamaConfig


class LLaDAConfig(LlamaConfig):
    """Stand-in for LLaDA's LLaDAConfig: a Llama config with its own model_type."""

    model_type = "llada"
'''

_LLADA_MODELING = (
    _SPIKE_CODE
    + '''
from transformers import LlamaForCausalLM

from .configuration_llada import LLaDAConfig


class LLaDAModelLM(LlamaForCausalLM):
    """Stand-in for a modeling_llada.py that accepts position_ids and a 4-D mask (WINO's, Fast-dLLM's)."""

    config_class = LLaDAConfig

    def forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None, use_cache=None, **kwargs):
        past = cache.get_seq_length() if cache is not None else 0
        out = super().forward(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                              cache=cache, use_cache=use_cache, **kwargs)
        out.logits = add_position_spike(self.config, out.logits, input_ids, position_ids, past)
        return out


class LLaDALegacyModelLM(LlamaForCausalLM):
    """Stand-in for the official modeling_llada.py's calling convention: no position_ids, no HF cache."""

    config_class = LLaDAConfig

    def forward(self, input_ids=None, attention_bias=None, past_key_values=None, use_cache=None):
        if past_key_values is not None or use_cache:
            raise ValueError("this LLaDA code has no key/value cache")
        out = super().forward(input_ids=input_ids, attention_mask=attention_bias)
        out.logits = add_position_spike(self.config, out.logits, input_ids, None, 0)
        return out
'''
)


def _spike_fields(position_spike: float, shift: int, tokenizer) -> dict:
    return {
        "position_spike": float(position_spike),
        "spike_shift": shift,
        "spike_tokens": [tokenizer.convert_tokens_to_ids(c) for c in SPIKE_LETTERS],
    }


def spike_text(positions: range | list[int]) -> str:
    """What a correctly aligned greedy decode of a spiked stand-in writes at these positions."""
    return "".join(SPIKE_LETTERS[p % len(SPIKE_LETTERS)] for p in positions)


def _add_remote_code(directory: Path, config_updates: dict, files: dict[str, str]) -> Path:
    """Merge ``config_updates`` into the saved ``config.json`` and write ``files`` (name -> text) beside it."""
    path = directory / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config.update(config_updates)
    path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    for name, text in files.items():
        (directory / name).write_text(text, encoding="utf-8")
    return directory


def build_dream_like(
    directory: str | Path, *, head_width: int = 112, position_spike: float = 0.0, **size: Unpack[TinySize]
) -> Path:
    """Save a Dream stand-in (remote code; load with ``trust_remote_code=True``) into ``directory``.

    Tokenizer: 101 ids (``<|endoftext|>`` 96 = pad = EOS, ``<|im_end|>`` 98, ``<|mask|>`` 100); head:
    ``head_width`` logits (> 101, like Dream's padded head).
    """
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = dream_like_tokenizer()
    if head_width < len(tokenizer):
        raise ValueError(f"head_width {head_width} is below the tokenizer's {len(tokenizer)} ids")
    saved = _save_random(
        directory,
        tokenizer,
        (Qwen2Config, Qwen2ForCausalLM),
        size,
        vocab_size=head_width,
        tie_word_embeddings=False,
        is_causal=False,
    )
    updates = {
        "model_type": "Dream",
        "architectures": ["DreamModel"],
        "auto_map": {"AutoConfig": "configuration_dream.DreamConfig", "AutoModel": "modeling_dream.DreamModel"},
        "mask_token_id": tokenizer.mask_token_id,
        **_spike_fields(position_spike, 1, tokenizer),
    }
    files = {"configuration_dream.py": _DREAM_CONFIGURATION, "modeling_dream.py": _DREAM_MODELING}
    return _add_remote_code(saved, updates, files)


def build_llada_like(
    directory: str | Path,
    *,
    head_width: int = 104,
    position_spike: float = 0.0,
    legacy: bool = False,
    **size: Unpack[TinySize],
) -> Path:
    """Save a LLaDA stand-in (remote code) into ``directory``.

    Tokenizer: 100 ids (``<|endoftext|>`` 97 = EOS, ``<|mdm_mask|>`` 98, ``<|eot_id|>`` 99; no mask/pad
    attributes). ``legacy``: the official LLaDA ``forward`` convention (no ``position_ids``, no cache).
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = llada_like_tokenizer()
    saved = _save_random(
        directory,
        tokenizer,
        (LlamaConfig, LlamaForCausalLM),
        size,
        vocab_size=head_width,
        tie_word_embeddings=False,
        is_causal=False,
    )
    model_class = "modeling_llada.LLaDALegacyModelLM" if legacy else "modeling_llada.LLaDAModelLM"
    updates = {
        "model_type": "llada",
        "architectures": [model_class.split(".")[1]],
        "max_sequence_length": size.get("max_positions", DEFAULT_SIZE["max_positions"]),
        "auto_map": {
            "AutoConfig": "configuration_llada.LLaDAConfig",
            "AutoModel": model_class,
            "AutoModelForCausalLM": model_class,
        },
        **_spike_fields(position_spike, 0, tokenizer),
    }
    files = {"configuration_llada.py": _LLADA_CONFIGURATION, "modeling_llada.py": _LLADA_MODELING}
    return _add_remote_code(saved, updates, files)


def build_qwen_like_verifier(directory: str | Path, *, head_width: int = 104, **size: Unpack[TinySize]) -> Path:
    """Save a causal Qwen2 (native transformers code) with the Dream-like tokenizer minus Dream's additions
    (99 ids, the same ids for every shared token) and ``head_width`` logits (narrower than the Dream-like 112);
    one layer and seed 1 unless ``size`` says otherwise."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = dream_like_tokenizer(with_dream_additions=False)
    size = {"seed": 1, "layers": 1, **size}
    return _save_random(
        directory, tokenizer, (Qwen2Config, Qwen2ForCausalLM), size, vocab_size=head_width, tie_word_embeddings=True
    )
