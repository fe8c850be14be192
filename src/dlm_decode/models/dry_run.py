"""``--dry-run``: check a config and its model pair from ``config.json`` and tokenizer files alone, no weights.

Run it before a multi-hour GPU job (``dlm-decode generate|eval --dry-run -c ...``, or :func:`dry_run`). It reads
each model's ``config.json`` as JSON (none of the checkpoint's code runs for it) and loads its tokenizer as loading
would (offline unless ``allow_download``; natively unless ``implementation: remote``). Each check below is a
finding with a stable ``check`` name:

=================  ======================================================================================
check              error when
=================  ======================================================================================
``config``         a model's ``config.json`` cannot be found or read: no such directory, a directory without
                   one (subdirectories with one listed), a hub id not in the local cache with downloading
                   off, an unreachable hub with downloading on (:mod:`~dlm_decode.models.checkpoint`)
``weights``        none of the weight files ``from_pretrained`` reads, or shards an index names, are there
``tokenizer``      no tokenizer files (the ones looked for are named), or the tokenizer cannot be loaded
``implementation`` ``implementation: remote`` without ``trust_remote_code``; a ``model_type`` with no native
                   implementation (neither LLaDA, Dream nor a transformers class); a LLaDA or Dream
                   ``config.json`` asking for what the native mapping does not reproduce
``causal``         the dLLM is a plain HF model without ``is_causal: false`` (a causal LM read as a dLLM);
                   or the AR model declares ``is_causal: false``
``mask``           no mask id (tokenizer, family table or ``mask_token_id``), or one outside the dLLM head
``pad``            the pad id equals the mask id
``eos``            no EOS id, or one outside the dLLM head
``pair_tokenizer`` an AR token has another id in the dLLM's tokenizer (APD compares ids, adds logits per id)
``pair_vocab``     the AR head is wider than the dLLM head
``context``        a model's context is shorter than the prompt budget + ``generation.max_new_tokens``
``attention``      the dLLM's attention pattern cannot be read (block-causal without a block size, a declared
                   pattern this version does not know)
``window``         a ``blocks`` window whose size neither divides nor is a multiple of a block-causal dLLM's
                   block size (the decoder would refuse it)
=================  ======================================================================================

Facts printed besides: the family, special ids, attention pattern (with its block size), head widths, contexts, the
prompt budget, and the memory of one step's logits at batch 16 (:func:`logits_step`).

Warnings (``family`` when an explicit ``model.dllm.family`` disagrees with ``config.json``; ``mask`` when the
mask id is not a token of the tokenizer; ``device`` when CUDA is asked for but absent here) do not fail the run.
The prompt budget is the longest of the given prompts after the chat template, else ``prompt_budget`` tokens, else
what the shorter context of the pair leaves after ``generation.max_new_tokens`` (so the check then fails only when
nothing is left). The weight and tokenizer files are looked for where loading reads them (the directory, or a hub
id's cached snapshot when downloading is off), with the checks loading runs itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dlm_decode.config.compose import ResolvedConfig, Source, load_config
from dlm_decode.config.family_table import FAMILIES
from dlm_decode.config.schema import ModelSpec
from dlm_decode.errors import ModelError
from dlm_decode.masks import AttentionPattern
from dlm_decode.models.causal import tokenizer_mismatches
from dlm_decode.models.checkpoint import (
    check_tokenizer_files,
    check_weight_files,
    local_files,
    read_config_json,
    tokenizer_code,
)
from dlm_decode.models.families import (
    CAUSAL_FIX,
    attention_pattern,
    causal_problem,
    detect_family,
    model_context,
    resolve_special_ids,
)
from dlm_decode.models.loading import check_implementation, load_tokenizer
from dlm_decode.models.prompts import encode_prompts


@dataclass
class Finding:
    """One result of a check. :ivar level: ``error`` or ``warning``. :ivar key: the config key or pair at fault."""

    level: str
    check: str
    key: str
    message: str
    fix: str | None = None

    def __str__(self) -> str:
        text = f"{self.level}: [{self.check}] `{self.key}`: {self.message}"
        return f"{text}\n    fix: {self.fix}" if self.fix else text


@dataclass
class DryRunReport:
    """Findings plus the facts read (family, special ids, head widths, contexts, prompt budget)."""

    findings: list[Finding] = field(default_factory=list)
    facts: dict[str, Any] = field(default_factory=dict)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def checks(self, level: str = "error") -> set[str]:
        """Names of the checks that produced a finding of ``level``."""
        return {f.check for f in self.findings if f.level == level}

    def format(self) -> str:
        lines = [f"{key}: {value}" for key, value in self.facts.items()]
        lines += [str(f) for f in self.findings]
        verdict = "ok: no incompatibility found" if self.ok else f"FAILED: {len(self.errors)} error(s)"
        lines.append(f"dry run {verdict} ({len(self.warnings)} warning(s)); no weights were loaded")
        return "\n".join(lines)

    def add(self, level: str, check: str, key: str, message: str, fix: str | None = None) -> None:
        self.findings.append(Finding(level, check, key, message, fix))


@dataclass
class _Side:
    """What the dry run learned about one model."""

    config: dict
    tokenizer: Any
    head: int
    context: int


def _head_from_config(config: dict) -> int:
    return int(config.get("embedding_size") or config.get("vocab_size") or 0)


def _with_text_fields(config: dict) -> dict:
    """``config`` with its ``text_config`` fields beneath its own: a multimodal ``config.json`` (DiffusionGemma's)
    keeps the text model's vocabulary and context there."""
    return {**(config.get("text_config") or {}), **config}


def _inspect(spec: ModelSpec, key: str, report: DryRunReport, *, dllm: bool) -> _Side | None:
    try:
        config = read_config_json(spec, key)
    except ModelError as exc:
        report.add("error", "config", f"{key}.path", exc.message, exc.fix)
        return None
    try:
        check_implementation(config, spec, key)
    except ModelError as exc:
        report.add("error", "implementation", f"{key}.implementation", exc.message, exc.fix)
    if spec.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            report.add(
                "warning",
                "device",
                f"{key}.device",
                f"{spec.device!r} but no CUDA device on this machine",
                "fine if the real run goes to a GPU machine; use device: auto to run anywhere",
            )
    directory = local_files(spec, key)
    if directory is not None:
        try:
            check_weight_files(directory, spec, key)
        except ModelError as exc:
            report.add("error", "weights", f"{key}.path", exc.message, exc.fix)
        try:
            check_tokenizer_files(directory, spec, key)
        except ModelError as exc:
            report.add("error", "tokenizer", f"{key}.path", exc.message, exc.fix)
            return None
    tokenizer = _load_tokenizer(spec, key, config, directory, report)
    if tokenizer is None:
        return None
    family = detect_family(config) if (not dllm or spec.family == "auto") else FAMILIES[spec.family]
    text = _with_text_fields(config)
    return _Side(config, tokenizer, _head_from_config(text), model_context(family, text))


def _load_tokenizer(spec: ModelSpec, key: str, config: dict, directory: Path | None, report: DryRunReport) -> Any:
    """The tokenizer as loading builds it, or None after reporting why it cannot be loaded."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # AutoTokenizer warns about remote-code configs it does not build
    try:
        return load_tokenizer(spec, key, config)
    except Exception as exc:
        fix = "check the tokenizer files against the checkpoint's"
        if spec.implementation == "native" and directory is not None and tokenizer_code(directory):
            fix += (
                f"; its tokenizer_config.json names its own tokenizer code, which needs "
                f"{key}.implementation=remote and {key}.trust_remote_code=true"
            )
        first_line = str(exc).splitlines()[0] if str(exc) else ""
        report.add(
            "error",
            "tokenizer",
            f"{key}.path",
            f"the tokenizer cannot be loaded: {type(exc).__name__}: {first_line}",
            fix,
        )
        return None
    finally:
        hf_logging.set_verbosity(verbosity)


def dry_run(
    source: Source | Sequence[Source] | ResolvedConfig = (),
    overrides: Sequence[str] = (),
    *,
    prompts: Sequence[str] | None = None,
    prompt_budget: int | None = None,
    max_new_tokens: int | None = None,
) -> DryRunReport:
    """Validate a config and its models' compatibility without loading weights.

    :param source: config files/mappings (composed with ``overrides``) or a resolved config; an invalid config
        raises :class:`~dlm_decode.errors.ConfigError` as ``load_config`` does (a strategy's required key left
        null, such as ``model.ar`` for ``apd``, included).
    :param prompts: prompts to size the context check with (after the chat template).
    :param prompt_budget: prompt tokens to assume when ``prompts`` is None (default: what the shorter context of
        the model pair leaves after ``max_new_tokens``, so that the check fails only when nothing is left).
    :param max_new_tokens: override ``generation.max_new_tokens``.
    """
    config = source if isinstance(source, ResolvedConfig) else load_config(source, overrides)
    report = DryRunReport()
    dllm_spec, ar_spec = config.config.model.dllm, config.config.model.ar
    new_tokens = max_new_tokens or config.config.generation.max_new_tokens
    report.facts["config_hash"] = config.hash
    dllm = _inspect(dllm_spec, "model.dllm", report, dllm=True)
    if dllm is not None:
        pattern = _check_dllm(dllm_spec, dllm, report)
        window, window_config = config.strategies["window"]
        if pattern is not None and pattern.block_causal and window == "blocks":
            size = window_config.size
            if not pattern.nests(size):
                report.add(
                    "error",
                    "window",
                    "decoder.window.size",
                    f"{size} neither divides nor is a multiple of "
                    f"the dLLM's block size {pattern.block_size} ({pattern})",
                    f"set decoder.window.size to a divisor or a multiple of {pattern.block_size}",
                )
    ar = None
    if ar_spec is not None:
        ar = _inspect(ar_spec, "model.ar", report, dllm=False)
        if ar is not None:
            report.facts["ar"] = f"model_type {ar.config.get('model_type')!r}, head {ar.head}, context {ar.context}"
            if ar.config.get("is_causal") is False:
                report.add(
                    "error",
                    "causal",
                    "model.ar.path",
                    "config.json declares is_causal: false (a bidirectional model)",
                    "give a causal LM as the AR model",
                )
        if dllm is not None and ar is not None:
            _check_pair(dllm, ar, report)
    if dllm is not None:
        chat = dllm_spec.chat_template
        if prompts:
            budget = max(len(ids) for ids in encode_prompts(dllm.tokenizer, list(prompts), chat))
            origin = f"longest of {len(prompts)} prompt(s) after the chat template"
            fix = "lower generation.max_new_tokens or shorten the prompts (few-shot examples)"
        elif prompt_budget is not None:
            budget, origin = prompt_budget, "given (--prompt-budget)"
            fix = "lower --prompt-budget (prompt_budget) or generation.max_new_tokens"
        else:
            budget, origin = _room(dllm, ar, new_tokens)
            fix = "lower generation.max_new_tokens"
        report.facts["prompt_budget"] = f"{budget} tokens ({origin}) + max_new_tokens {new_tokens}"
        report.facts["logits_step"] = logits_step(budget + new_tokens, dllm.head, dllm_spec.dtype)
        for key, side in (("model.dllm", dllm), ("model.ar", ar)):
            if side is not None and budget + new_tokens > side.context:
                room = side.context - new_tokens
                report.add(
                    "error",
                    "context",
                    f"{key}.path",
                    f"context {side.context} < prompt budget {budget} + "
                    f"generation.max_new_tokens {new_tokens} = {budget + new_tokens}"
                    + (f" (room for prompts of {room} tokens at most)" if room > 0 else " (no room for any prompt)"),
                    fix,
                )
    return report


#: The batch size :func:`logits_step` sizes one step's logits for.
LOGITS_BATCH = 16
#: Bytes per logit for each ``model.dllm.dtype`` (the head's output dtype).
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def logits_step(columns: int, head: int, dtype: str, rows: int = LOGITS_BATCH) -> str:
    """The memory of one step's logits, as the dry run reports it: ``rows x columns x head x bytes``, where
    ``columns`` is the whole canvas (prompt budget + ``max_new_tokens``), which a step without a cache reads and the
    head answers at every column (a prefix or dual cache reads fewer columns; a float32 copy of the logits, e.g. for
    a softmax, doubles a bfloat16 figure)."""
    size = rows * columns * head * DTYPE_BYTES[dtype]
    return (
        f"{size / 2**30:.2f} GiB at batch {rows} ({rows} rows x {columns} canvas columns x {head} logits x "
        f"{DTYPE_BYTES[dtype]} bytes ({dtype}) = {size:,} bytes; the canvas is what a step without a cache reads)"
    )


def _room(dllm: _Side, ar: _Side | None, new_tokens: int) -> tuple[int, str]:
    """The default prompt budget: what the shorter context leaves after ``new_tokens`` (at least 1 token, so that
    a context with no room at all fails the check), and where it comes from."""
    sides = [("model.dllm", dllm)] + ([("model.ar", ar)] if ar is not None else [])
    key, side = min(sides, key=lambda pair: pair[1].context)
    return max(side.context - new_tokens, 1), f"{key}'s context {side.context} - max_new_tokens {new_tokens}"


def _check_dllm(spec: ModelSpec, side: _Side, report: DryRunReport) -> AttentionPattern | None:
    """The dLLM's checks; returns its attention pattern (None when it cannot be read)."""
    detected = detect_family(side.config)
    family = detected if spec.family == "auto" else FAMILIES[spec.family]
    report.facts["dllm"] = (
        f"family {family.name} ({'detected' if spec.family == 'auto' else 'set'}; config.json "
        f"model_type {side.config.get('model_type')!r}), implementation {spec.implementation}, "
        f"head {side.head}, context {side.context}, shifted logits {family.shifted_logits}"
    )
    if family is not detected:
        report.add(
            "warning",
            "family",
            "model.dllm.family",
            f"set to {family.name} but config.json looks like {detected.name}",
            "leave model.dllm.family=auto unless the checkpoint is a renamed derivative",
        )
    causal = causal_problem(family, side.config)
    if causal:
        report.add("error", "causal", "model.dllm.path", causal, CAUSAL_FIX)
    ids = resolve_special_ids(
        family, side.tokenizer, side.head, mask_override=spec.mask_token_id, eos_override=spec.eos_token_ids
    )
    report.facts["special_ids"] = (
        f"mask {ids.mask}, eos {list(ids.eos)}, pad {ids.pad} ("
        + ", ".join(f"{what} from {where}" for what, where in ids.sources)
        + ")"
    )
    if ids.mask is None:
        report.add(
            "error",
            "mask",
            "model.dllm.mask_token_id",
            f"no mask id: the tokenizer has no mask token and the {family.name} family names none",
            "set model.dllm.mask_token_id (or model.dllm.family)",
        )
    elif not 0 <= ids.mask < side.head:
        report.add(
            "error",
            "mask",
            "model.dllm.mask_token_id",
            f"mask id {ids.mask} lies outside the dLLM's {side.head} logits",
            "check model.dllm.mask_token_id",
        )
    elif ids.mask >= len(side.tokenizer):
        report.add(
            "warning",
            "mask",
            "model.dllm.mask_token_id",
            f"mask id {ids.mask} is not a token of the tokenizer ({len(side.tokenizer)} tokens)",
            "make sure it is the id the model was trained with",
        )
    if ids.mask is not None and ids.pad == ids.mask:
        report.add(
            "error",
            "pad",
            "model.dllm.path",
            f"the pad id equals the mask id ({ids.mask}): left padding would read as masks",
            "give the tokenizer a distinct pad token",
        )
    if ids.mask is not None and ids.mask in ids.eos:
        report.add(
            "error",
            "eos",
            "model.dllm.eos_token_ids",
            f"the mask id {ids.mask} is also an EOS id ({list(ids.eos)})",
            "check model.dllm.mask_token_id and model.dllm.eos_token_ids",
        )
    if not ids.eos:
        report.add(
            "error",
            "eos",
            "model.dllm.eos_token_ids",
            f"no EOS id: the tokenizer has no EOS token and the {family.name} family names none",
            "set model.dllm.eos_token_ids",
        )
    elif any(not 0 <= i < side.head for i in ids.eos):
        report.add(
            "error",
            "eos",
            "model.dllm.eos_token_ids",
            f"EOS ids {list(ids.eos)} include ids outside the dLLM's {side.head} logits",
            "check model.dllm.eos_token_ids",
        )
    try:
        pattern = attention_pattern(family, side.config, spec.attention, spec.block_size)
    except ModelError as exc:
        report.add("error", "attention", "model.dllm.attention", exc.message, exc.fix)
        return None
    report.facts["attention"] = str(pattern)
    return pattern


def _check_pair(dllm: _Side, ar: _Side, report: DryRunReport) -> None:
    mismatched = tokenizer_mismatches(dllm.tokenizer, ar.tokenizer)
    if mismatched:
        shown = ", ".join(f"{t!r}: AR {a} vs dLLM {'absent' if d is None else d}" for t, a, d in mismatched[:3])
        report.add(
            "error",
            "pair_tokenizer",
            "model.ar.path",
            f"{len(mismatched)} AR token(s) have another id in the dLLM's tokenizer, e.g. {shown}",
            "pick an AR model trained with the dLLM's tokenizer (e.g. Qwen2.5 for Dream)",
        )
    if ar.head > dllm.head:
        report.add(
            "error",
            "pair_vocab",
            "model.ar.path",
            f"the AR head has {ar.head} logits but the dLLM head only {dllm.head}",
            "pick an AR model whose vocabulary the dLLM head covers",
        )
