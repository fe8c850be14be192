"""The decoding state and the values that flow between the hooks of one step.

Shapes: ``B`` rows, ``N`` canvas columns (left padding + prompt + ``max_new_tokens``), ``S`` query columns fed to
the model, ``V`` vocabulary size (the dLLM head width), ``K`` eligible positions of the step over all rows.
Every row shares the column where generation starts (``gen_start``), because prompts are left-padded.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any, Protocol, TypeVar, runtime_checkable

import torch

from dlm_decode.errors import InputError, with_fix
from dlm_decode.masks import BIDIRECTIONAL, AttentionPattern, position_ids_from_mask
from dlm_decode.selection import first_true_columns

T = TypeVar("T")

#: The row statistic of AR-model forwards (APD's verifier adds to it); RowStats reports it as ``ar_forwards``.
AR_FORWARDS = "ar_forwards"


@dataclass
class Window:
    """Which positions may be decided this step, and how much of the canvas the model sees.

    :ivar eligible: ``[B, N]`` bool, masked generated positions of unfinished rows that may be decided.
    :ivar input_end: the model sees canvas columns ``[0, input_end)``.
    :ivar block_start: ``[B]`` long, first column of each row's current block.
    :ivar block_end: ``[B]`` long, one past the last column of each row's current block.
    :ivar visible: optional ``[B, N]`` bool: keys each row may attend to (None: every column before
        ``input_end``); used to cut rows at different lengths without other rows changing their view.
    :ivar width: a bound, known on the host, on each row's eligible span (its last eligible column minus its first,
        plus one): the core then computes the output head at that many columns per row only (see
        :attr:`ModelInputs.outputs`); None: no bound (the head at every input column).
    """

    eligible: torch.Tensor
    input_end: int
    block_start: torch.Tensor
    block_end: torch.Tensor
    visible: torch.Tensor | None = None
    width: int | None = None


@dataclass
class ForwardPlan:
    """The columns whose logits the forward computes: queries ``[start, end)``.

    :ivar cache: None (keys = the queries), or a HF key/value cache holding columns ``[0, start)`` (and, for
        caches that keep a suffix, columns ``[end, key_end)``); the queries then attend to keys
        ``[0, key_end)`` and the forward writes their keys/values into the cache.
    :ivar key_end: one past the last key column when a cache is used (None: ``end``).
    """

    start: int
    end: int
    cache: Any = None
    key_end: int | None = None


@dataclass
class ModelInputs:
    """What the dLLM is called with.

    Shapes are those of the core's default inputs; a wrapper may append rows after the batch's ``B`` (see
    :func:`~dlm_decode.hookspecs.dlm_model_inputs`), whose logits rows then follow the batch's.

    :ivar input_ids: ``[B, S]`` long.
    :ivar position_ids: ``[B, S]`` long.
    :ivar attention_mask: ``[B, 1, S, K]`` bool, true where a query may attend to a key.
    :ivar start: canvas column of the first query; query ``i < end - start`` is canvas column ``start + i``.
    :ivar end: one past the last canvas column; queries past ``end - start`` are extra positions added by a
        wrapper (e.g. shadow positions), which read their logits with :meth:`ForwardOutput.extra`.
    :ivar outputs: ``[B, W]`` long, the queries (indices into the ``S`` columns) whose logits the step reads,
        per row (the core's default: the ``Window.width`` columns around each row's eligible positions); a wrapper
        that reads more appends its queries, or sets None. None: every query. A model whose ``selects_outputs`` is
        true computes its output head at these queries only.
    :ivar extras: model-specific inputs, name -> value, that the model's own hooks add and its adapter reads
        (DiffusionGemma's self-conditioning logits, which its adapter passes to the model as keyword arguments,
        and each row's block start); empty for the other models.
    """

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    attention_mask: torch.Tensor
    start: int
    end: int
    outputs: torch.Tensor | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def reading_all(self) -> ModelInputs:
        """These inputs with the logits of every query computed (``outputs`` None), for a strategy that reads
        every column of the span."""
        return replace(self, outputs=None)


@dataclass
class ForwardOutput:
    """The dLLM's answer for one step. Strategies read it through :meth:`at`, :meth:`columns` and :meth:`extra`,
    which hide its layout; reading a column the forward did not compute is reported by the loop (one flag in its
    step's host read) as an error naming the strategies.

    :ivar logits: ``[B, S, V]`` float, ``logits[:, i]`` predicts canvas column ``inputs.start + i`` (``outputs``
        None); or ``[B, W, V]``, ``logits[b, j]`` predicting query ``outputs[b, j]``.
    :ivar outputs: ``[B, W]`` long, the queries the logits were computed at (the model selected
        ``inputs.outputs``), or None.
    """

    logits: torch.Tensor
    inputs: ModelInputs
    outputs: torch.Tensor | None = None
    _reads: list[torch.Tensor] = field(default_factory=list, repr=False)

    @property
    def start(self) -> int:
        return self.inputs.start

    def at(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """Logits of canvas positions ``(rows[k], cols[k])``: ``[K]`` long each -> ``[K, V]``."""
        return self._queries(rows, cols - self.inputs.start if self.inputs.start else cols)

    def extra(self, rows: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """Logits of the extra positions a wrapper appended after the span (slot ``i``: query ``end - start + i``):
        ``[K]`` long rows and slots -> ``[K, V]``."""
        return self._queries(rows, slots + (self.inputs.end - self.inputs.start))

    def columns(self, first: int, last: int) -> torch.Tensor:
        """Logits of canvas columns ``[first, last)`` of every row: ``[B, last - first, V]``."""
        low, high = first - self.inputs.start, last - self.inputs.start
        if self.outputs is None:
            return self.logits[:, low:high]
        slots = self._slot_table[:, low:high]
        self._reads.append(slots)
        return self.logits.gather(1, slots.clamp(min=0)[..., None].expand(-1, -1, self.logits.shape[-1]))

    def _queries(self, rows: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        if self.outputs is None:
            return self.logits[rows, queries]
        slots = self._slot_table[rows, queries]
        self._reads.append(slots)
        return self.logits[rows, slots]

    @cached_property
    def _slot_table(self) -> torch.Tensor:
        """``[B, S]`` long, the logits column of each query, -1 where none was computed (needs ``outputs``)."""
        outputs = self.outputs
        assert outputs is not None
        table = torch.full(self.inputs.input_ids.shape, -1, dtype=torch.long, device=outputs.device)
        return table.scatter_(1, outputs, torch.arange(outputs.shape[1], device=outputs.device).expand_as(outputs))

    def missed(self) -> list[torch.Tensor]:
        """A bool scalar on the device, true when a read asked for a column the forward did not compute (in a list,
        empty when every column was computed or nothing was read)."""
        if not self._reads:
            return []
        return [(torch.cat([slots.flatten() for slots in self._reads]) < 0).any()]


@dataclass
class Proposal:
    """Candidate tokens for the eligible positions of a step.

    :ivar tokens: ``[B, N]`` long, the proposed token where eligible (the canvas token elsewhere).
    :ivar confidence: ``[B, N]`` float32, probability of the proposed token under the untempered model
        distribution where eligible, 0 elsewhere.
    :ivar rows: ``[K]`` long, rows of the eligible positions in row-major order.
    :ivar cols: ``[K]`` long, their canvas columns.
    :ivar logits: ``[K, V]`` float32, untempered logits of the eligible positions.
    :ivar temperature: the sampling temperature (0: argmax).
    :ivar noise: ``[K, V]`` float64 Gumbel noise the sample was drawn with (None when ``temperature == 0``),
        kept so that a verifier can draw a coupled sample of another distribution with the same noise.
    :ivar sampling_logits: ``[K, V]`` float32, the tempered and filtered logits the sample was drawn from
        (``tokens = argmax(sampling_logits + noise)``); None when ``temperature == 0``.
    :ivar scorer: the scoring backend (see :mod:`dlm_decode.ops`) used for the lazy scores below.
    """

    tokens: torch.Tensor
    confidence: torch.Tensor
    rows: torch.Tensor
    cols: torch.Tensor
    logits: torch.Tensor
    temperature: float
    noise: torch.Tensor | None
    scorer: Any
    sampling_logits: torch.Tensor | None = None

    def scatter(self, values: torch.Tensor, fill: float = 0.0) -> torch.Tensor:
        """Place per-eligible ``[K]`` values into a ``[B, N]`` tensor filled with ``fill``."""
        out = torch.full(self.tokens.shape, fill, dtype=values.dtype, device=values.device)
        out[self.rows, self.cols] = values
        return out

    @cached_property
    def margin(self) -> torch.Tensor:
        """``[B, N]`` float32, top-1 minus top-2 probability where eligible."""
        return self.scatter(self.scorer.margin(self.logits))

    @cached_property
    def entropy(self) -> torch.Tensor:
        """``[B, N]`` float32, entropy (nats) of the untempered distribution where eligible."""
        return self.scatter(self.scorer.entropy(self.logits))


@dataclass
class Decision:
    """What a step changes.

    :ivar commit: ``[B, N]`` bool, positions to fill (a subset of the window's eligible positions).
    :ivar tokens: ``[B, N]`` long, the tokens to write where ``commit``.
    :ivar revoke: optional ``[B, N]`` bool, committed generated positions to turn back into masks.
    :ivar edit: optional ``[B, N]`` bool, committed generated positions whose token is replaced by ``tokens``;
        they stay decided (token-to-token editing, LLaDA 2.1's). Not filled positions, and for a block-causal model
        only inside the row's current model block.
    :ivar hold: optional ``[B]`` bool, rows whose current model block stays current for the next step although
        this decision leaves no mask in it (a post-step in which a rule may edit the block again); a held row is
        unfinished. Only for a block-causal model.
    :ivar redraw: optional ``[B, N]`` bool, undecided positions whose token is replaced by ``tokens`` without
        deciding them (a subset of the window's eligible positions); only on a noise canvas
        (:attr:`DecodeState.noise_vocab`), whose undecided positions hold tokens: a uniform-noise sampler keeps its
        accepted samples there and re-noises the rest.
    """

    commit: torch.Tensor
    tokens: torch.Tensor
    revoke: torch.Tensor | None = None
    edit: torch.Tensor | None = None
    hold: torch.Tensor | None = None
    redraw: torch.Tensor | None = None


@dataclass(frozen=True)
class Relayout:
    """How the rows and columns of a batch map onto the batch that replaces it when rows leave or join at a step
    boundary (:meth:`DecodeState.regroup`, continuous batching).

    New column ``c`` holds old column ``c - left``. The new batch's rows are the kept old rows ``rows``, in that
    order, followed by ``joined`` rows that took no step yet.

    :ivar rows: ``[R]`` long, the old rows kept.
    :ivar joined: rows appended after them.
    :ivar left: columns added before the old canvas (negative: removed from its left; they were left padding of
        every kept row).
    :ivar width: the new canvas width ``N'``; the new columns past the old canvas are right padding of the kept rows.
    :ivar old_width: the old canvas width ``N``.
    """

    rows: torch.Tensor
    joined: int
    left: int
    width: int
    old_width: int

    @property
    def batch_size(self) -> int:
        return self.rows.shape[0] + self.joined

    def apply(self, tensor: torch.Tensor, fill: float | int | bool, dim: int = 1, width: int | None = None):
        """``tensor`` (rows on dim 0, canvas columns from column 0 on ``dim``) in the new layout: the kept rows with
        their columns moved by ``left``, ``fill`` in new columns and in the joined rows.

        :param width: the new length of ``dim`` (None: :attr:`width`); a tensor covering only the first columns of
            the canvas (a shorter key/value store) passes its own.
        """
        width = self.width if width is None else width
        kept = tensor.index_select(0, self.rows)
        shape = list(kept.shape)
        shape[0], shape[dim] = self.batch_size, width
        out = kept.new_full(shape, fill)
        first, last = max(0, -self.left), min(kept.shape[dim], width - self.left)  # old columns that stay
        if last > first:
            out.narrow(0, 0, kept.shape[0]).narrow(dim, first + self.left, last - first).copy_(
                kept.narrow(dim, first, last - first)
            )
        return out

    def rows_of(self, tensor: torch.Tensor, fill: float | int | bool) -> torch.Tensor:
        """A per-row ``[B, ...]`` tensor in the new layout: the kept rows, then ``fill`` for the joined ones."""
        kept = tensor.index_select(0, self.rows)
        return torch.cat([kept, kept.new_full((self.joined, *kept.shape[1:]), fill)])

    def columns_of(self, tensor: torch.Tensor, fresh: int) -> torch.Tensor:
        """A per-row ``[B]`` canvas column in the new layout: moved by ``left`` for the kept rows, ``fresh`` for the
        joined ones."""
        return self.rows_of(tensor + self.left, fresh)


@runtime_checkable
class RowMemory(Protocol):
    """A per-batch memory (:meth:`DecodeState.memory`) that can follow its rows when rows leave or join the batch.

    A batch whose every memory implements it can be regrouped (:meth:`DecodeState.regroup`): the server's
    continuous batching then adds requests to the running batch at any step. A memory that does not implement it
    keeps its batch closed to newcomers once it exists.
    """

    def relayout(self, change: Relayout, state: DecodeState) -> Any:
        """The memory of the regrouped batch ``state``, whose kept rows must decode exactly as before and whose
        joined rows as if this were their first step; None to drop it (created afresh at its next use, right for a
        memory derived from the layout alone)."""


@dataclass
class DecodeState:
    """Everything one batch of generation knows.

    :ivar canvas: ``[B, N]`` long token ids.
    :ivar attention_mask: ``[B, N]`` bool, false on left padding.
    :ivar position_ids: ``[B, N]`` long, positions ignoring left padding.
    :ivar gen_start: first generated column (the same for every row).
    :ivar mask_token_id: the dLLM's mask id.
    :ivar eos_token_ids: ``[E]`` long, ids that end a row.
    :ivar fill_token_id: written after a row's first EOS (when ``stop_at_eos``).
    :ivar excluded_ids: ``[X]`` long, ids the core sets to ``-inf`` in the logits before every proposal: the mask
        id, and ids the tokenizer cannot decode (a head wider than the vocabulary, e.g. Dream's 152,064 logits for
        151,667 tokens), so no strategy can propose them.
    :ivar generators: one ``torch.Generator`` per row, seeded per request.
    :ivar masked: ``[B, N]`` bool, the undecided positions: ``canvas == mask_token_id`` (only generated columns
        hold the mask id: prompts never do, see :meth:`build`); on a noise canvas, kept explicitly.
    :ivar filled: ``[B, N]`` bool, positions after a row's first EOS, written with ``fill_token_id`` (none unless
        ``stop_at_eos``).
    :ivar previous_canvas: ``[B, N]`` long, the canvas before the last step (see :attr:`changed`).
    :ivar finished: ``[B]`` bool, rows with no mask left (before their first EOS, when ``stop_at_eos``) and not
        held.
    :ivar held: ``[B]`` bool, rows whose last decision held their current model block open (:attr:`Decision.hold`).
    :ivar holding: whether the last decision had a ``hold`` (a Python bool: without one, :attr:`held` is all false
        and the core skips the held rows' special cases without reading the device).
    :ivar step: number of completed steps.
    :ivar commits: per step, ``[B]`` long commits (0 for rows already finished and, in a held row's post-steps,
        possibly 0; at least 1 for the other rows).
    :ivar active: per step, ``[B]`` bool, the rows unfinished at its start (those its forward decoded).
    :ivar row_stats: per-row statistics plugins publish, name -> ``[B]`` tensor (WINO's revocation counts, APD's
        AR forwards); each row's :class:`~dlm_decode.decoder.RowStats` reports them (:data:`AR_FORWARDS` in its own
        field, the others in ``extra``), and so do eval summaries. Plugins keep per-batch data with
        :meth:`memory`.
    :ivar first_index: the index of row 0's prompt in the caller's request (errors name prompts by it).
    :ivar stop_at_eos: after a row's first EOS, fill the rest of the row with ``fill_token_id`` and stop deciding
        it; false decodes every position, as the official LLaDA, Fast-dLLM, WINO and Dream decoders do (the
        generated ids still end at the first EOS).
    :ivar attention: the dLLM's :class:`~dlm_decode.masks.AttentionPattern`; the core builds every mask from it
        (:attr:`full_attention`) and, for a block-causal model, keeps every step inside each row's current model
        block (:meth:`model_block`).
    :ivar input_limit: one past the last column any forward may cover: the largest end of an unfinished row's
        current model block for a block-causal model (kept by the loop), the canvas width otherwise (the canvas
        width at construction).
    :ivar noise_vocab: None for a mask canvas (undecided positions hold the mask id). For a uniform-noise model
        (DiffusionGemma), ``V``: a *noise canvas*, whose undecided positions of each row's current model block hold
        tokens drawn uniformly from ``[0, V)`` by the row's generator when the row enters the block
        (:meth:`fill_noise`); :attr:`masked` is then kept explicitly ("undecided"), the mask id is only the
        placeholder of the blocks not entered yet and is not excluded from the logits, an EOS counts only where
        decided, a decision may :attr:`~Decision.redraw` undecided tokens, and revocations, edits and holds are
        refused.
    :ivar entered: ``[B]`` bool, on a noise canvas, the unfinished rows whose current model block changed in the
        last :meth:`apply` (the loop reads it in its host synchronisation and calls :meth:`fill_noise`).
    :ivar pad_token_id: the token of padding columns (None: ``fill_token_id`` for the columns :meth:`regroup` adds).

    A batch regrouped for continuous batching (:meth:`regroup`) may also pad rows on the right: a row whose
    ``max_new_tokens`` is smaller than another's ends before the canvas does. Like left padding, those columns are
    false in ``attention_mask`` (no query attends to them), are never masked (never eligible), and are never filled.
    """

    canvas: torch.Tensor
    attention_mask: torch.Tensor
    position_ids: torch.Tensor
    gen_start: int
    mask_token_id: int
    eos_token_ids: torch.Tensor
    fill_token_id: int
    excluded_ids: torch.Tensor
    generators: list[torch.Generator]
    masked: torch.Tensor
    filled: torch.Tensor
    previous_canvas: torch.Tensor
    finished: torch.Tensor
    step: int = 0
    commits: list[torch.Tensor] = field(default_factory=list)
    active: list[torch.Tensor] = field(default_factory=list)
    held: torch.Tensor = field(init=False)
    holding: bool = False
    row_stats: dict[str, torch.Tensor] = field(default_factory=dict)
    first_index: int = 0
    stop_at_eos: bool = True
    attention: AttentionPattern = BIDIRECTIONAL
    noise_vocab: int | None = None
    input_limit: int = field(init=False)
    entered: torch.Tensor | None = field(default=None, repr=False)
    pad_token_id: int | None = None
    _memories: dict[int, Any] = field(default_factory=dict, repr=False)
    _model_block: tuple[int, tuple[torch.Tensor, torch.Tensor]] | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.input_limit = self.canvas.shape[1]
        self.held = torch.zeros_like(self.finished)

    @classmethod
    def build(
        cls,
        prompts: list[list[int]],
        *,
        max_new_tokens: int,
        mask_token_id: int,
        pad_token_id: int,
        eos_token_ids: list[int],
        fill_token_id: int,
        seeds: Sequence[int],
        device: torch.device | str = "cpu",
        first_index: int = 0,
        excluded_token_ids: Sequence[int] = (),
        stop_at_eos: bool = True,
        attention: AttentionPattern = BIDIRECTIONAL,
        noise_vocab: int | None = None,
    ) -> DecodeState:
        """Left-pad ``prompts`` (token id lists) and append ``max_new_tokens`` masks to each.

        The state tells masked positions by their token, so only generated columns may hold the mask id. With
        ``noise_vocab`` (a noise canvas, see :attr:`noise_vocab`) the first block of every row is filled with
        noise from its generator, the generator's first draws.

        :param first_index: the index of ``prompts[0]`` in the caller's request, for error messages.
        :param excluded_token_ids: ids never proposed besides the mask id (see :attr:`excluded_ids`).
        :param stop_at_eos: see :attr:`stop_at_eos`.
        :param attention: see :attr:`attention`.
        :param noise_vocab: see :attr:`noise_vocab`.
        :raises ValueError: the pad or fill id is the mask id.
        :raises InputError: a prompt holds the mask id (on a mask canvas).
        """
        if mask_token_id in (pad_token_id, fill_token_id):
            raise ValueError(
                with_fix(
                    f"the mask id {mask_token_id} is also the pad ({pad_token_id}) or fill ({fill_token_id}) id",
                    "give the mask, pad and fill tokens distinct ids",
                )
            )
        for row, prompt in enumerate(prompts):
            if noise_vocab is None and mask_token_id in prompt:
                raise InputError(
                    f"prompt {first_index + row} contains the dLLM's mask token (id {mask_token_id}); the decoder "
                    "fills only the generated region, so a mask inside the prompt would stay there",
                    fix="remove the mask token from the prompt",
                )
        width = max(len(p) for p in prompts)
        pads = [width - len(prompt) for prompt in prompts]
        canvas = torch.tensor(
            [
                [pad_token_id] * pad + list(prompt) + [mask_token_id] * max_new_tokens
                for pad, prompt in zip(pads, prompts)
            ],
            dtype=torch.long,
            device=device,
        )
        real = torch.arange(canvas.shape[1], device=device) >= torch.tensor(pads, device=device)[:, None]
        generated = torch.arange(width, canvas.shape[1], device=device)
        generators = [torch.Generator(device=device).manual_seed(int(seed)) for seed in seeds]
        finished = torch.zeros(len(prompts), dtype=torch.bool, device=device)
        state = cls(
            canvas=canvas,
            attention_mask=real,
            position_ids=position_ids_from_mask(real),
            gen_start=width,
            mask_token_id=mask_token_id,
            eos_token_ids=torch.tensor(sorted(set(eos_token_ids)), dtype=torch.long, device=device),
            fill_token_id=fill_token_id,
            excluded_ids=torch.tensor(
                sorted({*excluded_token_ids, *([mask_token_id] if noise_vocab is None else [])}),
                dtype=torch.long,
                device=device,
            ),
            generators=generators,
            masked=canvas == mask_token_id
            if noise_vocab is None
            else torch.zeros_like(real).index_fill(1, generated, True),
            filled=torch.zeros_like(real),
            previous_canvas=canvas,
            finished=finished,
            first_index=first_index,
            stop_at_eos=stop_at_eos,
            attention=attention,
            noise_vocab=noise_vocab,
            pad_token_id=pad_token_id,
        )
        if noise_vocab is not None:
            state.fill_noise(list(range(len(prompts))))
            state.previous_canvas = state.canvas
        if attention.block_causal:  # the first generated column of every row is its first mask
            state.input_limit = int(state.model_block()[1].max())
        return state

    def memory(self, owner: object, create: Callable[[DecodeState], T]) -> T:
        """The per-batch memory of plugin object ``owner``: ``create(self)`` at its first call in this batch, the
        same object afterwards. This is where a strategy keeps what lives for one batch (a key/value store,
        counters, the schedule's position): the strategy object itself serves every batch of its decoder, and a
        new batch starts with no memory.
        """
        key = id(owner)  # the owner lives for the whole batch; plugin objects need not be hashable
        if key not in self._memories:
            self._memories[key] = create(self)
        return self._memories[key]

    @property
    def joinable(self) -> bool:
        """Whether :meth:`regroup` can take this batch: a bidirectional model on a mask canvas, and every memory a
        :class:`RowMemory` (true before the first step, when there is no memory yet)."""
        if self.attention.block_causal or self.noise_vocab is not None:
            return False
        return all(isinstance(memory, RowMemory) for memory in self._memories.values())

    def regroup(self, keep: Sequence[int], joining: DecodeState | None = None) -> DecodeState:
        """The batch of rows ``keep`` of this one (in that order) followed by the rows of ``joining``, a batch
        that took no step yet, for continuous batching: rows leave and join at a step boundary.

        Both batches are re-padded to a common layout: the longest prompt sets ``gen_start`` (more left padding) and
        the longest generation the width (right padding for shorter rows, see the class docstring). No row sees a
        padding column, so every row keeps the logits it would have alone. Every memory follows its rows
        (:meth:`RowMemory.relayout`); ``row_stats``, ``commits`` and ``active`` too (0 for the joining rows at
        earlier steps).
        ``step`` keeps counting this batch's steps.

        :raises ValueError: a block-causal model or a noise canvas, a memory that is no :class:`RowMemory` (see
            :attr:`joinable`), or a ``joining`` batch that took a step or decodes with other special ids.
        """
        if not self.joinable:
            raise ValueError(
                with_fix(
                    "this batch cannot be regrouped: "
                    + (
                        "its model is block-causal or has a noise canvas"
                        if self.attention.block_causal or self.noise_vocab is not None
                        else "a memory is no RowMemory"
                    ),
                    "wait until the batch finishes, and start the new rows as a batch of their own",
                )
            )
        if joining is not None and (joining.step or joining._memories or not self._compatible(joining)):
            raise ValueError(
                with_fix(
                    "only a batch that took no step yet, with the same special ids and EOS rule, can join",
                    "build the joining rows with the same decoder and join them before their first step",
                )
            )
        device = self.canvas.device
        rows = torch.as_tensor(list(keep), dtype=torch.long, device=device)
        parts = [(self, rows)]
        if joining is not None:
            parts.append((joining, torch.arange(joining.batch_size, device=device)))
        # the longest prompt and generation among the rows of each batch: one host read
        spans = torch.stack(
            [
                torch.stack([real[:, : batch.gen_start].sum(-1).max(), real[:, batch.gen_start :].sum(-1).max()])
                for batch, kept in parts
                if (real := batch.attention_mask.index_select(0, kept)).shape[0]
            ]
        ).tolist()
        gen_start = max(prompt for prompt, _ in spans)
        width = gen_start + max(generated for _, generated in spans)
        pad = self.fill_token_id if self.pad_token_id is None else self.pad_token_id
        moves = [(batch, Relayout(kept, 0, gen_start - batch.gen_start, width, batch.width)) for batch, kept in parts]

        def joined(name: str, fill: float | int | bool) -> torch.Tensor:
            return torch.cat([move.apply(getattr(batch, name), fill) for batch, move in moves])

        canvas, real = joined("canvas", pad), joined("attention_mask", False)
        state = DecodeState(
            canvas=canvas,
            attention_mask=real,
            position_ids=position_ids_from_mask(real),
            gen_start=gen_start,
            mask_token_id=self.mask_token_id,
            eos_token_ids=self.eos_token_ids,
            fill_token_id=self.fill_token_id,
            excluded_ids=self.excluded_ids,
            generators=[self.generators[row] for row in keep] + ([] if joining is None else joining.generators),
            masked=canvas == self.mask_token_id,
            filled=joined("filled", False),
            previous_canvas=joined("previous_canvas", pad),
            finished=torch.cat([batch.finished.index_select(0, kept) for batch, kept in parts]),
            step=self.step,
            stop_at_eos=self.stop_at_eos,
            attention=self.attention,
            pad_token_id=self.pad_token_id,
        )
        change = Relayout(rows, state.batch_size - rows.shape[0], gen_start - self.gen_start, width, self.width)
        state.commits = [change.rows_of(commits, 0) for commits in self.commits]
        state.active = [change.rows_of(active, False) for active in self.active]
        state.row_stats = {name: change.rows_of(values, 0) for name, values in self.row_stats.items()}
        for key, memory in self._memories.items():
            moved = memory.relayout(change, state)
            if moved is not None:
                state._memories[key] = moved
        return state

    def _compatible(self, other: DecodeState) -> bool:
        """Same special ids, EOS rule and attention pattern (what :meth:`regroup` keeps from this batch)."""
        same = (self.mask_token_id, self.fill_token_id, self.stop_at_eos, self.attention) == (
            other.mask_token_id,
            other.fill_token_id,
            other.stop_at_eos,
            other.attention,
        )
        return same and torch.equal(self.eos_token_ids, other.eos_token_ids)

    def add_row_stat(self, name: str, values: torch.Tensor) -> None:
        """Add ``values`` (``[B]``) to the row statistic ``name`` (created at 0; see :attr:`row_stats`)."""
        self.row_stats[name] = self.row_stats[name] + values if name in self.row_stats else values.clone()

    def gumbel_noise(self, counts: list[int], vocab: int) -> torch.Tensor:
        """Standard Gumbel noise ``[sum(counts), vocab]`` float64, ``counts[b]`` rows drawn from row ``b``'s
        generator (so a row's draws do not depend on its batch)."""
        parts = [
            -torch.empty((count, vocab), dtype=torch.float64, device=self.canvas.device)
            .exponential_(generator=generator)
            .log()
            for count, generator in zip(counts, self.generators)
            if count
        ]
        return torch.cat(parts)

    def noise_tokens(self, rows: list[int], size: int) -> torch.Tensor:
        """``[len(rows), size]`` long tokens drawn uniformly from ``[0, noise_vocab)``, ``size`` from each row's
        generator in the order of ``rows`` (so a row's draws do not depend on its batch); a noise canvas only."""
        assert self.noise_vocab is not None, "noise tokens are for noise canvases"
        device = self.canvas.device
        return torch.stack(
            [torch.randint(0, self.noise_vocab, (size,), generator=self.generators[row], device=device) for row in rows]
        )

    def fill_noise(self, rows: list[int]) -> None:
        """On a noise canvas, write tokens drawn uniformly from ``[0, noise_vocab)`` into the undecided columns of
        the current model block of each row of ``rows`` (for a bidirectional model, the generated region): one
        draw of the block's size from each row's generator, in the order of ``rows``, so a row's noise does not
        depend on its batch. Called when rows enter a block (:meth:`build`, the loop)."""
        size = self.attention.block_size or self.width - self.gen_start
        device = self.canvas.device
        draws = self.noise_tokens(rows, size)
        index = torch.tensor(rows, device=device)
        start, end = (bound[index] for bound in self.model_block())
        cols = start.clamp(min=self.gen_start)[:, None] + torch.arange(size, device=device)  # [R, size]
        inside = cols < end[:, None]
        cols = cols.clamp(max=self.width - 1)
        undecided = inside & self.masked[index[:, None], cols]
        current = self.canvas[index[:, None], cols]
        self.canvas = self.canvas.index_put((index[:, None], cols), torch.where(undecided, draws, current))

    def uniform_noise(self, counts: list[int]) -> torch.Tensor:
        """``[sum(counts)]`` float64 uniforms in [0, 1), ``counts[b]`` drawn from row ``b``'s generator."""
        parts = [
            torch.rand(count, dtype=torch.float64, generator=generator, device=self.canvas.device)
            for count, generator in zip(counts, self.generators)
            if count
        ]
        return torch.cat(parts)

    @property
    def batch_size(self) -> int:
        return self.canvas.shape[0]

    @property
    def width(self) -> int:
        """``N``, the number of canvas columns."""
        return self.canvas.shape[1]

    @cached_property
    def columns(self) -> torch.Tensor:
        """``[N]`` long, ``arange(N)`` on the canvas device."""
        return torch.arange(self.width, device=self.canvas.device)

    @cached_property
    def full_attention(self) -> torch.Tensor:
        """``[B, 1, N, N]`` bool, the mask of :attr:`attention` over the whole canvas (padding excluded)."""
        return self.attention.mask(self.attention_mask, self.gen_start)

    @cached_property
    def block_coordinates(self) -> torch.Tensor:
        """``[N]`` or ``[B, N]`` long, the coordinate in which block windows count their blocks so that they align
        with the model's (:meth:`~dlm_decode.masks.AttentionPattern.coordinates`): ``column - gen_start``, or the
        position for a model whose blocks start at position 0."""
        return self.attention.coordinates(self.attention_mask, self.gen_start)

    @cached_property
    def model_blocks(self) -> torch.Tensor:
        """``[B, N]`` long, the model's block id of every column (:meth:`AttentionPattern.blocks`)."""
        return self.attention.blocks(self.attention_mask, self.gen_start).expand_as(self.canvas)

    def model_block(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Each row's current model block, the one holding its first mask, or for a :attr:`held` row the one
        holding its last decided column before the first mask or filled position: ``start``, ``end`` ``[B]`` long
        columns (the whole canvas for a bidirectional model; meaningless for finished rows). Computed once per step:
        the masks change only in :meth:`apply`, which counts the step."""
        kept = self._model_block
        if kept is None or kept[0] != self.step:
            kept = self._model_block = (self.step, self._current_model_block())
        return kept[1]

    def _current_model_block(self) -> tuple[torch.Tensor, torch.Tensor]:
        blocks = self.model_blocks
        anchor = first_true_columns(self.masked, self.gen_start)
        if self.holding:  # a held row's block ends before its first undecided column (block-causal models only)
            held_at = first_true_columns(self.masked | self.filled, self.width) - 1
            anchor = torch.where(self.held, held_at, anchor)
        current = blocks.gather(1, anchor[:, None])  # [B, 1]
        inside = blocks == current
        start = first_true_columns(inside)
        return start, start + inside.sum(-1)

    def own_columns(self, window: Window) -> torch.Tensor:
        """``[B, N]`` bool, the columns whose logits a forward under ``window`` computes for each row whatever the
        rest of the batch: the row's ``visible`` keys (all columns before ``input_end`` without them), and for a
        block-causal model none past the row's current model block (a batch's forward covers later columns for the
        rows that have reached them). A strategy that keeps logits across steps reads only these, so that a row
        decodes as it would alone."""
        own = window.visible if window.visible is not None else (self.columns < window.input_end).expand_as(self.canvas)
        if self.attention.block_causal:
            own = own & (self.columns < self.model_block()[1][:, None])
        return own

    def is_eos(self, tokens: torch.Tensor) -> torch.Tensor:
        """Elementwise ``tokens in eos_token_ids`` (same shape, bool)."""
        if self.single_eos is not None:
            return tokens == self.single_eos
        return torch.isin(tokens, self.eos_token_ids)

    @cached_property
    def single_eos(self) -> int | None:
        """The EOS id when there is exactly one (compared as a Python number: no tensor read per step)."""
        return int(self.eos_token_ids[0]) if self.eos_token_ids.numel() == 1 else None

    @cached_property
    def generated_columns(self) -> torch.Tensor:
        """``[N]`` bool, true from ``gen_start`` on."""
        return self.columns >= self.gen_start

    @cached_property
    def prompt_has_eos(self) -> bool:
        """Whether some prompt holds an EOS id (a chat template's end of turn, say); read once per batch."""
        return bool(self.is_eos(self.canvas[:, : self.gen_start]).any())

    def after_first_eos(self, canvas: torch.Tensor | None = None) -> torch.Tensor:
        """``[..., B, N]`` bool, generated columns strictly after each row's first EOS token.

        Masked positions hold the mask id and filled ones lie after the first EOS, so neither moves it; an EOS
        inside a prompt does not count.

        :param canvas: ``[..., B, N]`` long, a canvas of this batch's layout (None: :attr:`canvas`), e.g. the canvas
            a decision would give, which a drafting strategy settles as :meth:`apply` would.
        """
        eos = self.is_eos(self.canvas if canvas is None else canvas)
        if self.prompt_has_eos:
            eos = eos & self.generated_columns
        if self.noise_vocab is not None:  # undecided positions of a noise canvas hold noise, not tokens
            eos = eos & ~self.masked
        # at least one EOS so far, not counting this column's first; never a right padding column (regroup)
        return (eos.cumsum(dim=-1) > eos) & self.attention_mask

    def apply(self, decision: Decision) -> torch.Tensor:
        """Write a (checked) decision into the canvas and settle EOS and termination.

        With :attr:`stop_at_eos`, positions after a row's first EOS become ``fill_token_id`` and count as decided;
        if a revocation or an edit removes that EOS, the filled tail becomes masked again. (On bool tensors ``a > b``
        is ``a & ~b`` in one op.)

        On a noise canvas the undecided positions are kept explicitly: commits decide, redraws rewrite undecided
        tokens, revocations, edits and holds are refused by the loop (and ignored here), and :attr:`entered` is set.

        :return: ``[B]`` long commits per row this step (not counting positions the EOS fill overwrote).
        """
        before = self.canvas
        if self.noise_vocab is not None:
            entered_from = self.model_block()[0]  # the blocks before the step (cached for this step)
            tail = self._write_noisy(decision)
        else:
            written = decision.commit if decision.edit is None else decision.commit | decision.edit
            self.canvas = torch.where(written, decision.tokens, self.canvas)
            if decision.revoke is not None or decision.edit is not None:  # reopen the filled tails: settled below
                reopened = self.filled if decision.revoke is None else decision.revoke | self.filled
                self.canvas = self.canvas.masked_fill(reopened, self.mask_token_id)
            tail = self.filled  # all false without stop_at_eos
            if self.stop_at_eos:
                tail = self.after_first_eos()
                self.canvas = self.canvas.masked_fill(tail, self.fill_token_id)
            self.masked = self.canvas == self.mask_token_id
        self.filled = tail
        self.previous_canvas = before
        # commits that survive: one after an EOS committed in the same step is filled, not generated; 0 for
        # finished rows (their windows are empty, checked after apply)
        commits = (decision.commit > tail).sum(-1)
        self.commits.append(commits)
        self.active.append(~self.finished)
        if decision.hold is not None:  # only a block the step left without masks stays open
            start, end = self.model_block()
            open_block = (self.masked & (self.columns >= start[:, None]) & (self.columns < end[:, None])).any(-1)
            self.held = decision.hold & ~open_block & ~self.finished
        elif self.holding:  # a decision without holds releases the rows held so far
            self.held = torch.zeros_like(self.held)
        self.holding = decision.hold is not None
        self.step += 1
        self.finished = ~self.masked.any(-1) & ~self.held
        if self.noise_vocab is not None:
            self.entered = (self.model_block()[0] != entered_from) & ~self.finished
        return commits

    def _write_noisy(self, decision: Decision) -> torch.Tensor:
        """:meth:`apply`'s writes on a noise canvas; returns the EOS tail."""
        written = decision.commit if decision.redraw is None else decision.commit | decision.redraw
        self.canvas = torch.where(written, decision.tokens, self.canvas)
        self.masked = self.masked & ~decision.commit
        tail = self.filled
        if self.stop_at_eos:
            tail = self.after_first_eos()
            self.canvas = self.canvas.masked_fill(tail, self.fill_token_id)
            self.masked = self.masked & ~tail
        return tail

    @property
    def nfe(self) -> torch.Tensor:
        """``[B]`` long, dLLM forwards each row took part in while unfinished (also its number of steps)."""
        if not self.active:
            return torch.zeros(self.batch_size, dtype=torch.long, device=self.canvas.device)
        return torch.stack(self.active).sum(0)

    @property
    def changed(self) -> torch.Tensor:
        """``[B, N]`` bool, positions whose token changed in the last step (commits, revocations, EOS fill)."""
        return self.canvas != self.previous_canvas

    def generated(self) -> list[list[int]]:
        """Each row's generated ids up to and including its first EOS (all of them if none); one host read."""
        eos_ids = self.eos_token_ids.tolist()
        return [ids[: first_of(ids, eos_ids) + 1] for ids in self.canvas[:, self.gen_start :].tolist()]


def first_of(ids: list[int], targets: list[int]) -> int:
    """Index of the first element of ``ids`` that is in ``targets`` (``len(ids)`` if none), found with
    ``list.index`` per target (a C search, no per-token Python)."""
    return min((ids.index(target) for target in targets if target in ids), default=len(ids))
