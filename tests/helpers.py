"""Shared test helpers: decoders over the toy model, a step recorder, the reference fixtures, float comparisons."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from dlm_decode.decoder import Decoder
from dlm_decode.hookspecs import hookimpl
from dlm_decode.testing.toy import ToyDiffusionLM


@dataclass
class Step:
    finished_before: torch.Tensor  # [B] bool
    commit: torch.Tensor  # [B, N] bool
    canvas: torch.Tensor  # [B, N] long, after the step
    masked: torch.Tensor  # [B, N] bool, after the step


@dataclass
class Run:
    initial: torch.Tensor  # [B, N] canvas before the first step
    gen_start: int
    steps: list[Step] = field(default_factory=list)


class StepRecorder:
    """Observer keeping, for every batch (run), a copy of the canvas, masks and commits after each step."""

    def __init__(self):
        self.runs: list[Run] = []

    @hookimpl
    def dlm_generation_start(self, state):
        self.runs.append(Run(state.canvas.clone(), state.gen_start))
        self._finished = state.finished.clone()

    @hookimpl
    def dlm_step_end(self, state, decision):
        self.runs[-1].steps.append(Step(self._finished, decision.commit.clone(), state.canvas.clone(),
                                        state.masked.clone()))
        self._finished = state.finished.clone()


def toy_decoder(*overrides: str, model: ToyDiffusionLM | None = None, observers=()) -> Decoder:
    """A decoder over the toy model (``model.dllm`` is not loaded)."""
    from dlm_decode.config import load_config

    return Decoder(load_config({}, list(overrides)), dllm=model or ToyDiffusionLM(), observers=observers)


#: The tiny LLaDA, Dream and Qwen2 checkpoints and the official code's outputs on them (tests/reference/record.py).
REFERENCE = Path(__file__).parent / "reference"


def assert_logits_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-4) -> None:
    """Logits equal up to float reordering on any CPU: ``rtol`` relative to each value, plus the same fraction of
    the largest magnitude for values near zero (a bare absolute tolerance would not scale with the logits)."""
    torch.testing.assert_close(actual.float(), expected.float(), rtol=rtol,
                               atol=rtol * float(expected.abs().max()))
