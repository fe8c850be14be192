"""Model families: reading a diffusion LM by what differs between the families (detection, special ids, context,
attention pattern).

A family fixes how the adapter reads the model's logits and special ids; how the model is *built* is
``model.<role>.implementation`` (:mod:`dlm_decode.models.native`: LLaDA and Dream on transformers' own classes by
default, SDAR and Fast-dLLM v2 too, or the checkpoint's own code). Everything else is shared.

The families themselves, as data, are :data:`dlm_decode.config.family_table.FAMILIES` (a lower layer, so that
the config schema checks ``model.dllm.family`` against them); this module reads models with them.

The attention pattern (:func:`attention_pattern`) is read from the family's block-size key, or from the generic
``attention_pattern: block_causal`` / ``diffusion_block_size`` keys any checkpoint may declare.

Special ids are resolved by token *string* first (so scaled-down stand-ins with the same special tokens at other
ids work), then the documented id, as long as it lies inside the model's head. An explicit
``model.dllm.mask_token_id`` / ``eos_token_ids`` always wins.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dlm_decode.config.family_table import FAMILIES, Family
from dlm_decode.errors import ModelError
from dlm_decode.masks import ANCHORS, BIDIRECTIONAL, AttentionPattern

#: ``config.json`` keys by which any checkpoint declares a block-causal pattern (the embedded block model does).
PATTERN_KEY, BLOCK_SIZE_KEY, ANCHOR_KEY = "attention_pattern", "diffusion_block_size", "diffusion_block_anchor"

#: ``config.json`` keys that hold the longest sequence a model accepts, in order of preference.
CONTEXT_KEYS = ("max_position_embeddings", "max_sequence_length", "n_positions", "seq_length")


def config_value(config: Mapping[str, Any] | Any, key: str, default: Any = None) -> Any:
    """``config[key]`` of a ``config.json`` mapping, or the attribute of a loaded ``PretrainedConfig``."""
    return config.get(key, default) if isinstance(config, Mapping) else getattr(config, key, default)


def detect_family(config: Mapping[str, Any] | Any) -> Family:
    """The family of a model from its ``config.json`` (a mapping) or a loaded ``PretrainedConfig``."""
    model_type = str(config_value(config, "model_type", "") or "").lower()
    architectures = " ".join(config_value(config, "architectures") or []).lower()
    for family in FAMILIES.values():
        if any(name in family.architectures for name in architectures.split()):
            return family
    for family in FAMILIES.values():
        if model_type in family.model_types:
            return family
    # by architecture name, the longest match (``LLaDA2MoeModelLM`` holds ``llada`` and ``llada2moe``)
    named = [(len(t), family) for family in FAMILIES.values() for t in family.model_types if t in architectures]
    return max(named, key=lambda match: match[0])[1] if named else FAMILIES["bidirectional"]


def causal_problem(family: Family, config: Mapping[str, Any] | Any) -> str | None:
    """Why the checkpoint looks like a causal LM (which decodes nonsense as a diffusion LM), or None: a plain HF
    checkpoint (the ``bidirectional`` family) whose config does not declare ``is_causal: false``."""
    if family.name != "bidirectional" or config_value(config, "is_causal") is False:
        return None
    return (
        f"config.json (model_type {config_value(config, 'model_type')!r}) does not declare is_causal: false, so "
        "this looks like a causal LM, not a diffusion LM"
    )


#: The fix :func:`causal_problem` errors give.
CAUSAL_FIX = (
    "point model.dllm at a diffusion LM (LLaDA, Dream, or an HF Llama/Qwen2 trained bidirectionally "
    "with is_causal: false in its config.json)"
)


def resolve_family(name: str, config: Mapping[str, Any] | Any) -> Family:
    """``model.dllm.family``: ``auto`` detects it from the config; an explicit name wins."""
    return detect_family(config) if name == "auto" else FAMILIES[name]


def config_context(config: Mapping[str, Any] | Any) -> int | None:
    """The longest sequence ``config`` declares (None if it declares none)."""
    for key in CONTEXT_KEYS:
        value = config_value(config, key)
        if isinstance(value, int) and value > 0:
            return value
    return None


def model_context(family: Family, config: Mapping[str, Any] | Any) -> int:
    """The canvas limit: the config's context, capped by the family's trained context (Dream declares 131072
    positions but was trained on 2048)."""
    declared = config_context(config)
    limits = [c for c in (declared, family.context) if c]
    return min(limits) if limits else 1 << 30


def token_id(tokenizer, token: str) -> int | None:
    """The id of ``token`` in ``tokenizer`` if it is a whole token of its vocabulary, else None."""
    index = tokenizer.get_vocab().get(token)
    return int(index) if index is not None else None


@dataclass(frozen=True)
class SpecialIds:
    """Resolved special ids of a diffusion LM.

    :ivar mask: the mask id (None: unresolved). :ivar eos: ids that end a generation (may be empty).
    :ivar pad: the padding id (None: unresolved). :ivar sources: how each was found, for reports.
    """

    mask: int | None
    eos: tuple[int, ...]
    pad: int | None
    sources: tuple[tuple[str, str], ...] = ()


def resolve_special_ids(
    family: Family,
    tokenizer,
    head_width: int,
    *,
    mask_override: int | None = None,
    eos_override: list[int] | None = None,
) -> SpecialIds:
    """Mask, EOS and pad ids: explicit override, else the family's token string, else the tokenizer's own
    special token, else the family's documented id when it lies inside the head (``< head_width``)."""
    sources = []

    def pick(entry: tuple[str, int] | None, tokenizer_id: int | None, what: str) -> int | None:
        if entry is not None and (found := token_id(tokenizer, entry[0])) is not None:
            sources.append((what, f"token {entry[0]!r}"))
            return found
        if tokenizer_id is not None:
            sources.append((what, "tokenizer"))
            return int(tokenizer_id)
        if entry is not None and entry[1] < head_width:
            sources.append((what, f"{family.name} default"))
            return entry[1]
        return None

    mask: int | None
    if mask_override is not None:
        mask = mask_override
        sources.append(("mask", "config"))
    else:
        mask = pick(family.mask, getattr(tokenizer, "mask_token_id", None), "mask")
    if eos_override is not None:
        eos = tuple(eos_override)
        sources.append(("eos", "config"))
    else:
        eos = tuple(i for i in (token_id(tokenizer, token) for token, _ in family.eos) if i is not None)
        if eos:
            sources.append(("eos", "family tokens"))
        elif getattr(tokenizer, "eos_token_id", None) is not None:
            eos = (int(tokenizer.eos_token_id),)
            sources.append(("eos", "tokenizer"))
        else:
            eos = tuple(i for _, i in family.eos if i < head_width)
            if eos:
                sources.append(("eos", f"{family.name} default"))
    pad = pick(family.pad, getattr(tokenizer, "pad_token_id", None), "pad")
    if pad is None and eos:
        pad = eos[0]
        sources.append(("pad", "first EOS"))
    return SpecialIds(mask=mask, eos=eos, pad=pad, sources=tuple(sources))


