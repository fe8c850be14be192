"""The public entry point: a :class:`Decoder` built from a config, and what ``generate`` returns."""

from __future__ import annotations

import operator
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from dlm_decode.config.compose import ResolvedConfig, Source, load_config
from dlm_decode.config.schema import SEED_MAX, SEED_MIN
from dlm_decode.context import BuildContext
from dlm_decode.dispatch import Roles, decoder_manager
from dlm_decode.errors import ConfigError, InputError
from dlm_decode.loop import decode, run_steps, stable_ends
from dlm_decode.masks import BIDIRECTIONAL
from dlm_decode.models.adapter import DiffusionLM
from dlm_decode.models.dllm import adapt, load_dllm
from dlm_decode.models.fingerprint import weights_fingerprint
from dlm_decode.ops import get_scorer
from dlm_decode.plugins import get_registry, tracing_enabled
from dlm_decode.registry import ROLES, StrategyRegistry
from dlm_decode.state import AR_FORWARDS, DecodeState, first_of


@dataclass
class RowStats:
    """Per-prompt decoding statistics.

    :ivar nfe: dLLM forwards while the row was unfinished. Each loop step makes one, so it is also the number of
        steps the row took (``len(commits_per_step)``). Records written by earlier versions also have a ``steps``
        key, always equal to ``nfe``; readers ignore it.
    :ivar ar_forwards: AR-model forwards (verifiers such as APD).
    :ivar generated_tokens: generated tokens up to and including the first EOS.
    :ivar tokens_per_forward: ``generated_tokens / nfe``.
    :ivar wall_s: seconds from the start of its batch until the row finished.
    :ivar commits_per_step: tokens committed at each of its steps (not counting those an EOS committed in the same
        step overwrote with the fill token).
    :ivar extra: statistics published by plugins through ``state.row_stats`` (e.g. ``wino.revocations``).
    """

    nfe: int
    ar_forwards: int
    generated_tokens: int
    tokens_per_forward: float
    wall_s: float
    commits_per_step: list[int]
    extra: dict[str, float] = field(default_factory=dict)


@dataclass
class GenerationOutput:
    """What :meth:`Decoder.generate` returns, one entry per prompt, in order.

    :ivar texts: decoded completions (up to the first EOS, special tokens removed).
    :ivar token_ids: generated ids up to and including the first EOS.
    :ivar stats: per-row statistics.
    :ivar config_hash: hash of the resolved config that produced them.
    """

    texts: list[str]
    token_ids: list[list[int]]
    stats: list[RowStats]
    config_hash: str
    prompts: list[str] = field(default_factory=list)

    def records(self) -> list[dict[str, Any]]:
        """One JSON-ready dict per prompt."""
        return [
            {"prompt": prompt, "text": text, "token_ids": ids, **asdict(stats), "config_hash": self.config_hash}
            for prompt, text, ids, stats in zip(self.prompts, self.texts, self.token_ids, self.stats)
        ]


class StableText:
    """The text of one row's stable prefix, handed out piece by piece as it grows: the generated ids before
    :func:`~dlm_decode.loop.stable_ends` (decided for good, even under a revoking verification), up to and
    including the first EOS, as :meth:`DecodeState.generated` cuts them. A piece is handed out only while the text
    extends what was handed out before, and not while it ends in an incomplete character (U+FFFD), so the pieces
    concatenate to the final text."""

    def __init__(self, dllm: DiffusionLM):
        self.dllm = dllm
        self.eos_ids = list(dllm.eos_token_ids)
        self.emitted = ""

    def piece(self, stable_ids: list[int]) -> str:
        """The new text of the stable generated ids ``stable_ids`` ("" when nothing new can be handed out)."""
        text = self.dllm.decode(stable_ids[: first_of(stable_ids, self.eos_ids) + 1])
        if len(text) <= len(self.emitted) or not text.startswith(self.emitted) or text.endswith("\ufffd"):
            return ""
        piece, self.emitted = text[len(self.emitted) :], text
        return piece


