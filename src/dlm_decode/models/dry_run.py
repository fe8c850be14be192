"""``--dry-run``: check a config and its model pair from ``config.json`` and tokenizer files alone, no weights.

Run it before a multi-hour GPU job (``dlm-decode generate|eval --dry-run -c ...``, or :func:`dry_run`). It reads
each model's ``config.json`` as JSON (none of the checkpoint's code runs for it) and loads its tokenizer as loading
would (offline unless ``allow_download``; natively unless ``implementation: remote``). Each check below is a
finding with a stable ``check`` name:

=================  ======================================================================================
check              error when
=================  ======================================================================================
``config``         a model's ``config.json`` cannot be found or read (path, hub id not cached)
``tokenizer``      a model's tokenizer cannot be loaded
``implementation`` ``implementation: remote`` without ``trust_remote_code``; a ``model_type`` with no native
                   implementation (neither LLaDA, Dream nor a transformers class); a LLaDA or Dream
                   ``config.json`` asking for what the native mapping does not reproduce
``causal``         the dLLM is a plain HF model without ``is_causal: false`` (a causal LM read as a dLLM);
                   or the AR model declares ``is_causal: false``
``mask``           no mask id (tokenizer, family table or ``mask_token_id``), or one outside the dLLM head
``pad``            the pad id equals the mask id
``eos``            no EOS id, or one outside the dLLM head
``ar_missing``     the verification needs an AR model (``apd``) and ``model.ar`` is null
``pair_tokenizer`` an AR token has another id in the dLLM's tokenizer (APD compares ids, adds logits per id)
``pair_vocab``     the AR head is wider than the dLLM head
``context``        a model's context is shorter than the prompt budget + ``generation.max_new_tokens``
``attention``      the dLLM's attention pattern cannot be read (block-causal without a block size, a declared
                   pattern this version does not know)
``window``         a ``blocks`` window whose size neither divides nor is a multiple of a block-causal dLLM's
                   block size (the decoder would refuse it)
=================  ======================================================================================

Warnings (``family`` when an explicit ``model.dllm.family`` disagrees with ``config.json``; ``mask`` when the
mask id is not a token of the tokenizer; ``device`` when CUDA is asked for but absent here) do not fail the run.
The prompt budget is the longest of the given prompts after the chat template, else ``prompt_budget`` tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

from dlm_decode.config.compose import ResolvedConfig, Source, load_config
from dlm_decode.config.schema import ModelSpec
from dlm_decode.errors import ModelError
from dlm_decode.masks import AttentionPattern
from dlm_decode.models.families import (CAUSAL_FIX, FAMILIES, attention_pattern, causal_problem, detect_family,
                                        model_context, resolve_special_ids)
from dlm_decode.models.hf import check_implementation, load_tokenizer, read_config_json, tokenizer_mismatches
from dlm_decode.models.prompts import encode_prompts

#: Verification strategies that load ``model.ar``.
NEEDS_AR = ("apd",)
#: Prompt tokens assumed when no prompt is given.
DEFAULT_PROMPT_BUDGET = 512


@dataclass
class Finding:
    """One result of a check. :ivar level: ``error`` or ``warning``. :ivar key: the config key or pair at fault."""

    level: str
    check: str
    key: str
    message: str
    fix: Optional[str] = None

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

    def add(self, level: str, check: str, key: str, message: str, fix: Optional[str] = None) -> None:
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


def _inspect(spec: ModelSpec, key: str, report: DryRunReport, *, dllm: bool) -> Optional[_Side]:
    try:
        config = read_config_json(spec, key)
    except ModelError as exc:
        report.add("error", "config", f"{key}.path", str(exc).split("\n")[0],
                   "give a checkpoint directory with config.json, `embedded:<name>`, or a cached hub id")
        return None
    try:
        check_implementation(config, spec, key)
    except ModelError as exc:
        message, _, fix = str(exc).partition("\n  fix: ")
        report.add("error", "implementation", f"{key}.implementation", message, fix or None)
    if spec.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            report.add("warning", "device", f"{key}.device", f"{spec.device!r} but no CUDA device on this machine",
                       "fine if the real run goes to a GPU machine; use device: auto to run anywhere")
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # AutoTokenizer warns about remote-code configs it does not build
    try:
        tokenizer = load_tokenizer(spec, key, config)
    except Exception as exc:
        report.add("error", "tokenizer", f"{key}.path", f"the tokenizer cannot be loaded: {type(exc).__name__}: "
                   f"{str(exc).splitlines()[0] if str(exc) else ''}",
                   f"check the tokenizer files; tokenizers with their own code need {key}.implementation=remote and "
                   f"{key}.trust_remote_code=true")
        return None
    finally:
        hf_logging.set_verbosity(verbosity)
    family = detect_family(config) if (not dllm or spec.family == "auto") else FAMILIES[spec.family]
    return _Side(config, tokenizer, _head_from_config(config), model_context(family, config))


def dry_run(source: Source | Sequence[Source] | ResolvedConfig = (), overrides: Sequence[str] = (), *,
            prompts: Optional[Sequence[str]] = None, prompt_budget: Optional[int] = None,
            max_new_tokens: Optional[int] = None) -> DryRunReport:
    """Validate a config and its models' compatibility without loading weights.

    :param source: config files/mappings (composed with ``overrides``) or a resolved config; an invalid config
        raises :class:`~dlm_decode.errors.ConfigError` as ``load_config`` does.
    :param prompts: prompts to size the context check with (after the chat template).
    :param prompt_budget: prompt tokens to assume when ``prompts`` is None (default 512).
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
                report.add("error", "window", "decoder.window.size", f"{size} neither divides nor is a multiple of "
                           f"the dLLM's block size {pattern.block_size} ({pattern})",
                           f"set decoder.window.size to a divisor or a multiple of {pattern.block_size}")
    verification = config.strategies["verification"][0]
    ar = None
    if ar_spec is None:
        if verification in NEEDS_AR:
            report.add("error", "ar_missing", "model.ar", f"the `{verification}` verification needs an autoregressive "
                       "model, but model.ar is null", "set model.ar.path (e.g. the Qwen2.5-0.5B checkpoint for Dream)")
    else:
        ar = _inspect(ar_spec, "model.ar", report, dllm=False)
        if ar is not None:
            report.facts["ar"] = f"model_type {ar.config.get('model_type')!r}, head {ar.head}, context {ar.context}"
            if ar.config.get("is_causal") is False:
                report.add("error", "causal", "model.ar.path", "config.json declares is_causal: false (a "
                           "bidirectional model)", "give a causal LM as the AR model")
        if dllm is not None and ar is not None:
            _check_pair(dllm, ar, report)
    if dllm is not None:
        chat = dllm_spec.chat_template
        if prompts:
            budget = max(len(ids) for ids in encode_prompts(dllm.tokenizer, list(prompts), chat))
            origin = f"longest of {len(prompts)} prompt(s) after the chat template"
        else:
            budget, origin = prompt_budget or DEFAULT_PROMPT_BUDGET, "assumed (--prompt-budget)"
        report.facts["prompt_budget"] = f"{budget} tokens ({origin}) + max_new_tokens {new_tokens}"
        for key, side in (("model.dllm", dllm), ("model.ar", ar)):
            if side is not None and budget + new_tokens > side.context:
                report.add("error", "context", f"{key}.path", f"context {side.context} < prompt budget {budget} + "
                           f"generation.max_new_tokens {new_tokens} = {budget + new_tokens}",
                           "lower generation.max_new_tokens or shorten the prompts (few-shot examples)")
    return report


