"""The dLLM adapter over a Hugging Face model, and model loading.

Families differ only here: a bidirectional HF decoder (Llama/Qwen2 with ``config.is_causal = False``, no remote
code) returns logits aligned to its inputs. Adapters for shifted-logit models (Dream) realign them so that,
for every adapter, ``logits[:, i]`` predicts input column ``i``.
"""

from __future__ import annotations

import functools
import inspect
from pathlib import Path
from typing import Any

import torch

from dlm_decode.config.schema import ModelSpec
from dlm_decode.errors import ModelError
from dlm_decode.state import ModelInputs

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError(f"`device` is {device!r} but CUDA is not available; fix: set device: cpu (or auto)")
    return torch.device(device)


def resolve_path(path: str, key: str) -> str:
    """``embedded:<name>`` -> the shipped checkpoint's directory; other values pass through."""
    if path.startswith("embedded:"):
        from dlm_decode.models.embedded import embedded_model_dir

        return str(embedded_model_dir(path.split(":", 1)[1]))
    if not Path(path).exists() and "/" not in path:
        raise ModelError(f"`{key}.path` is {path!r}, which is neither a directory nor `embedded:<name>`; "
                         "fix: give a local checkpoint directory, or see `dlm-decode models`")
    return path


def load_hf(spec: ModelSpec, key: str):
    """Load ``(model, tokenizer)`` for ``spec`` with plain transformers APIs (offline unless the user allows)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_path(spec.path, key)
    device = resolve_device(spec.device)
    try:
        options = {"trust_remote_code": spec.trust_remote_code, "local_files_only": not spec.allow_download}
        tokenizer = AutoTokenizer.from_pretrained(path, **options)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=_DTYPES[spec.dtype], **options)
    except Exception as exc:
        raise ModelError(f"`{key}.path` = {spec.path!r} could not be loaded: {type(exc).__name__}: {exc}\n"
                         "  fix: check the path; models with their own code need "
                         f"{key}.trust_remote_code=true; hub ids need {key}.allow_download=true") from exc
    return model.to(device).eval(), tokenizer


class DiffusionLM:
    """A masked diffusion LM behind one interface.

    :ivar model: the HF module. :ivar tokenizer: its tokenizer.
    :ivar mask_token_id, pad_token_id, fill_token_id: special ids; ``fill_token_id`` is written after EOS.
    :ivar eos_token_ids: ids that end a generation.
    :ivar vocab_size: width of the logits (may exceed the tokenizer's vocabulary).
    :ivar max_context: the longest canvas the model accepts.
    :ivar chat_template: wrap prompts with the tokenizer's chat template.
    """

    def __init__(self, model, tokenizer, *, mask_token_id: int | None = None,
                 eos_token_ids: list[int] | None = None, chat_template: bool = True):
        self.model = model
        self.tokenizer = tokenizer
        self.mask_token_id = mask_token_id if mask_token_id is not None else tokenizer.mask_token_id
        if self.mask_token_id is None:
            raise ModelError("the dLLM's tokenizer has no mask token; fix: set model.dllm.mask_token_id")
        eos = eos_token_ids if eos_token_ids is not None else [tokenizer.eos_token_id]
        if not eos or None in eos:
            raise ModelError("the dLLM's tokenizer has no EOS token; fix: set model.dllm.eos_token_ids")
        self.eos_token_ids = list(eos)
        self.fill_token_id = self.eos_token_ids[0]
        self.pad_token_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.fill_token_id
        if self.pad_token_id == self.mask_token_id:
            raise ModelError("the pad id equals the mask id; fix: give the tokenizer a distinct pad token")
        self.vocab_size = model.get_output_embeddings().weight.shape[0]
        self.max_context = int(getattr(model.config, "max_position_embeddings", 1 << 30))
        self.chat_template = chat_template and getattr(tokenizer, "chat_template", None) is not None

    @classmethod
    def from_spec(cls, spec: ModelSpec, key: str = "model.dllm") -> DiffusionLM:
        model, tokenizer = load_hf(spec, key)
        return cls(model, tokenizer, mask_token_id=spec.mask_token_id, eos_token_ids=spec.eos_token_ids,
                   chat_template=spec.chat_template)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def encode(self, prompts: list[str]) -> list[list[int]]:
        """Token ids of each prompt, with the chat template applied when enabled."""
        if self.chat_template:
            return [
                list(self.tokenizer.apply_chat_template(
                    [{"role": "user", "content": p}], tokenize=True, add_generation_prompt=True, return_dict=True,
                )["input_ids"])
                for p in prompts
            ]
        return [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    @torch.inference_mode()
    def forward(self, inputs: ModelInputs, cache: Any = None) -> torch.Tensor:
        """``[B, S, V]`` float logits; ``logits[:, i]`` predicts input column ``i``.

        :param cache: a HF cache holding the keys/values of the ``K - S`` columns before the queries (the
            attention mask is then ``[B, 1, S, K]``); the forward appends the queries' keys/values to it.
        """
        return run_hf(self.model, inputs.input_ids, inputs.position_ids, inputs.attention_mask, cache)


@functools.lru_cache(maxsize=None)
def _cache_argument(model_cls: type) -> str:
    """The forward keyword of the HF cache: ``cache`` (transformers >= 5.24) or ``past_key_values``."""
    parameters = inspect.signature(model_cls.forward).parameters
    return "cache" if "cache" in parameters else "past_key_values"


def run_hf(model, input_ids: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor,
           cache: Any = None) -> torch.Tensor:
    """One HF forward with explicit positions and a 4-D boolean mask; returns ``[B, S, V]`` logits."""
    kwargs = {_cache_argument(type(model)): cache} if cache is not None else {}
    out = model(input_ids=input_ids, position_ids=position_ids, attention_mask=attention_mask,
                use_cache=cache is not None, **kwargs)
    return out.logits


def new_cache():
    """An empty HF key/value cache."""
    from transformers import DynamicCache

    return DynamicCache()


def crop_cache(cache, length: int) -> None:
    """Keep the keys/values of the first ``length`` columns of ``cache``."""
    extra = cache.get_seq_length() - length
    if extra > 0:
        cache.crop(-extra)


class CausalLM:
    """An autoregressive model sharing the dLLM's tokenizer (APD's verifier).

    :ivar vocab_size: width of its logits (may be narrower than the dLLM head).
    """

    def __init__(self, model, tokenizer):
        self.model = model
        self.tokenizer = tokenizer
        self.vocab_size = model.get_output_embeddings().weight.shape[0]

    @classmethod
    def from_spec(cls, spec: ModelSpec, key: str = "model.ar") -> CausalLM:
        model, tokenizer = load_hf(spec, key)
        if getattr(model.config, "is_causal", True) is False:
            raise ModelError(f"`{key}.path` = {spec.path!r} is a bidirectional model (config.is_causal=False); "
                             "fix: give a causal LM as the AR model")
        return cls(model, tokenizer)

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor,
                cache: Any) -> torch.Tensor:
        """``[B, S, V_ar]`` logits; ``logits[:, i]`` predicts the column after input column ``i``."""
        return run_hf(self.model, input_ids, position_ids, attention_mask, cache)


def check_shared_tokenizer(dllm_tokenizer, ar_tokenizer, dllm_vocab: int, ar_vocab: int) -> None:
    """Raise :class:`ModelError` unless every AR token has the same id in the dLLM's tokenizer.

    A dLLM head wider than the AR vocabulary is allowed (its extra ids are masked out of mixtures).
    """
    dllm_ids = dllm_tokenizer.get_vocab()
    mismatched = [(token, index, dllm_ids.get(token)) for token, index in ar_tokenizer.get_vocab().items()
                  if dllm_ids.get(token) != index]
    if mismatched:
        shown = ", ".join(f"{t!r}: AR {a} vs dLLM {d}" for t, a, d in sorted(mismatched, key=lambda m: m[1])[:3])
        raise ModelError(
            f"the AR model's tokenizer differs from the dLLM's ({len(mismatched)} tokens disagree, e.g. {shown}); "
            "APD compares token ids and adds logits per id. fix: pick an AR model trained with the dLLM's "
            "tokenizer (e.g. Qwen2.5 for Dream)")
    if ar_vocab > dllm_vocab:
        raise ModelError(f"the AR head has {ar_vocab} logits but the dLLM head only {dllm_vocab}; "
                         "fix: pick an AR model whose vocabulary the dLLM covers")