def _int_argument(value: Any, name: str, fix: str) -> int:
    """``value`` as an int (anything with ``__index__`` but a bool), or :class:`InputError` naming ``name``."""
    if not isinstance(value, bool):
        try:
            return operator.index(value)
        except TypeError:
            pass
    raise InputError(f"{name} must be an int, got {value!r} ({type(value).__name__})", fix=fix)


def _count_argument(value: int | None, name: str, default: int) -> int:
    """A ``generate``/``stream`` count argument (``max_new_tokens``, ``batch_size``): ``default`` (the config's
    ``generation.<name>``) when None, else an int of at least 1."""
    if value is None:
        return default
    fix = f"pass an int of at least 1, or leave {name} out to use generation.{name} ({default})"
    value = _int_argument(value, name, fix)
    if value < 1:
        raise InputError(f"{name} must be at least 1, got {value}", fix=fix)
    return value


def check_seed(value: Any, name: str, fix: str) -> int:
    """A generator seed: an int that ``torch.Generator.manual_seed`` accepts, or :class:`InputError` naming
    ``name`` (how the seed was made) with ``fix``."""
    value = _int_argument(value, name, fix)
    if not SEED_MIN <= value <= SEED_MAX:
        raise InputError(
            f"{name} is {value}, outside [-2**63, 2**64 - 1] (the seeds torch.Generator.manual_seed accepts)", fix=fix
        )
    return value


