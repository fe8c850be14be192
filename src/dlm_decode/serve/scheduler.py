"""Step-level continuous batching: one thread owns the running batches and steps them.

A request becomes one :class:`Job` per choice (a prompt's token ids, its ``max_tokens``, seed and stop strings).
The :class:`Scheduler` thread keeps *cohorts*: a cohort is one running :class:`~dlm_decode.state.DecodeState` of
one decoder (one sampling variant). Between two steps of a cohort, its finished, cancelled and failed rows leave
and waiting jobs of the same variant join (:meth:`DecodeState.regroup`), up to ``max_batch`` rows over all cohorts.
A cohort whose state cannot be regrouped (:attr:`DecodeState.joinable` false: a strategy memory that is no
:class:`~dlm_decode.state.RowMemory`, or a block-causal model) takes no newcomer: its variant's jobs wait until it
drains, then start together as the next cohort. With ``join=False`` every cohort is a fixed batch that way.

Every row decodes as it would alone (temperature 0: the tokens of a solo ``Decoder.generate``), since a row's view
of the canvas, its memory and its generator follow it through the regroups. A step that raises fails the request
alone: every job of the failing cohort is started again as a cohort of its own (deterministic, so its streamed
text is not repeated), and the one that fails alone gets the error.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from dlm_decode.decoder import Decoder, StableText
from dlm_decode.errors import DecodeError, DlmDecodeError
from dlm_decode.loop import run_step, stable_ends
from dlm_decode.state import DecodeState, first_of


@dataclass
class Piece:
    """Newly decided text of a streaming job (final: never taken back)."""

    text: str


@dataclass
class Done:
    """A finished job: its text (cut before the first stop string), generated ids up to and including the first
    EOS, and why it ended (``stop``: an EOS or a stop string, ``length``: ``max_tokens`` reached)."""

    text: str
    token_ids: list[int]
    finish_reason: str
    completion_tokens: int
    steps: int


@dataclass
class Failed:
    """A job the decoder failed on; ``error`` names the strategy and the fix."""

    error: Exception


Event = Piece | Done | Failed


@dataclass
class Job:
    """One row to decode and where its events go.

    :ivar ids: the prompt's token ids (chat template applied already).
    :ivar emit: called from the scheduler thread with each :data:`Event` (must not block).
    :ivar variant: the decoder the job runs with (its sampling settings); jobs of one variant may share a batch.
    :ivar stream: emit :class:`Piece` events as the stable text grows.
    """

    ids: list[int]
    max_tokens: int
    seed: int
    emit: Callable[[Event], None]
    variant: Decoder
    stream: bool = False
    stop: tuple[str, ...] = ()
    cancelled: bool = False
    isolated: bool = False
    steps: int = 0
    text: StableText | None = None
    sent: int = 0  # characters of the stable text handed out as pieces

    def cancel(self) -> None:
        """Free the row at its cohort's next step boundary (thread-safe: one flag)."""
        self.cancelled = True


@dataclass
class Cohort:
    """One running batch of one decoder: ``jobs[i]`` is row ``i`` of ``state``; ``joining`` join before the next
    step. ``isolated``: a cohort of one job rerun alone after its batch failed (takes no newcomer)."""

    decoder: Decoder
    jobs: list[Job] = field(default_factory=list)
    joining: list[Job] = field(default_factory=list)
    state: DecodeState | None = None
    isolated: bool = False

    @property
    def rows(self) -> int:
        return len(self.jobs) + len(self.joining)


