"""Shared test helpers: decoders over the toy model and a step recorder."""

from __future__ import annotations

from dataclasses import dataclass, field

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
