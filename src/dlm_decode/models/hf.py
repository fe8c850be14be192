"""The dLLM adapter over a Hugging Face model, and model loading.

Families differ only here (see :mod:`dlm_decode.models.families`): a bidirectional HF decoder (Llama/Qwen2 with
``config.is_causal = False``, no remote code) and LLaDA return logits aligned to their inputs; Dream returns
logits shifted by one (raw logit ``i`` predicts column ``i + 1``), which :class:`DiffusionLM` realigns so that,
for every family, ``logits[:, i]`` predicts input column ``i``.

**Shifted logits and caches (Dream).** Without a cache the forward covers columns ``[0, end)`` and the realigned
logits are ``cat([raw[:, :1], raw[:, :-1]])`` (column 0 is a prompt column and never decided). With a cache the
forward covers only ``[start, end)``, and the prediction for column ``start`` lives at column ``start - 1``,
outside the span. The adapter then runs the span one column earlier, ``[start - 1, end)``, and drops the extra
logit: the extra query reads the token and position of column ``start - 1`` from a record the adapter keeps on
the cache object (every cached forward writes its span's tokens and positions there; the first one covers
``[0, end)``), and attends like a query of the span (or to itself only, when it is left padding). Its key/value
is *not* written: the keys/values the cache strategy froze before ``start`` stay frozen, so ``kv_window(W)``,
``prefix`` and ``dual`` mean what they say for Dream too, and with a one-layer model (whose keys/values do not
depend on context) every cache decodes exactly like ``none``. For the positional store (all the built-in
caches) the write mask simply excludes the extra column; for an appending ``DynamicCache`` (which a cache plugin
may pass: see :class:`~dlm_decode.state.ForwardPlan`) the extra column's fresh key/value is appended as a
duplicate that no query attends to and is removed after the forward. This costs one extra query column per
forward. Fast-dLLM's Dream code instead force-decodes the block's first column at each refresh; WINO's shadow
block (extra query positions) has no shifted-logit equivalent and is refused.

**Loading.** ``implementation: native`` (the default) builds LLaDA and Dream checkpoints with transformers' own
Llama and Qwen2 classes (:mod:`dlm_decode.models.native`), so positions, 4-D masks and every cache work and none of
the checkpoint's code runs. ``implementation: remote`` runs the checkpoint's own modeling code instead, for
derivatives with no native mapping. The official ``modeling_llada.py`` takes neither ``position_ids`` nor an HF
cache, and versions before October 2025 ignore the attention mask (LLaDA issue #90): when the model's ``forward``
has no ``position_ids`` parameter, the adapter calls it with ``input_ids`` alone and refuses what would silently
change the result (a cache, left padding in a batch, a mask that hides columns). Remote code that fails in a
forward (a file with its own tuple cache, WINO's 1-D ``position_ids``) is reported with its exception and a fix.
"""

from __future__ import annotations

import functools
import hashlib
import inspect
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from dlm_decode.config.schema import ModelSpec
from dlm_decode.errors import ModelError
from dlm_decode.models.families import (CAUSAL_FIX, Family, attention_pattern, causal_problem, model_context,
                                        resolve_family, resolve_special_ids)