class Decoder:
    """A diffusion-LM decoder: one strategy per role over a loaded dLLM.

    Build it with :meth:`from_config` (a model loaded as the config says) or :meth:`from_model` (a transformers
    model already in memory); call :meth:`generate` or :meth:`stream`.
    """

    def __init__(
        self,
        config: ResolvedConfig,
        dllm: DiffusionLM | None = None,
        registry: StrategyRegistry | None = None,
        observers: Sequence[object] = (),
    ):
        self.config = config
        self.registry = registry or get_registry()
        self.dllm = dllm or load_dllm(config.config.model.dllm)
        self.scorer = get_scorer(config.config.generation.kernels, key="generation.kernels")
        context = BuildContext(resolved=config, dllm=self.dllm, scorer=self.scorer)
        refused = getattr(self.dllm, "refused_strategies", {})  # (role, name) -> why, for a model that has some
        for role in ROLES:
            name = config.strategies[role][0]
            if (role, name) in refused:
                family = getattr(getattr(self.dllm, "family", None), "name", "this")
                raise ConfigError(
                    f"decoder.{role}",
                    f"{name!r} does not apply to the {family} model: {refused[role, name]}",
                    fix=f"choose another decoder.{role} (docs/block-diffusion.md lists what applies)",
                )
        self.strategies = {}
        for role in ROLES:
            name, params = config.strategies[role]
            spec = self.registry.get(role, name)
            self.strategies[role] = (spec, spec.factory(params, context))
        self.models = [getattr(self.dllm, "model", None), *context.loaded]
        # a model may bring hooks of its own (DiffusionGemma's self-conditioning and forward extras)
        self.manager = decoder_manager(self.strategies, (*getattr(self.dllm, "hooks", ()), *observers))
        self.roles = Roles(
            self.manager, {role: spec for role, (spec, _) in self.strategies.items()}, direct=not tracing_enabled()
        )

    @classmethod
    def from_config(
        cls, source: Source | Sequence[Source] | ResolvedConfig, overrides: Sequence[str] = (), **kwargs: Any
    ) -> Decoder:
        """Build a decoder from YAML paths / mappings plus dotted ``overrides`` (or a resolved config)."""
        config = (
            source if isinstance(source, ResolvedConfig) else load_config(source, overrides, kwargs.get("registry"))
        )
        return cls(config, **kwargs)

    @classmethod
    def from_model(
        cls,
        model: Any,
        tokenizer: Any,
        source: Source | Sequence[Source] | ResolvedConfig = (),
        overrides: Sequence[str] = (),
        **kwargs: Any,
    ) -> Decoder:
        """Build a decoder around a transformers model already in memory (trained or edited in this process).

        The config (``source`` and ``overrides``, as for :meth:`from_config`) chooses the strategies and the
        generation settings; of ``model.dllm`` only what reads the model applies (``family``, ``attention``,
        ``block_size``, ``chat_template``, ``mask_token_id``, ``eos_token_ids``): the weights stay where they are,
        so ``path``, ``dtype``, ``device`` and the other loading keys are not used.

        :param model: a transformers ``PreTrainedModel`` (for a bidirectional dLLM on a causal architecture,
            built with ``config.is_causal = False``). Another model needs an adapter implementing the
            :class:`~dlm_decode.models.adapter.DiffusionLM` interface, passed as ``Decoder(config, dllm=adapter)``.
        :param tokenizer: its tokenizer.
        :raises ModelError: for a model that is no transformers model with a config (a plain ``torch.nn.Module``),
            a missing tokenizer, or special ids the model cannot use (as loading from a config would).
        """
        config = (
            source if isinstance(source, ResolvedConfig) else load_config(source, overrides, kwargs.get("registry"))
        )
        return cls(config, dllm=adapt(model, tokenizer, config.config.model.dllm), **kwargs)

    @property
    def weights_hash(self) -> str:
        """A short hash of the weights of every model this decoder loaded (the dLLM, an AR verifier): results
        decoded with other weights under the same config (a retrained checkpoint) do not mix with these.
        Recomputed at each read (milliseconds), so weights changed in place are noticed."""
        return weights_fingerprint(self.models)

    @property
    def generation(self):
        return self.config.config.generation

    def _request(
        self, prompts: Any, max_new_tokens: Any, seeds: Any, batch_size: Any = None, seed_name: str = "seeds[{}]"
    ) -> tuple[list[str], int, list[int], int]:
        """Check the arguments of :meth:`generate` / :meth:`stream` and fill in the config's defaults.

        :param seed_name: how a seed is named in errors, formatted with its index (``stream`` passes ``seed``).
        :returns: ``(prompts, max_new_tokens, seeds, batch_size)``, with one seed per prompt.
        :raises InputError: naming the argument (or prompt index), the value and the fix.
        """
        if isinstance(prompts, str):
            prompts = [prompts]
        try:
            prompts = list(prompts)
        except TypeError:
            raise InputError(
                f"prompts must be a string or a sequence of strings, got {prompts!r}", fix='pass e.g. ["sort 3 1 2"]'
            ) from None
        if not prompts:
            raise InputError("no prompts given", fix="pass at least one prompt")
        for index, prompt in enumerate(prompts):
            if not isinstance(prompt, str):
                raise InputError(
                    f"prompt {index} is {prompt!r} ({type(prompt).__name__}), not a string",
                    fix="pass every prompt as a str",
                )
            if not prompt.strip():
                raise InputError(f"prompt {index} is empty", fix="give every prompt some text")
        max_new_tokens = _count_argument(max_new_tokens, "max_new_tokens", self.generation.max_new_tokens)
        batch_size = _count_argument(batch_size, "batch_size", self.generation.batch_size)
        if seeds is None:
            seeds = [
                check_seed(
                    self.generation.seed + i,
                    f"generation.seed + {i} (the seed of prompt {i})",
                    "lower generation.seed, or pass seeds",
                )
                for i in range(len(prompts))
            ]
        else:
            try:
                seeds = list(seeds)
            except TypeError:
                raise InputError(
                    f"seeds must be a sequence of ints, got {seeds!r}", fix="give one seed per prompt"
                ) from None
            if len(seeds) != len(prompts):
                raise InputError(f"got {len(seeds)} seeds for {len(prompts)} prompts", fix="give one seed per prompt")
            seeds = [
                check_seed(seed, seed_name.format(i), "give every seed as an int in [-2**63, 2**64 - 1]")
                for i, seed in enumerate(seeds)
            ]
        return prompts, max_new_tokens, seeds, batch_size

    def _state(self, prompts: list[str], first_index: int, max_new_tokens: int, seeds: Sequence[int]) -> DecodeState:
        """The initial state of one batch of prompts checked by :meth:`_request` (``first_index``: the index of
        ``prompts[0]`` in the request, for errors)."""
        try:
            encoded = self.dllm.encode(prompts)
        except Exception as exc:  # the tokenizer cannot encode some text (e.g. a character outside its vocabulary)
            raise self._untokenizable(prompts, first_index, exc) from exc
        return self.initial_state(encoded, first_index, max_new_tokens, seeds)

    def initial_state(
        self, encoded: list[list[int]], first_index: int, max_new_tokens: int, seeds: Sequence[int]
    ) -> DecodeState:
        """The initial state of one batch of prompts given as token ids (checked against the model's context), as
        :meth:`generate` builds it: the entry point of callers that tokenize themselves (the server, benchmarks).

        :param encoded: each prompt's token ids (chat template applied).
        :param first_index: the index of ``encoded[0]`` in the caller's request, for errors.
        :param seeds: one generator seed per prompt.
        :raises InputError: a prompt does not fit the model's context with ``max_new_tokens``.
        """
        noise_vocab = getattr(self.dllm, "noise_vocab", None)
        block = getattr(getattr(self.dllm, "attention", None), "block_size", None)
        if noise_vocab is not None and block and max_new_tokens % block:
            raise InputError(
                f"max_new_tokens is {max_new_tokens}; a uniform-noise model ({self.dllm.family.name}) draws and "
                f"decodes whole blocks of {block} tokens",
                fix=f"use a multiple of {block} for max_new_tokens (generation.max_new_tokens)",
            )
        for offset, ids in enumerate(encoded):
            index = first_index + offset
            if len(ids) + max_new_tokens > self.dllm.max_context:
                raise InputError(
                    f"prompt {index} has {len(ids)} tokens; with generation.max_new_tokens={max_new_tokens} the "
                    f"canvas needs {len(ids) + max_new_tokens} > the model's context of {self.dllm.max_context}",
                    fix="shorten the prompt or lower generation.max_new_tokens",
                )
        return DecodeState.build(
            encoded,
            max_new_tokens=max_new_tokens,
            mask_token_id=self.dllm.mask_token_id,
            pad_token_id=self.dllm.pad_token_id,
            eos_token_ids=self.dllm.eos_token_ids,
            fill_token_id=self.dllm.fill_token_id,
            seeds=seeds,
            device=self.dllm.device,
            first_index=first_index,
            excluded_token_ids=self.dllm.undecodable_ids,
            stop_at_eos=self.generation.stop_at_eos,
            attention=getattr(self.dllm, "attention", BIDIRECTIONAL),
            noise_vocab=noise_vocab,
        )

    def _untokenizable(self, prompts: list[str], first_index: int, exc: Exception) -> InputError:
        """The error for a batch the dLLM's tokenizer failed on: names the first prompt it cannot encode and the
        characters of that prompt it cannot encode alone (encoded one at a time: only on this error path)."""

        def encodes(text: str) -> bool:
            try:
                self.dllm.encode([text])
            except Exception:
                return False
            return True

        failure = f"({type(exc).__name__}: {exc})"
        offset = next((i for i, prompt in enumerate(prompts) if not encodes(prompt)), None)
        if offset is None:  # each prompt encodes alone: the batch as a whole failed
            return InputError(
                f"prompts {first_index}-{first_index + len(prompts) - 1} cannot be tokenized together "
                f"by the dLLM's tokenizer {failure}",
                fix="check the tokenizer (e.g. with generation.batch_size=1)",
            )
        characters = set(prompts[offset])
        unknown = sorted(char for char in characters if not encodes(char))
        if not unknown or len(unknown) == len(characters):  # not a matter of characters (e.g. a failing template)
            return InputError(
                f"prompt {first_index + offset} cannot be tokenized by the dLLM's tokenizer {failure}",
                fix="check the prompt against the tokenizer and its chat template (model.dllm.chat_template)",
            )
        return InputError(
            f"prompt {first_index + offset} cannot be tokenized by the dLLM's tokenizer {failure}; "
            f"characters it cannot encode: {''.join(unknown)!r}",
            fix="remove or replace those characters, or use a model whose tokenizer covers them",
        )

    def _max_steps(self, max_new_tokens: int) -> int:
        return self.generation.max_steps or 4 * max_new_tokens

    def generate(
        self,
        prompts: str | Sequence[str],
        *,
        max_new_tokens: int | None = None,
        seeds: Sequence[int] | None = None,
        batch_size: int | None = None,
    ) -> GenerationOutput:
        """Decode ``prompts`` in batches of ``generation.batch_size``.

        :param max_new_tokens: override ``generation.max_new_tokens`` (an int of at least 1).
        :param seeds: one seed per prompt (default: ``generation.seed + index``), so a row's sample does not
            depend on the batch it lands in; ints in ``[-2**63, 2**64 - 1]``.
        :param batch_size: override ``generation.batch_size`` (an int of at least 1).
        :raises InputError: for a prompt that is not a non-empty string or is too long, or a bad argument.
        """
        prompts, max_new_tokens, seeds, batch_size = self._request(prompts, max_new_tokens, seeds, batch_size)
        texts, ids, stats = [], [], []
        for first in range(0, len(prompts), batch_size):
            chunk = prompts[first : first + batch_size]
            state = self._state(chunk, first, max_new_tokens, seeds[first : first + batch_size])
            step_ends = decode(self.roles, self.dllm, state, self._max_steps(max_new_tokens))
            commits = torch.stack(state.commits, dim=1).tolist()  # [B][steps]
            extra = {
                name: [float(v) for v in values.tolist()]
                for name, values in state.row_stats.items()
                if name != AR_FORWARDS
            }
            ar_forwards = state.row_stats.get(AR_FORWARDS, torch.zeros_like(state.finished, dtype=torch.long))
            rows = zip(state.generated(), state.nfe.tolist(), ar_forwards.tolist(), commits)
            for row, (generated, nfe, ar_forwards, row_commits) in enumerate(rows):
                ids.append(generated)
                texts.append(self.dllm.decode(generated))
                stats.append(
                    RowStats(
                        nfe=nfe,
                        ar_forwards=ar_forwards,
                        generated_tokens=len(generated),
                        tokens_per_forward=len(generated) / max(nfe, 1),
                        wall_s=step_ends[nfe - 1],
                        commits_per_step=row_commits[:nfe],
                        extra={name: values[row] for name, values in extra.items()},
                    )
                )
        return GenerationOutput(texts=texts, token_ids=ids, stats=stats, config_hash=self.config.hash, prompts=prompts)

    def stream(self, prompt: str, *, max_new_tokens: int | None = None, seed: int | None = None) -> Iterator[str]:
        """Yield pieces of text as the stable left-to-right prefix of ``prompt``'s completion grows (see
        :class:`StableText`): the pieces concatenate to the final text, also under a revoking verification (WINO),
        whose current block is held back until the row leaves it. The arguments are checked as :meth:`generate`'s
        are (``seed`` defaults to ``generation.seed``).
        """
        prompts, max_new_tokens, seeds, _ = self._request(
            [prompt], max_new_tokens, None if seed is None else [seed], seed_name="seed"
        )
        state = self._state(prompts, 0, max_new_tokens, seeds)
        text = StableText(self.dllm)
        steps = run_steps(self.roles, self.dllm, state, self._max_steps(max_new_tokens))
        while True:
            with torch.inference_mode():  # only while the loop runs, not while the caller holds a piece
                step = next(steps, None)
                if step is None:
                    break
                end = stable_ends(state, step.window, self.roles.revokes)[:1]
                read = torch.cat([end, state.canvas[0, state.gen_start :]]).tolist()  # one host read per step
                ids = read[1 : 1 + max(0, read[0] - state.gen_start)]
            piece = text.piece(ids)
            if piece:
                yield piece