def attention_pattern(
    family: Family,
    config: Mapping[str, Any] | Any,
    attention: str = "auto",
    block_size: int | None = None,
    key: str = "model.dllm",
) -> AttentionPattern:
    """The dLLM's :class:`~dlm_decode.masks.AttentionPattern`.

    ``auto`` reads it from ``config.json``: the family's block-size key (SDAR's ``block_size``), or the generic
    ``attention_pattern: block_causal`` with ``diffusion_block_size`` (and optionally ``diffusion_block_anchor``);
    anything else is bidirectional. ``bidirectional`` and ``block_causal`` override it; ``block_size`` overrides
    the config's block size.

    :raises ModelError: block-causal without a block size, a block size for a bidirectional model, a declared
        pattern or anchor this adapter does not know, or shifted logits with blocks anchored at the first generated
        column.
    """
    declared = config_value(config, PATTERN_KEY)
    if declared not in (None, "bidirectional", "block_causal"):
        raise ModelError(
            f"config.json declares {PATTERN_KEY}: {declared!r}, which this version does not know",
            fix=f"set {key}.attention to bidirectional or block_causal if you know the model's pattern",
        )
    found = config_value(config, family.block_size_key) if family.block_size_key else None
    if found is None and declared is None:
        found = family.default_block_size
    if found is None and declared == "block_causal":
        found = config_value(config, BLOCK_SIZE_KEY)
    block_causal = attention == "block_causal" or (
        attention == "auto" and (found is not None or declared == "block_causal")
    )
    if not block_causal:
        if block_size is not None:
            raise ModelError(
                f"{key}.block_size is {block_size}, but the model is bidirectional ({key}.attention: {attention})",
                fix=f"set {key}.attention=block_causal if it is block-causal, or drop {key}.block_size",
            )
        return BIDIRECTIONAL
    size = block_size or found
    if not isinstance(size, int) or size < 1:
        raise ModelError(
            f"{key} is block-causal but its block size is unknown (config.json gives "
            f"{family.block_size_key or BLOCK_SIZE_KEY}: {size!r})",
            fix=f"set {key}.block_size",
        )
    anchor = config_value(config, ANCHOR_KEY) or family.block_anchor
    if anchor not in ANCHORS:
        raise ModelError(f"config.json declares {ANCHOR_KEY}: {anchor!r}", fix=f"use one of {', '.join(ANCHORS)}")
    if family.shifted_logits and anchor != "position":
        raise ModelError(
            f"{key} is block-causal with blocks anchored at the first generated column and its logits "
            f"are shifted ({family.name}): shifted logits are realigned for blocks anchored at position "
            "0 only (Fast-dLLM v2)",
            fix=f"set {key}.attention=bidirectional if the model is one, or "
            f"declare {ANCHOR_KEY}: position in config.json if its blocks start at position 0",
        )
    return AttentionPattern(block_size=size, anchor=anchor, head_first=family.shifted_logits)