from dlm_decode.models.native import ARCHITECTURES, Architecture, architecture_for, load_native
from dlm_decode.models.prompts import encode_prompts, template_affixes
from dlm_decode.state import ModelInputs

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str, key: str = "device") -> torch.device:
    """``auto``: CUDA when available. Under a launcher (``LOCAL_RANK`` set, ``WORLD_SIZE`` > 1), ``auto`` and
    ``cuda`` mean ``cuda:LOCAL_RANK``, one GPU per process.

    :param key: the dotted key of ``device`` (e.g. ``model.dllm.device``), named in errors.
    :raises ModelError: for CUDA or MPS when this machine or torch build lacks it, or a string torch rejects.
    """
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1 and "LOCAL_RANK" in os.environ
    if device in ("auto", "cuda") and launched and torch.cuda.is_available():
        return torch.device(f"cuda:{int(os.environ['LOCAL_RANK']) % torch.cuda.device_count()}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    for kind, available in (("cuda", torch.cuda.is_available), ("mps", torch.backends.mps.is_available)):
        if device.split(":")[0] == kind and not available():
            raise ModelError(f"`{key}` is {device!r} but {kind.upper()} is not available with this torch build "
                             f"on this machine; fix: set {key}=cpu (or auto)")
    try:
        return torch.device(device)
    except RuntimeError as exc:
        raise ModelError(f"`{key}` is {device!r}, which torch rejects ({exc}); fix: set {key} to cpu, cuda, "
                         "cuda:N, mps or auto") from exc


def resolve_path(path: str, key: str) -> str:
    """``embedded:<name>`` -> the shipped checkpoint's directory; other values pass through."""
    if path.startswith("embedded:"):
        from dlm_decode.models.embedded import embedded_model_dir

        return str(embedded_model_dir(path.split(":", 1)[1]))
    if not Path(path).exists() and "/" not in path:
        raise ModelError(f"`{key}.path` is {path!r}, which is neither a directory nor `embedded:<name>`; "
                         "fix: give a local checkpoint directory, or see `dlm-decode models`")
    return path


def read_config_json(spec: ModelSpec, key: str) -> dict:
    """The checkpoint's ``config.json`` as a dict, without running any of its code (local or HF cache only,
    unless ``allow_download``)."""
    from transformers.utils import cached_file

    path = resolve_path(spec.path, key)
    try:
        file = cached_file(path, "config.json", local_files_only=not spec.allow_download)
    except Exception as exc:
        raise ModelError(f"`{key}.path` = {spec.path!r} has no readable config.json ({type(exc).__name__}: {exc})\n"
                         f"  fix: give a checkpoint directory with config.json; hub ids need {key}.allow_download=true "
                         "or a copy in the local HF cache") from exc
    with open(file, encoding="utf-8") as handle:
        return json.load(handle)


def check_implementation(config: dict, spec: ModelSpec, key: str) -> Architecture | None:
    """How ``spec.implementation`` builds this checkpoint: its native :class:`Architecture` (LLaDA, Dream), or None
    for transformers' own class of its ``model_type`` (native) or for the checkpoint's own code (remote).

    :raises ModelError: remote code without ``trust_remote_code``; no native implementation for the
        ``model_type``; a ``config.json`` the native mapping cannot reproduce.
    """
    from transformers import CONFIG_MAPPING

    model_type = config.get("model_type")
    architecture = architecture_for(config)
    if spec.implementation == "remote":
        if not spec.trust_remote_code:
            native = (f", or leave {key}.implementation=native: {architecture.original} maps onto transformers' own "
                      "classes and needs no remote code") if architecture else ""
            raise ModelError(f"`{key}.implementation` is remote, which runs the checkpoint's own modeling code "
                             f"({_code_files(config)}), but {key}.trust_remote_code is false.\n  fix: set "
                             f"{key}.trust_remote_code=true after reading that code{native}")
        return None
    if architecture is not None:
        architecture.convert(config, key)
        return architecture
    if model_type not in CONFIG_MAPPING:
        raise ModelError(f"`{key}.path` = {spec.path!r} has model_type {model_type!r}, which has no native "
                         f"implementation here (transformers {_transformers_version()} does not know it, and it is "
                         f"not one of {', '.join(a.original for a in ARCHITECTURES.values())}): only the checkpoint's "
                         "own modeling code "
                         f"({_code_files(config)}) can build it.\n  fix: set {key}.implementation=remote and "
                         f"{key}.trust_remote_code=true after reading that code")
    return None


def _code_files(config: dict) -> str:
    files = sorted({str(v).split(".")[0] + ".py" for v in (config.get("auto_map") or {}).values()
                    if isinstance(v, str)})
    return ", ".join(files) or "no auto_map in config.json"


def _transformers_version() -> str:
    import transformers

    return transformers.__version__


def load_tokenizer(spec: ModelSpec, key: str, config: dict):
    """The checkpoint's tokenizer, built as ``spec.implementation`` builds the model (native: transformers' own
    class, never the checkpoint's ``tokenization_*.py``)."""
    from transformers import AutoTokenizer

    path = resolve_path(spec.path, key)
    local = not spec.allow_download
    if spec.implementation == "remote":
        return AutoTokenizer.from_pretrained(path, trust_remote_code=True, local_files_only=local)
    architecture = architecture_for(config)
    if architecture is not None:
        return architecture.tokenizer_class.from_pretrained(path, local_files_only=local)
    return AutoTokenizer.from_pretrained(path, trust_remote_code=False, local_files_only=local)


def _auto_class(config):
    """``AutoModelForCausalLM``, or ``AutoModel`` for remote code that maps only that (Dream's ``DreamModel``)."""
    from transformers import AutoModel, AutoModelForCausalLM

    auto_map = getattr(config, "auto_map", None) or {}
    if auto_map and "AutoModelForCausalLM" not in auto_map and "AutoModel" in auto_map:
        return AutoModel
    return AutoModelForCausalLM


def _weight_sample(tensor: torch.Tensor) -> bytes:
    """Up to 768 values of ``tensor`` as float32 bytes: its first and last 256 and 256 evenly strided ones
    (empty for a tensor whose values cannot be read here, such as one offloaded to the meta device)."""
    if tensor.is_meta:
        return b""
    if tensor.is_quantized:
        tensor = tensor.dequantize()
    flat = tensor.detach().reshape(-1)
    stride = max(1, flat.numel() // 256)
    return torch.cat([flat[:256], flat[-256:], flat[::stride][:256]]).float().cpu().numpy().tobytes()


def weights_fingerprint(modules: Sequence[Any]) -> str:
    """A short hash telling apart the weights of ``modules`` (torch modules; anything else counts as none).

    It reads each tensor's name, shape and dtype and a sample of its values (:func:`_weight_sample`), so it costs
    milliseconds even for billions of parameters. Retraining or replacing a checkpoint changes it; an edit
    confined to values outside the sample (one embedding row, say) may not.
    """
    digest = hashlib.sha256()
    for module in modules:
        if not isinstance(module, torch.nn.Module):
            continue
        for name, tensor in module.state_dict().items():
            if not isinstance(tensor, torch.Tensor):  # extra state of some modules
                continue
            digest.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
            digest.update(_weight_sample(tensor))
    return digest.hexdigest()[:12]


def load_hf(spec: ModelSpec, key: str):
    """Load ``(model, tokenizer)`` for ``spec`` (offline unless the user allows downloads).

    ``implementation: native`` (the default) runs none of the checkpoint's code: LLaDA and Dream map onto
    transformers' Llama and Qwen2 (:mod:`dlm_decode.models.native`), other checkpoints load with transformers' class
    for their ``model_type``. ``implementation: remote`` runs the checkpoint's own modeling code, which needs
    ``trust_remote_code``. ``dtype`` is passed to ``from_pretrained``; ``device_map`` (e.g. ``auto``, needs
    ``accelerate``) places the weights, otherwise the model is moved to ``device`` (``auto``: CUDA when available).
    """
    path = resolve_path(spec.path, key)
    config = read_config_json(spec, key)
    architecture = check_implementation(config, spec, key)
    device = None if spec.device_map else resolve_device(spec.device, f"{key}.device")
    placement = {"device_map": spec.device_map} if spec.device_map else {}
    dtype = _DTYPES[spec.dtype]
    try:
        if architecture is not None:
            model, tokenizer = load_native(architecture, path, config, key, dtype=dtype, placement=placement,
                                           local_files_only=not spec.allow_download)
        else:
            model, tokenizer = _load_auto(spec, path, config, key, dtype, placement)
    except ModelError:
        raise
    except Exception as exc:
        raise _load_error(spec, key, config, exc) from exc
    if device is not None:
        try:
            model = model.to(device)
        except RuntimeError as exc:  # e.g. `cuda:N` past the GPUs, or out of device memory
            raise ModelError(f"`{key}.device` = {spec.device!r}: the weights could not be moved there "
                             f"({type(exc).__name__}: {exc})\n  fix: set {key}.device to a device this machine has "
                             f"(cpu, auto, or cuda:N with N < torch.cuda.device_count()), or a smaller "
                             f"{key}.dtype if memory ran out") from exc
    return model.eval(), tokenizer


def _load_auto(spec: ModelSpec, path: str, config: dict, key: str, dtype, placement: dict):
    """Through transformers' auto classes: the ``model_type``'s own class, or (remote) the checkpoint's code."""
    from transformers import AutoConfig

    remote = spec.implementation == "remote"
    options = {"trust_remote_code": remote, "local_files_only": not spec.allow_download}
    tokenizer = load_tokenizer(spec, key, config)
    hf_config = AutoConfig.from_pretrained(path, **options)
    model = _auto_class(hf_config).from_pretrained(path, config=hf_config, dtype=dtype, **placement, **options)
    return model, tokenizer


def _load_error(spec: ModelSpec, key: str, config: dict, exc: Exception) -> ModelError:
    """The error for a checkpoint that failed to load: the real exception, and a fix that fits its cause."""
    failure = f"{type(exc).__name__}: {exc}"
    if spec.device_map and "accelerate" in str(exc):
        return ModelError(f"`{key}.device_map` = {spec.device_map!r} needs accelerate ({failure})\n  fix: "
                          "`pip install accelerate`, or drop device_map")
    if spec.implementation == "remote" and not _resource_failure(exc):
        architecture = architecture_for(config)
        written = config.get("transformers_version")
        if architecture is not None:
            fix = (f"set {key}.implementation=native (the default): {architecture.original} maps onto transformers' "
                   "own classes and needs no remote code")
        elif written and written != _transformers_version():
            fix = (f"that code was written for transformers {written} and this is {_transformers_version()}: port "
                   "it, or run it where its transformers version is installed")
        else:
            fix = "fix the checkpoint's code, or report the failure to its authors"
        return ModelError(f"`{key}.path` = {spec.path!r}: the checkpoint's own modeling code ({_code_files(config)}) "
                          f"failed while loading: {failure}\n  fix: {fix}")
    return ModelError(f"`{key}.path` = {spec.path!r} could not be loaded: {failure}\n  fix: check that the "
                      "directory holds the checkpoint's weights (*.safetensors) and tokenizer files; hub ids need "
                      f"{key}.allow_download=true or a copy in the local HF cache")


def _resource_failure(exc: BaseException) -> bool:
    """A failure of files or memory (a missing weight file, out of memory), which is not the code's fault."""
    return isinstance(exc, (OSError, MemoryError, torch.OutOfMemoryError))


def head_width(model) -> int:
    """Width of the model's logits: its output embedding rows (may exceed the tokenizer's vocabulary)."""
    try:
        output = model.get_output_embeddings()
    except (AttributeError, NotImplementedError):
        output = None
    if output is not None and getattr(output, "weight", None) is not None:
        return int(output.weight.shape[0])
    config = model.config
    return int(getattr(config, "embedding_size", None) or config.vocab_size)


def undecodable_ids(tokenizer, width: int) -> list[int]:
    """Ids in ``[0, width)`` that are no token of ``tokenizer`` (its vocabulary and added tokens)."""
    known = torch.zeros(width, dtype=torch.bool)
    ids = torch.tensor([i for i in tokenizer.get_vocab().values() if 0 <= i < width], dtype=torch.long)
    known[ids] = True
    return (~known).nonzero().flatten().tolist()


class DiffusionLM:
    """A masked diffusion LM behind one interface.

    :ivar model: the HF module. :ivar tokenizer: its tokenizer. :ivar family: its :class:`Family`.
    :ivar mask_token_id, pad_token_id, fill_token_id: special ids; ``fill_token_id`` is written after EOS.
    :ivar eos_token_ids: ids that end a generation.
    :ivar vocab_size: width of the logits (may exceed the tokenizer's vocabulary).
    :ivar undecodable_ids: ids of the head the tokenizer has no token for (the padding of a head wider than the
        vocabulary): never proposed, as they could not be turned into text.
    :ivar max_context: the longest canvas the model accepts (the config's, capped by the family's trained
        context).
    :ivar chat_template: wrap prompts with the tokenizer's chat template.
    :ivar attention: its :class:`~dlm_decode.masks.AttentionPattern` (``model.dllm.attention``, read from
        ``config.json`` by default), from which the core builds every mask.
    :ivar remote: the model is the checkpoint's own code (``implementation: remote``); its failures are reported
        as such.
    """

    def __init__(self, model, tokenizer, *, mask_token_id: int | None = None,
                 eos_token_ids: list[int] | None = None, chat_template: bool = True,
                 family: str | Family = "auto", attention: str = "auto", block_size: int | None = None):
        self.model = model
        self.remote = type(model).__module__.startswith("transformers_modules")  # the checkpoint's own code
        self._probe = next(model.parameters())  # a parameter to read the device from (see `device`)
        self.tokenizer = tokenizer
        self.family = family if isinstance(family, Family) else resolve_family(family, model.config)
        causal = causal_problem(self.family, model.config)
        if causal:
            raise ModelError(f"the dLLM's {causal}; fix: {CAUSAL_FIX}")
        self.vocab_size = head_width(model)
        ids = resolve_special_ids(self.family, tokenizer, self.vocab_size, mask_override=mask_token_id,
                                  eos_override=eos_token_ids)
        self.mask_token_id = ids.mask
        if self.mask_token_id is None:
            raise ModelError("the dLLM's tokenizer has no mask token; fix: set model.dllm.mask_token_id")
        if not ids.eos or None in ids.eos:
            raise ModelError("the dLLM's tokenizer has no EOS token; fix: set model.dllm.eos_token_ids")
        outside = [i for i in (self.mask_token_id, *ids.eos) if not 0 <= i < self.vocab_size]
        if outside:
            raise ModelError(f"special id(s) {outside} lie outside the dLLM's {self.vocab_size} logits; "
                             "fix: check model.dllm.mask_token_id / eos_token_ids (and model.dllm.family)")
        self.eos_token_ids = list(ids.eos)
        self.fill_token_id = self.eos_token_ids[0]
        self.pad_token_id = ids.pad if ids.pad is not None else self.fill_token_id
        if self.pad_token_id == self.mask_token_id:
            raise ModelError("the pad id equals the mask id; fix: give the tokenizer a distinct pad token")
        if self.mask_token_id in self.eos_token_ids:
            raise ModelError(f"the mask id {self.mask_token_id} is also an EOS id ({self.eos_token_ids}); fix: check "
                             "model.dllm.mask_token_id and model.dllm.eos_token_ids")
        self.undecodable_ids = undecodable_ids(tokenizer, self.vocab_size)
        unreachable = sorted(set(self.eos_token_ids) & set(self.undecodable_ids))
        if unreachable:
            raise ModelError(f"EOS id(s) {unreachable} are no token of the dLLM's tokenizer: ids it cannot decode are "
                             "never proposed, so no row would end at them. fix: set model.dllm.eos_token_ids to ids "
                             f"of the tokenizer (its EOS is {tokenizer.eos_token_id})")
        self.max_context = model_context(self.family, model.config)
        self.attention = attention_pattern(self.family, model.config, attention, block_size)
        self.chat_template = chat_template and getattr(tokenizer, "chat_template", None) is not None
        self._affixes: tuple[Any, tuple[str, str] | None] = (None, None)  # (template they were read from, affixes)

    @classmethod
    def from_spec(cls, spec: ModelSpec, key: str = "model.dllm") -> DiffusionLM:
        model, tokenizer = load_hf(spec, key)
        return cls(model, tokenizer, mask_token_id=spec.mask_token_id, eos_token_ids=spec.eos_token_ids,
                   chat_template=spec.chat_template, family=spec.family, attention=spec.attention,
                   block_size=spec.block_size)

    @property
    def device(self) -> torch.device:
        """Where the weights are (read from one parameter, which ``model.to(...)`` moves in place)."""
        return self._probe.device

    def encode(self, prompts: list[str]) -> list[list[int]]:
        """Token ids of each prompt, with the chat template applied when enabled."""
        if not self.chat_template:
            return encode_prompts(self.tokenizer, prompts, False)
        return encode_prompts(self.tokenizer, prompts, True, self.chat_affixes)

    @property
    def chat_affixes(self) -> tuple[str, str] | None:
        """The chat template's text around a user turn (:func:`~dlm_decode.models.prompts.template_affixes`),
        read again whenever ``tokenizer.chat_template`` is replaced."""
        template = getattr(self.tokenizer, "chat_template", None)
        if self._affixes[0] is not template:
            self._affixes = (template, template_affixes(self.tokenizer))
        return self._affixes[1]

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    @torch.inference_mode()
    def forward(self, inputs: ModelInputs, cache: Any = None) -> torch.Tensor:
        """``[B, S, V]`` float logits; ``logits[:, i]`` predicts input column ``inputs.start + i``, whatever the
        family (Dream's shifted logits are realigned, see the module docstring).

        :param inputs: ``input_ids``/``position_ids`` ``[B, S]``, ``attention_mask`` ``[B, 1, S, K]`` bool.
        :param cache: None (``K == S``), a HF ``DynamicCache`` holding the keys/values of the ``K - S`` columns
            before the queries (the forward appends the queries'), or a
            :class:`~dlm_decode.models.kv_store.PositionalKVCache` of ``K`` columns (the forward writes the queries'
            in place).
        """
        if self.family.shifted_logits:
            return self._forward_shifted(inputs, cache)
        return self._run(inputs.input_ids, inputs.position_ids, inputs.attention_mask, cache)

    def _run(self, input_ids: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor,
             cache: Any) -> torch.Tensor:
        """One forward in the model's calling convention: ``[B, S]`` ids and positions, ``[B, 1, S, K]`` bool mask.

        :raises ModelError: when the checkpoint's own (remote) code fails, naming its exception and the fix.
        """
        if "position_ids" not in _forward_parameters(type(self.model)):
            return self._run_legacy(input_ids, position_ids, attention_mask, cache)
        try:
            return run_hf(self.model, input_ids, position_ids, attention_mask, cache)
        except Exception as exc:
            if not self.remote or _resource_failure(exc):  # transformers' own code, or e.g. out of device memory
                raise
            raise self._remote_failure(exc, cache) from exc

    def _remote_failure(self, exc: Exception, cache: Any) -> ModelError:
        """The error for the checkpoint's own modeling code failing in a forward."""
        fixes = []
        if cache is not None:
            fixes.append("set decoder.cache=none (this code handles keys/values its own way, not through the "
                         "transformers cache interface the caches use)")
        native = ARCHITECTURES.get(str(getattr(self.model.config, "model_type", "") or "").lower())
        if native is not None:
            fixes.append(f"set model.dllm.implementation=native: the {native.original} architecture maps onto "
                         "transformers' own classes, where every cache works")
        fixes = fixes or ["the code may be written for another transformers version: port it"]
        during = " with a key/value cache" if cache is not None else ""
        return ModelError(f"the checkpoint's own modeling code ({type(self.model).__name__}) failed in a "
                          f"forward{during}: {type(exc).__name__}: {exc}\n  fix: " + "; or ".join(fixes))

    def _run_legacy(self, input_ids, position_ids, attention_mask, cache) -> torch.Tensor:
        """Models whose ``forward`` takes no ``position_ids`` (the official LLaDA code): ids only, full attention."""
        name = type(self.model).__name__
        if cache is not None:
            raise ModelError(f"{name}.forward takes no position_ids, so this adapter cannot give it a key/value cache "
                             "(the official LLaDA code has none). fix: set model.dllm.implementation=native (LLaDA "
                             "on transformers' Llama, where every cache works), or decoder.cache=none")
        width = input_ids.shape[1]
        expected = torch.arange(width, device=position_ids.device).expand_as(position_ids)
        if not bool(torch.equal(position_ids, expected)) or not bool(attention_mask.all()):
            raise ModelError(f"{name}.forward takes no position_ids (and older LLaDA code ignores the attention mask, "
                             "LLaDA issue #90), so prompts of different lengths in one batch, or a window that "
                             "hides columns from some rows, would change the result. fix: set "
                             "model.dllm.implementation=native (LLaDA on transformers' Llama takes positions and "
                             "4-D masks), or generation.batch_size=1")
        return self.model(input_ids=input_ids).logits

    def _forward_shifted(self, inputs: ModelInputs, cache: Any) -> torch.Tensor:
        """Realigned logits of a shifted-logit model (see the module docstring): ``[B, S, V]``."""
        ids, positions, mask, start = inputs.input_ids, inputs.position_ids, inputs.attention_mask, inputs.start
        if ids.shape[1] != inputs.end - start:
            raise ModelError(f"extra query positions (WINO's shadow block) have no meaning for a shifted-logit "
                             f"model ({self.family.name}): the prediction for a column comes from the hidden state of "
                             "the column before it. fix: use another verification than wino with this model")
        if start == 0:
            raw = self._run(ids, positions, mask, cache)
            if cache is not None:
                _ColumnRecord.write(cache, 0, ids, positions)
            return torch.cat([raw[:, :1], raw[:, :-1]], dim=1)
        if cache is None:
            raise ModelError(f"a forward over columns [{start}, {inputs.end}) without a cache cannot realign the "
                             f"shifted logits of {self.family.name}: column {start}'s prediction comes from column "
                             f"{start - 1}. fix: report this cache strategy; spans starting after column 0 need a cache")
        record = getattr(cache, _ColumnRecord.ATTRIBUTE, None)
        if record is None or record.tokens.shape[1] < start:
            raise ModelError(f"the cache was not filled by a forward from column 0 through this adapter, so column "
                             f"{start - 1} (whose logit predicts column {start} in {self.family.name}) is unknown. fix: the "
                             "cache strategy's first forward must cover the canvas from column 0")
        previous = start - 1
        prev_ids = record.tokens[:, previous:start]
        prev_positions = record.positions[:, previous:start]
        real = mask[:, :, :1, previous:start]  # [B, 1, 1, 1]: the first query sees the previous column iff it is real
        alone = torch.zeros_like(mask[:, :, :1, :])
        alone[..., previous] = True
        prev_row = torch.where(real, mask[:, :, :1, :], alone)  # [B, 1, 1, K]
        if self.attention.block_causal:  # a span starting a block: the column before it sees only earlier columns
            starts_block = (positions[:, :1] % self.attention.block_size == 0)[:, None, :, None]  # [B, 1, 1, 1]
            earlier = torch.arange(mask.shape[-1], device=mask.device) < start
            prev_row = prev_row & (earlier | ~starts_block)
        all_ids = torch.cat([prev_ids, ids], dim=1)
        all_positions = torch.cat([prev_positions, positions], dim=1)
        all_mask = torch.cat([prev_row, mask], dim=2)  # [B, 1, S + 1, K]
        from dlm_decode.models.kv_store import PositionalKVCache

        if isinstance(cache, PositionalKVCache):
            write = cache.write if cache.write is not None else torch.ones_like(ids, dtype=torch.bool)
            cache.set_queries(previous, torch.cat([torch.zeros_like(write[:, :1]), write], dim=1), cache.key_end)
            raw = self._run(all_ids, all_positions, all_mask, cache)
        else:
            if not hasattr(cache, "layers") or cache.get_seq_length() != start or mask.shape[-1] != inputs.end:
                raise ModelError(f"unsupported cache {type(cache).__name__} for a shifted-logit model: expected an "
                                 f"appending DynamicCache holding columns [0, {start}) or a PositionalKVCache")
            # keys: [0, start) cached, then the duplicate of `previous` (attended by no query), then [start, end)
            hidden = torch.zeros_like(all_mask[..., :1])
            all_mask = torch.cat([all_mask[..., :start], hidden, all_mask[..., start:]], dim=-1)
            raw = self._run(all_ids, all_positions, all_mask, cache)
            _drop_column(cache, start)
        _ColumnRecord.write(cache, start, ids, positions)
        return raw[:, :-1]


class _ColumnRecord:
    """Tokens and positions ``[B, L]`` of the canvas columns a cache's forwards covered, kept on the cache."""

    ATTRIBUTE = "_dlm_decode_columns"

    def __init__(self, tokens: torch.Tensor, positions: torch.Tensor):
        self.tokens, self.positions = tokens, positions

    @classmethod
    def write(cls, cache: Any, start: int, ids: torch.Tensor, positions: torch.Tensor) -> None:
        record = getattr(cache, cls.ATTRIBUTE, None)
        end = start + ids.shape[1]
        if record is None or record.tokens.shape[0] != ids.shape[0]:
            if start != 0:
                return
            record = cls(ids.new_zeros(ids.shape[0], 0), positions.new_zeros(ids.shape[0], 0))
        if record.tokens.shape[1] < end:
            grow = end - record.tokens.shape[1]
            record.tokens = torch.cat([record.tokens, ids.new_zeros(ids.shape[0], grow)], dim=1)
            record.positions = torch.cat([record.positions, positions.new_zeros(ids.shape[0], grow)], dim=1)
        record.tokens[:, start:end] = ids
        record.positions[:, start:end] = positions
        setattr(cache, cls.ATTRIBUTE, record)


def _drop_column(cache: Any, column: int) -> None:
    """Remove key/value column ``column`` from every layer of an appending HF cache."""
    for layer in cache.layers:
        if getattr(layer, "keys", None) is None or layer.keys.dim() != 4:
            continue
        layer.keys = torch.cat([layer.keys[..., :column, :], layer.keys[..., column + 1:, :]], dim=-2)
        layer.values = torch.cat([layer.values[..., :column, :], layer.values[..., column + 1:, :]], dim=-2)


@functools.lru_cache(maxsize=None)
def _forward_parameters(model_cls: type) -> frozenset[str]:
    """Names of the explicit parameters of ``model_cls.forward``."""
    return frozenset(name for name, p in inspect.signature(model_cls.forward).parameters.items()
                     if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL))


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
    :ivar substitute_id: fed in place of ids the AR model does not have (a dLLM head wider than the AR one can
        draft them, e.g. Dream's padded ids >= 151,936 against Qwen2.5's head); the mixture already gives those
        ids no target probability, so such a draft is rejected unless it is the step's first (always committed)
        position, and the AR model then reads this id in its place.
    """

    def __init__(self, model, tokenizer):
        self.model = model
        self.tokenizer = tokenizer
        self.vocab_size = head_width(model)
        fallback = [tokenizer.unk_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id, 0]
        self.substitute_id = next(int(i) for i in fallback if i is not None and i < self.vocab_size)

    @classmethod
    def from_spec(cls, spec: ModelSpec, key: str = "model.ar", load=load_hf) -> CausalLM:
        """Load ``spec`` with ``load(spec, key) -> (model, tokenizer)`` and check it is causal (strategy factories
        call :meth:`~dlm_decode.context.BuildContext.load_causal_lm`, which records the model)."""
        model, tokenizer = load(spec, key)
        if getattr(model.config, "is_causal", True) is False:
            raise ModelError(f"`{key}.path` = {spec.path!r} is a bidirectional model (config.is_causal=False); "
                             "fix: give a causal LM as the AR model")
        return cls(model, tokenizer)

    @torch.inference_mode()
    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor, attention_mask: torch.Tensor,
                cache: Any) -> torch.Tensor:
        """``[B, S, V_ar]`` logits; ``logits[:, i]`` predicts the column after input column ``i``.

        ``input_ids`` ``[B, S]`` may hold ids past the AR vocabulary; they are read as ``substitute_id``.
        """
        input_ids = input_ids.masked_fill(input_ids >= self.vocab_size, self.substitute_id)
        return run_hf(self.model, input_ids, position_ids, attention_mask, cache)


def tokenizer_mismatches(dllm_tokenizer, ar_tokenizer) -> list[tuple[str, int, int | None]]:
    """``(token, AR id, dLLM id)`` for every AR token whose id differs in the dLLM's tokenizer (sorted by AR id)."""
    dllm_ids = dllm_tokenizer.get_vocab()
    return sorted(((token, index, dllm_ids.get(token)) for token, index in ar_tokenizer.get_vocab().items()
                   if dllm_ids.get(token) != index), key=lambda m: m[1])


def check_shared_tokenizer(dllm_tokenizer, ar_tokenizer, dllm_vocab: int, ar_vocab: int) -> None:
    """Raise :class:`ModelError` unless every AR token has the same id in the dLLM's tokenizer.

    A dLLM head wider than the AR vocabulary is allowed (its extra ids are masked out of mixtures).
    """
    mismatched = tokenizer_mismatches(dllm_tokenizer, ar_tokenizer)
    if mismatched:
        shown = ", ".join(f"{t!r}: AR {a} vs dLLM {'absent' if d is None else d}" for t, a, d in mismatched[:3])
        raise ModelError(
            f"the AR model's tokenizer differs from the dLLM's ({len(mismatched)} tokens disagree, e.g. {shown}); "
            "APD compares token ids and adds logits per id. fix: pick an AR model trained with the dLLM's "
            "tokenizer (e.g. Qwen2.5 for Dream)")
    if ar_vocab > dllm_vocab:
        raise ModelError(f"the AR head has {ar_vocab} logits but the dLLM head only {dllm_vocab}; "
                         "fix: pick an AR model whose vocabulary the dLLM covers")