def _check_dllm(spec: ModelSpec, side: _Side, report: DryRunReport) -> Optional[AttentionPattern]:
    """The dLLM's checks; returns its attention pattern (None when it cannot be read)."""
    detected = detect_family(side.config)
    family = detected if spec.family == "auto" else FAMILIES[spec.family]
    report.facts["dllm"] = (f"family {family.name} ({'detected' if spec.family == 'auto' else 'set'}; config.json "
                            f"model_type {side.config.get('model_type')!r}), implementation {spec.implementation}, "
                            f"head {side.head}, context {side.context}, shifted logits {family.shifted_logits}")
    if family is not detected:
        report.add("warning", "family", "model.dllm.family", f"set to {family.name} but config.json looks like "
                   f"{detected.name}", "leave model.dllm.family=auto unless the checkpoint is a renamed derivative")
    causal = causal_problem(family, side.config)
    if causal:
        report.add("error", "causal", "model.dllm.path", causal, CAUSAL_FIX)
    ids = resolve_special_ids(family, side.tokenizer, side.head, mask_override=spec.mask_token_id,
                              eos_override=spec.eos_token_ids)
    report.facts["special_ids"] = (f"mask {ids.mask}, eos {list(ids.eos)}, pad {ids.pad} ("
                                   + ", ".join(f"{what} from {where}" for what, where in ids.sources) + ")")
    if ids.mask is None:
        report.add("error", "mask", "model.dllm.mask_token_id", "no mask id: the tokenizer has no mask token and "
                   f"the {family.name} family names none", "set model.dllm.mask_token_id (or model.dllm.family)")
    elif not 0 <= ids.mask < side.head:
        report.add("error", "mask", "model.dllm.mask_token_id", f"mask id {ids.mask} lies outside the dLLM's "
                   f"{side.head} logits", "check model.dllm.mask_token_id")
    elif ids.mask >= len(side.tokenizer):
        report.add("warning", "mask", "model.dllm.mask_token_id", f"mask id {ids.mask} is not a token of the "
                   f"tokenizer ({len(side.tokenizer)} tokens)", "make sure it is the id the model was trained with")
    if ids.mask is not None and ids.pad == ids.mask:
        report.add("error", "pad", "model.dllm.path", f"the pad id equals the mask id ({ids.mask}): left padding "
                   "would read as masks", "give the tokenizer a distinct pad token")
    if ids.mask is not None and ids.mask in ids.eos:
        report.add("error", "eos", "model.dllm.eos_token_ids", f"the mask id {ids.mask} is also an EOS id "
                   f"({list(ids.eos)})", "check model.dllm.mask_token_id and model.dllm.eos_token_ids")
    if not ids.eos:
        report.add("error", "eos", "model.dllm.eos_token_ids", "no EOS id: the tokenizer has no EOS token and the "
                   f"{family.name} family names none", "set model.dllm.eos_token_ids")
    elif any(not 0 <= i < side.head for i in ids.eos):
        report.add("error", "eos", "model.dllm.eos_token_ids", f"EOS ids {list(ids.eos)} include ids outside the "
                   f"dLLM's {side.head} logits", "check model.dllm.eos_token_ids")
    try:
        pattern = attention_pattern(family, side.config, spec.attention, spec.block_size)
    except ModelError as exc:
        message, _, fix = str(exc).partition("; fix: ")
        report.add("error", "attention", "model.dllm.attention", message, fix or None)
        return None
    report.facts["attention"] = str(pattern)
    return pattern


def _check_pair(dllm: _Side, ar: _Side, report: DryRunReport) -> None:
    mismatched = tokenizer_mismatches(dllm.tokenizer, ar.tokenizer)
    if mismatched:
        shown = ", ".join(f"{t!r}: AR {a} vs dLLM {'absent' if d is None else d}" for t, a, d in mismatched[:3])
        report.add("error", "pair_tokenizer", "model.ar.path", f"{len(mismatched)} AR token(s) have another id in "
                   f"the dLLM's tokenizer, e.g. {shown}", "pick an AR model trained with the dLLM's tokenizer "
                   "(e.g. Qwen2.5 for Dream)")
    if ar.head > dllm.head:
        report.add("error", "pair_vocab", "model.ar.path", f"the AR head has {ar.head} logits but the dLLM head "
                   f"only {dllm.head}", "pick an AR model whose vocabulary the dLLM head covers")