class Scheduler:
    """The continuous-batching loop (see the module docstring), on a thread of its own.

    :param max_batch: rows decoded at once over all cohorts.
    :param join: let jobs join a running batch (false: fixed batches, for comparison).
    """

    def __init__(self, max_batch: int = 16, join: bool = True):
        self.max_batch = max_batch
        self.join = join
        self.pending: list[Job] = []
        self.cohorts: list[Cohort] = []
        self.lock = threading.Condition()
        self.closing = False
        self.thread = threading.Thread(target=self._run, name="dlm-decode-scheduler", daemon=True)
        self.counts = {"steps": 0, "finished": 0, "cancelled": 0, "failed": 0, "joined": 0}

    def start(self) -> Scheduler:
        self.thread.start()
        return self

    def submit(self, jobs: list[Job]) -> None:
        """Queue ``jobs``; they join at the next step boundary that has room."""
        with self.lock:
            if self.closing:
                raise DlmDecodeError("the server is shutting down", fix="send the request to another server")
            self.pending.extend(jobs)
            self.lock.notify()

    def close(self, timeout: float | None = None) -> None:
        """Finish the running and queued jobs (for at most ``timeout`` seconds), then stop the thread; jobs still
        running then fail."""
        with self.lock:
            self.closing = True
            self.lock.notify()
        self.thread.join(timeout)
        with self.lock:
            leftover = self.pending + [job for cohort in self.cohorts for job in cohort.jobs + cohort.joining]
            self.pending, self.cohorts = [], []
        for job in leftover:
            job.emit(Failed(DecodeError("the server shut down before the request finished", fix="send it again")))

    def status(self) -> dict[str, Any]:
        with self.lock:
            return {
                "running": sum(cohort.rows for cohort in self.cohorts),
                "queued": len(self.pending),
                "cohorts": len(self.cohorts),
                **self.counts,
            }

    # --- the scheduler thread ------------------------------------------------------------------------------------

    def _run(self) -> None:
        with torch.inference_mode():
            while True:
                with self.lock:
                    self._admit()
                    while not self.cohorts:
                        if self.closing and not self.pending:
                            return
                        self.lock.wait()
                        self._admit()
                    cohorts = list(self.cohorts)
                for cohort in cohorts:
                    self._advance(cohort)

    def _admit(self) -> None:
        """Move pending jobs into cohorts while there is room (FIFO; a job whose variant's cohort is closed to
        newcomers waits, and lets later jobs of other variants pass). Holds the lock."""
        room = self.max_batch - sum(cohort.rows for cohort in self.cohorts)
        waiting = []
        for job in self.pending:
            if job.cancelled:
                continue
            if room <= 0:
                waiting.append(job)
                continue
            open_cohort = None
            if not job.isolated:
                running = [c for c in self.cohorts if c.decoder is job.variant and not c.isolated]
                if not running:
                    open_cohort = Cohort(job.variant)
                    self.cohorts.append(open_cohort)
                elif running[0].state is None or (self.join and running[0].state.joinable):
                    open_cohort = running[0]
            else:
                open_cohort = Cohort(job.variant, isolated=True)
                self.cohorts.append(open_cohort)
            if open_cohort is None:
                waiting.append(job)
                continue
            open_cohort.joining.append(job)
            room -= 1
        self.pending = waiting

    def _advance(self, cohort: Cohort) -> None:
        """Regroup ``cohort`` (rows leave, jobs join), run one step, and report what the step decided."""
        decoder = cohort.decoder
        try:
            if not self._regroup(cohort):
                return
            state = cohort.state
            assert state is not None  # set by _regroup
            step = run_step(decoder.roles, decoder.dllm, state)
        except Exception as exc:  # noqa: BLE001 - a strategy or the model failed: isolate the failing request
            self._isolate(cohort, exc)
            return
        self.counts["steps"] += 1
        state.commits.clear()  # the scheduler counts each row's steps itself: a running batch keeps no history
        state.active.clear()
        self._report(cohort, state, stable_ends(state, step.window, decoder.roles.revokes))

    def _regroup(self, cohort: Cohort) -> bool:
        """Drop the rows that left and add the joining jobs (one fresh batch per ``max_tokens``); False when the
        cohort is over (and removed). A batch that cannot be regrouped keeps its rows until it drains."""
        leaving = [job.cancelled or job.steps < 0 for job in cohort.jobs]
        keep = [row for row, left in enumerate(leaving) if not left]
        joining = [job for job in cohort.joining if not job.cancelled]  # cohort.joining: this thread's alone
        state = cohort.state
        closed = state is not None and not (self.join and state.joinable)
        if not keep or not closed:  # the cancelled rows leave now
            self.counts["cancelled"] += sum(job.cancelled and job.steps >= 0 for job in cohort.jobs)
        if not keep and not joining:
            with self.lock:
                self.cohorts.remove(cohort)
                self.lock.notify()
            if cohort.state is not None:
                cohort.decoder.roles.generation_end(cohort.state)
            return False
        if closed:
            return True  # closed (or a fixed batch): its finished and cancelled rows stay, taking no commits
        if state is not None and not keep:  # every row left: the joining jobs start a batch of their own
            cohort.decoder.roles.generation_end(state)
            state = None
        jobs = [cohort.jobs[row] for row in keep]
        rows = keep  # the rows of `state` the next regroup keeps
        groups: dict[int, list[Job]] = {}
        for job in joining:
            groups.setdefault(job.max_tokens, []).append(job)
        for max_tokens, group in groups.items():
            fresh = cohort.decoder.initial_state([job.ids for job in group], 0, max_tokens, [job.seed for job in group])
            if state is None:
                cohort.decoder.roles.bind()
                cohort.decoder.roles.generation_start(fresh)
                state = fresh
            else:
                self.counts["joined"] += len(group) if state.step else 0  # into a batch that decodes already
                state = state.regroup(rows, fresh)
            jobs += group
            rows = list(range(len(jobs)))
        if state is not None and rows is keep and len(keep) < len(cohort.jobs):
            state = state.regroup(keep)  # rows left, none joined
        for job in joining:
            if job.stream and job.text is None:
                job.text = StableText(cohort.decoder.dllm)
        cohort.state, cohort.jobs, cohort.joining = state, jobs, []
        return True

    def _report(self, cohort: Cohort, state: DecodeState, ends: torch.Tensor) -> None:
        """After a step: count each unfinished row's step, hand out new stable text, answer finished rows (they
        leave at the next step boundary), fail rows past their step budget."""
        jobs = cohort.jobs
        # one host read: per row its finished flag, its stable end, then its generated columns
        read = torch.cat([state.finished[:, None].long(), ends[:, None], state.canvas[:, state.gen_start :]], 1)
        rows = read.tolist()
        finished = [row[0] for row in rows]
        stable = [row[1] for row in rows]
        generated = [row[2:] for row in rows]
        for row, job in enumerate(jobs):
            if job.steps < 0 or job.cancelled:
                continue
            job.steps += 1
            ids = generated[row][: job.max_tokens]
            if finished[row]:
                self._finish(cohort, job, ids)
                continue
            if job.stream:
                self._stream(cohort, job, ids[: max(0, stable[row] - state.gen_start)])
            self._check_budget(cohort, job)

    def _stream(self, cohort: Cohort, job: Job, stable_ids: list[int]) -> None:
        """Emit the new stable text of a streaming job, holding back what could start a stop string; a stop string
        in the stable text finishes the job at once."""
        assert job.text is not None  # set when it joined
        job.text.piece(stable_ids)
        text = job.text.emitted
        cut = self._stop_at(job, text)
        if cut is not None:
            self._finish(cohort, job, stable_ids)
            return
        limit = len(text) - (max(map(len, job.stop), default=1) - 1)
        if limit > job.sent:
            job.emit(Piece(text[job.sent : limit]))
            job.sent = limit

    @staticmethod
    def _stop_at(job: Job, text: str) -> int | None:
        found = [index for index in (text.find(stop) for stop in job.stop) if index >= 0]
        return min(found) if found else None

    def _finish(self, cohort: Cohort, job: Job, ids: list[int]) -> None:
        """Answer ``job`` with its final text (the row's ids cut after the first EOS, the text before the first
        stop string); it leaves the batch at the next step boundary."""
        dllm = cohort.decoder.dllm
        eos = first_of(ids, list(dllm.eos_token_ids))
        ids = ids[: eos + 1]
        text = dllm.decode(ids)
        cut = self._stop_at(job, text)
        reason = "stop" if eos < len(ids) or cut is not None else "length"
        text = text if cut is None else text[:cut]
        if job.stream and job.text is not None:
            sent = job.text.emitted[: job.sent]
            if text.startswith(sent) and len(text) > len(sent):  # always, unless decoding a text changed its start
                job.emit(Piece(text[len(sent) :]))
            job.sent = len(text)
        job.emit(Done(text, ids, reason, len(ids), job.steps))
        job.steps = -1  # leaves at the next step boundary
        self.counts["finished"] += 1

    def _check_budget(self, cohort: Cohort, job: Job) -> None:
        budget = cohort.decoder._max_steps(job.max_tokens)
        if job.steps > budget:
            job.emit(
                Failed(
                    DecodeError(
                        f"the request did not finish within {budget} steps (generation.max_steps); the strategies "
                        "may be stuck",
                        fix="raise generation.max_steps, or check the window and verification strategies",
                    )
                )
            )
            job.steps = -1
            self.counts["failed"] += 1

    def _isolate(self, cohort: Cohort, exc: Exception) -> None:
        """A step of ``cohort`` raised: fail its job if it was alone, else start each of its jobs again alone."""
        jobs = [job for job in cohort.jobs + cohort.joining if job.steps >= 0 and not job.cancelled]
        with self.lock:
            self.cohorts.remove(cohort)
            if len(cohort.jobs) + len(cohort.joining) <= 1 or cohort.isolated:
                for job in jobs:
                    job.emit(Failed(exc))
                    job.steps = -1
                    self.counts["failed"] += 1
                return
            for job in jobs:
                job.isolated, job.steps = True, 0
            self.pending = jobs + self.pending
            self.lock.notify()


def now() -> int:
    """Seconds since the epoch (OpenAI's ``created``)."""
    return int(time.time())
