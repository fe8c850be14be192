"""The dLLM adapter: a Hugging Face model and its tokenizer behind the interface the decoder uses.

Families differ only here (see :mod:`dlm_decode.models.families`): a bidirectional HF decoder (Llama/Qwen2 with
``config.is_causal = False``, no remote code) and LLaDA return logits aligned to their inputs; Dream and Fast-dLLM
v2 return logits shifted by one, which :class:`DiffusionLM` realigns (:mod:`dlm_decode.models.shifted`) so that,
for every family, ``logits[:, i]`` predicts input column ``i``.

**The interface.** The decoder reads ``forward(inputs, cache) -> [B, S, V]`` logits, ``encode``/``decode``,
``mask_token_id``, ``pad_token_id``, ``fill_token_id``, ``eos_token_ids``, ``undecodable_ids``, ``vocab_size``,
``max_context``, ``device`` and ``attention`` of a dLLM. :class:`DiffusionLM` provides them for a transformers
``PreTrainedModel`` (built from a config by :meth:`DiffusionLM.from_spec`, or around a model already in memory:
:meth:`dlm_decode.decoder.Decoder.from_model`); any other object providing them may be passed as
``Decoder(config, dllm=...)`` (:class:`dlm_decode.testing.toy.ToyDiffusionLM` is one).

**Remote code.** ``implementation: remote`` runs the checkpoint's own modeling code. The official
``modeling_llada.py`` takes neither ``position_ids`` nor an HF cache, and versions before October 2025 ignore the
attention mask (LLaDA issue #90): when the model's ``forward`` has no ``position_ids`` parameter, the adapter calls
it with ``input_ids`` alone and refuses what would silently change the result (a cache, left padding in a batch, a
mask that hides columns). Remote code that fails in a forward (a file with its own tuple cache, WINO's 1-D
``position_ids``) is reported with its exception and a fix.
"""

from __future__ import annotations

from typing import Any

import torch

from dlm_decode.config.family_table import Family
from dlm_decode.config.schema import ModelSpec
from dlm_decode.errors import ModelError
from dlm_decode.models.families import (
    CAUSAL_FIX,
    attention_pattern,
    causal_problem,
    model_context,
    resolve_family,
    resolve_special_ids,
)
from dlm_decode.models.forward import forward_parameters, head_width, run_hf, separable_head
from dlm_decode.models.loading import load_hf, resource_failure
from dlm_decode.models.native import ARCHITECTURES
from dlm_decode.models.prompts import encode_prompts, template_affixes
from dlm_decode.models.shifted import realigned_logits
from dlm_decode.state import ModelInputs


def check_transformers_model(model: Any, tokenizer: Any) -> None:
    """Raise unless ``model`` is a transformers model with its config and ``tokenizer`` is given: what
    :class:`DiffusionLM` reads (the family and context from ``model.config``, the device from its parameters).

    :raises ModelError: naming what was passed and the two ways to decode it.
    """
    from transformers import PretrainedConfig

    if isinstance(model, torch.nn.Module) and isinstance(getattr(model, "config", None), PretrainedConfig):
        if tokenizer is None:
            raise ModelError(
                f"DiffusionLM got a {type(model).__name__} but no tokenizer",
                fix="pass the tokenizer "
                "the model was trained with (e.g. AutoTokenizer.from_pretrained(<its directory>))",
            )
        return
    kind = "a torch.nn.Module" if isinstance(model, torch.nn.Module) else f"a {type(model).__module__} object"
    raise ModelError(
        f"DiffusionLM needs a transformers PreTrainedModel whose `config` (a PretrainedConfig) "
        f"describes it, got {type(model).__name__} ({kind}) without one",
        fix="pass a transformers "
        "model (e.g. AutoModelForCausalLM.from_pretrained(...), with config.is_causal=False for a "
        "bidirectional dLLM), or write an adapter implementing the DiffusionLM interface (forward, "
        "encode, decode, the special ids, vocab_size, max_context, device: see "
        "dlm_decode.models.adapter) and pass it as Decoder(config, dllm=adapter)",
    )


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
    :ivar selects_outputs: the forward computes the output head at ``ModelInputs.outputs`` only (the model is one of
        transformers' classes whose head is separable, :func:`~dlm_decode.models.forward.separable_head`); false
        keeps every column's logits (the checkpoint's own code, a subclass).

    :param model: a transformers ``PreTrainedModel`` (a plain ``torch.nn.Module`` without a transformers config is
        refused with a :class:`~dlm_decode.errors.ModelError`). :param tokenizer: its tokenizer. The keyword
        arguments are those of ``model.dllm`` (:class:`~dlm_decode.config.schema.ModelSpec`).
    """

    def __init__(
        self,
        model,
        tokenizer,
        *,
        mask_token_id: int | None = None,
        eos_token_ids: list[int] | None = None,
        chat_template: bool = True,
        family: str | Family = "auto",
        attention: str = "auto",
        block_size: int | None = None,
    ):
        check_transformers_model(model, tokenizer)
        self.model = model
        self.remote = type(model).__module__.startswith("transformers_modules")  # the checkpoint's own code
        self.selects_outputs = separable_head(model)
        self._probe = next(model.parameters())  # a parameter to read the device from (see `device`)
        self.tokenizer = tokenizer
        self.family = family if isinstance(family, Family) else resolve_family(family, model.config)
        causal = causal_problem(self.family, model.config)
        if causal:
            raise ModelError(f"the dLLM's {causal}", fix=CAUSAL_FIX)
        self.vocab_size = head_width(model)
        ids = resolve_special_ids(
            self.family, tokenizer, self.vocab_size, mask_override=mask_token_id, eos_override=eos_token_ids
        )
        if ids.mask is None:
            raise ModelError("the dLLM's tokenizer has no mask token", fix="set model.dllm.mask_token_id")
        self.mask_token_id = ids.mask
        if not ids.eos or None in ids.eos:
            raise ModelError("the dLLM's tokenizer has no EOS token", fix="set model.dllm.eos_token_ids")
        outside = [i for i in (self.mask_token_id, *ids.eos) if not 0 <= i < self.vocab_size]
        if outside:
            raise ModelError(
                f"special id(s) {outside} lie outside the dLLM's {self.vocab_size} logits",
                fix="check model.dllm.mask_token_id / eos_token_ids (and model.dllm.family)",
            )
        self.eos_token_ids = list(ids.eos)
        self.fill_token_id = self.eos_token_ids[0]
        self.pad_token_id = ids.pad if ids.pad is not None else self.fill_token_id
        if self.pad_token_id == self.mask_token_id:
            raise ModelError("the pad id equals the mask id", fix="give the tokenizer a distinct pad token")
        if self.mask_token_id in self.eos_token_ids:
            raise ModelError(
                f"the mask id {self.mask_token_id} is also an EOS id ({self.eos_token_ids})",
                fix="check model.dllm.mask_token_id and model.dllm.eos_token_ids",
            )
        self.undecodable_ids = undecodable_ids(tokenizer, self.vocab_size)
        unreachable = sorted(set(self.eos_token_ids) & set(self.undecodable_ids))
        if unreachable:
            raise ModelError(
                f"EOS id(s) {unreachable} are no token of the dLLM's tokenizer: ids it cannot decode are "
                "never proposed, so no row would end at them",
                fix=f"set model.dllm.eos_token_ids to ids of the tokenizer (its EOS is {tokenizer.eos_token_id})",
            )
        self.max_context = model_context(self.family, model.config)
        self.attention = attention_pattern(self.family, model.config, attention, block_size)
        self.chat_template = chat_template and getattr(tokenizer, "chat_template", None) is not None
        self._affixes: tuple[Any, tuple[str, str] | None] = (None, None)  # (template they were read from, affixes)

    @classmethod
    def from_spec(cls, spec: ModelSpec, key: str = "model.dllm") -> DiffusionLM:
        """Load the model ``spec`` names (:func:`~dlm_decode.models.loading.load_hf`) and read it as it says."""
        model, tokenizer = load_hf(spec, key)
        return cls.from_loaded(model, tokenizer, spec)

    @classmethod
    def from_loaded(cls, model: Any, tokenizer: Any, spec: ModelSpec) -> DiffusionLM:
        """The adapter around a model already loaded, read as ``spec`` says (its family, attention, block size,
        chat template and special ids; its loading keys are not used)."""
        return cls(
            model,
            tokenizer,
            mask_token_id=spec.mask_token_id,
            eos_token_ids=spec.eos_token_ids,
            chat_template=spec.chat_template,
            family=spec.family,
            attention=spec.attention,
            block_size=spec.block_size,
        )

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
        family (Dream's shifted logits are realigned: :mod:`dlm_decode.models.shifted`). With ``inputs.outputs``
        and :attr:`selects_outputs`, ``[B, W, V]``: the transformer body runs on every query, the output head only
        on the hidden states the ``W`` output queries read (column ``j - 1``'s for column ``j`` when shifted).

        :param inputs: ``input_ids``/``position_ids`` ``[B, S]``, ``attention_mask`` ``[B, 1, S, K]`` bool.
        :param cache: None (``K == S``), a HF ``DynamicCache`` holding the keys/values of the ``K - S`` columns
            before the queries (the forward appends the queries'), or a
            :class:`~dlm_decode.models.kv_store.PositionalKVCache` of ``K`` columns (the forward writes the queries'
            in place).
        """
        outputs = inputs.outputs if self.selects_outputs else None
        if self.family.shifted_logits:
            return realigned_logits(self._run, inputs, cache, self.family.name, self.attention, outputs)
        return self._run(inputs.input_ids, inputs.position_ids, inputs.attention_mask, cache, outputs)

    def _run(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        cache: Any,
        outputs: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One forward in the model's calling convention: ``[B, S]`` ids and positions, ``[B, 1, S, K]`` bool mask;
        the logits of every query, or of the ``[B, W]`` queries ``outputs`` (given only when :attr:`selects_outputs`).

        :raises ModelError: when the checkpoint's own (remote) code fails, naming its exception and the fix.
        """
        # the ignore below: mypy does not take a class for the Hashable argument of a functools.cache function
        if "position_ids" not in forward_parameters(type(self.model)):  # type: ignore[arg-type]
            return self._run_legacy(input_ids, position_ids, attention_mask, cache)
        try:
            return run_hf(self.model, input_ids, position_ids, attention_mask, cache, outputs)
        except Exception as exc:
            if not self.remote or resource_failure(exc):  # transformers' own code, or e.g. out of device memory
                raise
            raise self._remote_failure(exc, cache) from exc

    def _remote_failure(self, exc: Exception, cache: Any) -> ModelError:
        """The error for the checkpoint's own modeling code failing in a forward."""
        fixes = []
        if cache is not None:
            fixes.append(
                "set decoder.cache=none (this code handles keys/values its own way, not through the "
                "transformers cache interface the caches use)"
            )
        native = ARCHITECTURES.get(str(getattr(self.model.config, "model_type", "") or "").lower())
        if native is not None:
            fixes.append(
                f"set model.dllm.implementation=native: the {native.original} architecture maps onto "
                "transformers' own classes, where every cache works"
            )
        fixes = fixes or ["the code may be written for another transformers version: port it"]
        during = " with a key/value cache" if cache is not None else ""
        return ModelError(
            f"the checkpoint's own modeling code ({type(self.model).__name__}) failed in a "
            f"forward{during}: {type(exc).__name__}: {exc}",
            fix="; or ".join(fixes),
        )

    def _run_legacy(self, input_ids, position_ids, attention_mask, cache) -> torch.Tensor:
        """Models whose ``forward`` takes no ``position_ids`` (the official LLaDA code): ids only, full attention."""
        name = type(self.model).__name__
        if cache is not None:
            raise ModelError(
                f"{name}.forward takes no position_ids, so this adapter cannot give it a key/value cache "
                "(the official LLaDA code has none)",
                fix="set model.dllm.implementation=native (LLaDA "
                "on transformers' Llama, where every cache works), or decoder.cache=none",
            )
        width = input_ids.shape[1]
        expected = torch.arange(width, device=position_ids.device).expand_as(position_ids)
        if not bool(torch.equal(position_ids, expected)) or not bool(attention_mask.all()):
            raise ModelError(
                f"{name}.forward takes no position_ids (and older LLaDA code ignores the attention mask, "
                "LLaDA issue #90), so prompts of different lengths in one batch, or a window that "
                "hides columns from some rows, would change the result",
                fix="set "
                "model.dllm.implementation=native (LLaDA on transformers' Llama takes positions and "
                "4-D masks), or generation.batch_size=1",
            )
        return self.model(input_ids=input_ids).logits
