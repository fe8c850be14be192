"""Shared test helpers: decoders over the toy model, step and final-canvas recorders, shared prompts, the reference
fixtures, float comparisons. (Shared pytest fixtures live in conftest.py: a fixture imported from one test module
into another is built once per module that imports it.)"""

from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import subprocess
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dlm_decode.decoder import Decoder
from dlm_decode.hookspecs import hookimpl
from dlm_decode.state import Proposal
from dlm_decode.testing.toy import ToyDiffusionLM

#: Five prompts of different lengths and kinds: a batch of them is left-padded, and the rows finish apart.
PROMPTS = ["sort: 3 1 2", "hi", "reverse: abcdef", "7+5=", "pick a fruit please"]
#: Sixteen free-form prompts of lengths 1 to 19 (the first four as in PROMPTS): one full batch of 16 is left-padded
#: and its rows finish apart.
PROMPTS16 = [
    "sort: 3 1 2",
    "hi",
    "reverse: abcdef",
    "7+5=",
    "a",
    "count to five",
    "xyz",
    "12*3",
    "the quick brown fox",
    "q",
    "copy: hello",
    "2+2=",
    "upper: abc",
    "ok",
    "len(abcd)",
    "z y x",
]
#: Sixteen prompts in the embedded dLLMs' task format ("sort", "reverse", ...) and a few they were not trained on, of
#: lengths 1 to 16: one full batch of 16 is left-padded and its rows finish apart.
TASK_BATCH = [
    "sort 4 1 7 9 3",
    "reverse hello",
    "sort 9 8",
    "copy abcde",
    "a",
    "sort 5 3 1 2 4 6",
    "reverse stone",
    "hi",
    "sort 2 1",
    "reverse ab",
    "sort 8 6 7",
    "count",
    "reverse diffusion",
    "sort 1",
    "x y z",
    "sort 3 3 1",
]

#: Eight task prompts and free-form ones of lengths 1 to 15, twice: a batch of 16 in which identical prompts sit in
#: different rows (each must decode as alone).
MIXED_BATCH = [
    "sort 4 1 7 9 3",
    "hi",
    "reverse the word stone",
    "copy abc",
    "what is 12 + 30",
    "sort 9 8 1 2 5 6",
    "x",
    "reverse ab",
] * 2


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
        self.runs[-1].steps.append(
            Step(self._finished, decision.commit.clone(), state.canvas.clone(), state.masked.clone())
        )
        self._finished = state.finished.clone()


class FinalCanvas:
    """Observer keeping each row's generated columns as the batch ends (positions after an EOS included)."""

    def __init__(self):
        self.rows: list[list[int]] = []

    @hookimpl
    def dlm_generation_end(self, state):
        self.rows += state.canvas[:, state.gen_start :].tolist()


class ModelWrapper:
    """A dLLM seen through a wrapper: every attribute the wrapper does not set is the wrapped model's."""

    def __init__(self, dllm):
        self.dllm = dllm

    def __getattr__(self, name):
        return getattr(self.dllm, name)


class ForwardRecorder(ModelWrapper):
    """A dLLM wrapper keeping the :class:`~dlm_decode.state.ModelInputs` of every forward in ``inputs``."""

    def __init__(self, dllm):
        super().__init__(dllm)
        self.inputs = []

    def forward(self, inputs, cache=None):
        self.inputs.append(inputs)
        return self.dllm.forward(inputs, cache)


@dataclass
class NoParams:
    """The config of a test strategy without parameters."""


def strategy_decoder(
    role: str,
    name: str,
    factory,
    *overrides: str,
    plugin_name: str = "tests.plugin",
    model: ToyDiffusionLM | None = None,
    observers=(),
) -> Decoder:
    """A decoder over the toy model whose ``role`` strategy is ``name``, built by ``factory(config, context)`` and
    registered by an inline plugin called ``plugin_name`` (the registry and config are built first, so a strategy
    the decoder rejects fails in ``Decoder``)."""
    from dlm_decode.config import load_config
    from dlm_decode.testing.registry import registry_with

    registry = registry_with((role, name, NoParams, factory), plugin_name=plugin_name)
    config = load_config({}, [f"decoder.{role}={name}", *overrides], registry=registry)
    return Decoder(config, dllm=model or ToyDiffusionLM(), registry=registry, observers=observers)


def toy_decoder(*overrides: str, model: ToyDiffusionLM | None = None, observers=()) -> Decoder:
    """A decoder over the toy model (``model.dllm`` is not loaded)."""
    from dlm_decode.config import load_config

    return Decoder(load_config({}, list(overrides)), dllm=model or ToyDiffusionLM(), observers=observers)


#: The tiny LLaDA, Dream and Qwen2 checkpoints and the official code's outputs on them (tests/reference/record.py).
REFERENCE = Path(__file__).parent / "reference"


def assert_batch_equals_one_by_one(decoder: Decoder, prompts: list[str], alone=(0, 4, 5, 12, 15)):
    """Decode ``prompts`` in one batch, then each prompt at the indices ``alone`` by itself: each row's tokens and
    commits per step must not depend on the batch. Returns the batched output for the caller's checks."""
    together = decoder.generate(prompts)
    for index in alone:
        single = decoder.generate([prompts[index]])
        assert single.token_ids[0] == together.token_ids[index], prompts[index]
        assert single.stats[0].commits_per_step == together.stats[index].commits_per_step, prompts[index]
    return together


def decode_state(prompts, new: int, *, mask: int, pad: int, eos: list[int], fill: int, seeds=None, **options):
    """:meth:`~dlm_decode.state.DecodeState.build` of token-id ``prompts`` with ``new`` masks each and the given
    special ids; ``seeds`` default to 0 for every row, ``options`` (``stop_at_eos``, ``attention``,
    ``excluded_token_ids``) go to ``build`` as they are."""
    from dlm_decode.state import DecodeState

    seeds = [0] * len(prompts) if seeds is None else seeds
    prompts = [list(prompt) for prompt in prompts]
    ids = {"mask_token_id": mask, "pad_token_id": pad, "eos_token_ids": eos, "fill_token_id": fill}
    return DecodeState.build(prompts, max_new_tokens=new, seeds=seeds, **ids, **options)


def confidence_proposal(confidence: torch.Tensor, allowed: torch.Tensor, token: int = 0) -> Proposal:
    """A hand-built greedy :class:`~dlm_decode.state.Proposal` for verification tests: ``token`` everywhere, the
    given ``confidence`` ``[B, N]``, proposed at the ``allowed`` ``[B, N]`` positions (one zero logit each, no
    scorer)."""
    rows, cols = allowed.nonzero(as_tuple=True)
    return Proposal(
        tokens=torch.full(confidence.shape, token, dtype=torch.long),
        confidence=confidence,
        rows=rows,
        cols=cols,
        logits=torch.zeros(len(rows), 1),
        temperature=0.0,
        noise=None,
        scorer=None,
    )


def official_settings(cases: list[dict], ignored=()) -> dict[str, list[dict]]:
    """Recorded official ``cases`` grouped by setting: name -> the setting's cases in recorded order. The name is the
    case's decoder followed by its arguments (those in ``ignored`` left out) as sorted JSON."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for case in cases:
        shown = {key: value for key, value in case["arguments"].items() if key not in ignored}
        groups[f"{case['decoder']}{json.dumps(shown, sort_keys=True)}"].append(case)
    return dict(groups)


def llada_tiny_blocks(gen_length: int, block_length: int, cache: str = "none") -> list[str]:
    """The overrides every official LLaDA-style decoder's comparison starts from: the tiny LLaDA checkpoint, a
    canvas of ``gen_length`` columns decoded in window blocks of ``block_length``, greedy proposals, the ``cache``
    strategy, and no stop at the first EOS (the official code fills the whole canvas). The caller adds the decoder's
    verification strategy and knobs."""
    return [
        f"model.dllm.path={REFERENCE / 'llada-tiny'}",
        f"generation.max_new_tokens={gen_length}",
        "decoder.window=blocks",
        f"decoder.window.size={block_length}",
        "decoder.proposal=greedy",
        f"decoder.cache={cache}",
        "generation.stop_at_eos=false",
    ]


def assert_official_tokens(overrides: list[str], cases: list[dict], prompts: list[str], observers=()):
    """Decode every case's prompt (``prompts[case["prompt"]]``) in one left-padded batch with ``overrides`` and assert
    that each row's generated columns (those after an EOS included) are the case's official ``generated`` ids.
    Returns each row's :class:`~dlm_decode.decoder.RowStats`, in the cases' order, for the caller's further checks."""
    canvas = FinalCanvas()
    decoder = Decoder.from_config({}, [*overrides, "generation.batch_size=16"], observers=[canvas, *observers])
    out = decoder.generate([prompts[case["prompt"]] for case in cases])
    for case, row in zip(cases, canvas.rows, strict=True):
        assert row == case["generated"], f"prompt {case['prompt']}"
    return out.stats


def assert_logits_close(actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-4) -> None:
    """Logits equal up to float reordering on any CPU: ``rtol`` relative to each value, plus the same fraction of
    the largest finite magnitude for values near zero (a bare absolute tolerance would not scale with the logits).
    Infinite logits (an excluded token's ``-inf``) must sit at the same places with the same sign."""
    finite = expected.isfinite()
    assert bool(finite.any()), "no finite logit to compare"
    torch.testing.assert_close(
        actual.float(), expected.float(), rtol=rtol, atol=rtol * float(expected[finite].abs().max())
    )


def edited_copy(source, target: Path, *, config=None, tokenizer_config=None, vocab=None, drop=(), files=None) -> Path:
    """A copy of checkpoint ``source`` at ``target``: ``config.json`` / ``tokenizer_config.json`` entries replaced (a
    None value deletes the key), ``tokenizer.json``'s vocabulary edited in place by ``vocab(dict)``, the files
    ``drop`` deleted and the files ``files`` (name -> text) written."""
    shutil.copytree(source, target)
    for name, updates in (("config.json", config), ("tokenizer_config.json", tokenizer_config)):
        if updates:
            data = json.loads((target / name).read_text())
            for key, value in updates.items():
                data.pop(key, None) if value is None else data.__setitem__(key, value)
            (target / name).write_text(json.dumps(data))
    if vocab:
        data = json.loads((target / "tokenizer.json").read_text())
        vocab(data["model"]["vocab"])
        (target / "tokenizer.json").write_text(json.dumps(data))
    for name in drop:
        (target / name).unlink()
    for name, text in (files or {}).items():
        (target / name).write_text(text)
    return target


def until_stop(ids: list[int], stops: list[int]) -> list[int]:
    """``ids`` up to and including the first of ``stops`` (all of them when none occurs): what SDAR's decoders
    return once a stop id is generated."""
    end = next((i for i, token in enumerate(ids) if token in stops), len(ids) - 1)
    return ids[: end + 1]


#: SDAR's two official decoders as the block fixtures name them (tests/reference/record_block.py).
SDAR_EVALUATION_DECODER = "sdar.huggingface_bd3.block_diffusion_generate"
SDAR_SCRIPT_DECODER = "sdar.generate.block_diffusion_generate"


def sdar_equivalent(decoder: str, arguments: dict) -> list[str]:
    """The overrides under which the project decodes as SDAR's evaluation decoder called with ``arguments``:
    blocks of ``block_length`` for the window and for the attention pattern (the official decoder builds its mask
    from ``block_length``, whatever the config's ``block_size``); ``k = block_length / denoising_steps`` tokens per
    step, the most confident, and every token above ``threshold`` (below 1.0): ``threshold(threshold,
    min_tokens=k)``, also at 1.0, where the official step is a top-k of the block alone (``topk`` would re-spread a
    partial first block, ``tests/test_sdar_partial.py``); every position decoded (``stop_at_eos=false``), the tokens
    compared up to the first stop id."""
    k = arguments["block_length"] // arguments["denoising_steps"]
    if decoder == SDAR_SCRIPT_DECODER:  # every confidence 1.0 (see the module docstring)
        verification = (
            ["decoder.verification=left_to_right", f"decoder.verification.k={k}"]
            if arguments["remasking_strategy"] == "sequential"
            else ["decoder.verification=threshold", "decoder.verification.threshold=0.0"]
        )
    else:
        verification = [
            "decoder.verification=threshold",
            f"decoder.verification.threshold={arguments['threshold']}",
            f"decoder.verification.min_tokens={k}",
        ]
    return [
        f"model.dllm.block_size={arguments['block_length']}",
        "decoder.window=blocks",
        f"decoder.window.size={arguments['block_length']}",
        *verification,
        "decoder.proposal=greedy",
        "generation.stop_at_eos=false",
    ]


def first_layer_experts(model, **inputs) -> list[list[int]]:
    """The experts each token reaches in the first layer of the transformers mixture-of-experts ``model`` (whose router
    ``mlp.gate`` returns ``(logits, weights, indices)``) when called with ``inputs``, each token's in sorted order."""
    chosen = []
    hook = model.model.layers[0].mlp.gate.register_forward_hook(lambda m, i, out: chosen.append(out[2]))
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        hook.remove()
    return chosen[0].sort(dim=-1).values.tolist()


def with_topk_renormalised(model, renormalise: bool):
    """A copy of the transformers mixture-of-experts ``model`` whose routers renormalise their top-k weights or not."""
    changed = copy.deepcopy(model)
    for layer in changed.model.layers:
        if hasattr(layer.mlp, "gate"):
            layer.mlp.gate.norm_topk_prob = renormalise
    return changed


def assert_dispatch_calls_do_not_grow(model) -> None:
    """The first layer's sparse block of the transformers mixture-of-experts ``model`` runs ``grouped_mm`` (token-expert
    pairs sorted by expert, one grouped product per projection) and makes as many Python calls for 64 tokens as for 2:
    no Python loop over tokens, nor over the experts they reach."""
    assert model.config._experts_implementation == "grouped_mm"
    generator = torch.Generator().manual_seed(0)
    width = model.config.hidden_size
    block = model.model.layers[0].mlp
    calls = [python_calls(block, torch.randn(1, n, width, generator=generator)) for n in (64, 2)]
    assert calls[0] == calls[1]


def llada2_equivalent(arguments: dict) -> list[str]:
    """The overrides under which the project decodes as LLaDA 2.0's ``generate`` called with ``arguments``: its step
    is SDAR's evaluation step (every mask above ``threshold``, at least ``block_length / steps`` of them, the most
    confident), over blocks of ``block_length`` from position 0 (:func:`sdar_equivalent`)."""
    return sdar_equivalent(
        SDAR_EVALUATION_DECODER,
        {"block_length": arguments["block_length"], "denoising_steps": arguments["steps"], **arguments},
    )


def python_calls(module, hidden: torch.Tensor) -> int:
    """How many Python-level function calls ``module(hidden)`` makes (``sys.setprofile``, under ``no_grad``): a
    batched expert dispatch makes as many for 64 tokens as for 2."""
    count = 0

    def profile(frame, event, arg):
        nonlocal count
        count += event == "call"

    sys.setprofile(profile)
    try:
        with torch.no_grad():
            module(hidden)
    finally:
        sys.setprofile(None)
    return count


def decode_cases(checkpoint, overrides: list[str], prompts: list[str], cases: list[dict], cache: str, width=None):
    """Decode the official ``cases`` of one setting (one case per prompt, ``prompts[case["prompt"]]``) in one
    left-padded batch from ``checkpoint`` under ``overrides`` and ``decoder.cache=cache``; the canvas has ``width``
    columns (default: as many as the longest official output)."""
    width = width or max(len(case["generated"]) for case in cases)
    settings = [f"decoder.cache={cache}", f"generation.max_new_tokens={width}", f"generation.batch_size={len(cases)}"]
    decoder = Decoder.from_config([], [f"model.dllm.path={checkpoint}", *overrides, *settings])
    return decoder.generate([prompts[case["prompt"]] for case in cases])


def decode_like_sdar(checkpoint, prompts: list[str], cases: list[dict], cache: str, verification=()):
    """:func:`decode_cases` of one official SDAR setting under :func:`sdar_equivalent`'s overrides; ``verification``
    (overrides) replaces the official verification when given."""
    overrides = sdar_equivalent(cases[0]["decoder"], cases[0]["arguments"])
    if verification:
        overrides = [o for o in overrides if not o.startswith("decoder.verification")] + list(verification)
    return decode_cases(checkpoint, overrides, prompts, cases, cache)


def run_module(module: str, *args: str, processes: int | None = None, env=None) -> subprocess.CompletedProcess:
    """``python -m module args`` in a child process (under ``torch.distributed.run`` with ``processes`` processes on
    this machine when given), ``OMP_NUM_THREADS=1`` and ``env`` added to the environment; asserts that it exits 0
    (showing the tail of its stderr) and returns it, with its output captured as text."""
    launcher = [sys.executable, "-m"]
    if processes is not None:
        launcher += ["torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc_per_node", str(processes), "-m"]
    environment = {**os.environ, **(env or {}), "OMP_NUM_THREADS": "1"}
    run = subprocess.run([*launcher, module, *args], env=environment, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    return run


# --- dlm-decode serve (tests/test_serve*.py) ---------------------------------------------------------------------

#: The model id the server names the embedded dLLM by (``model.dllm.path``).
SERVED_MODEL = "embedded:dllm"


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def serving(server):
    """``server`` (a :class:`~dlm_decode.serve.app.Server`) on a free loopback port, uvicorn in a thread, yielding
    its base URL; stopped after."""
    import threading
    import time

    import uvicorn

    from dlm_decode.serve.app import create_app

    port = free_port()
    runner = uvicorn.Server(uvicorn.Config(create_app(server), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=runner.run, daemon=True)
    thread.start()
    while not runner.started:
        assert thread.is_alive(), "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        runner.should_exit = True
        thread.join(30)


def openai_client(url: str):
    import openai

    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)


def server_health(url: str) -> dict:
    import httpx

    return httpx.get(f"{url}/health").json()


@dataclass
class Call:
    """One request of a serve test: its prompt, ``max_tokens``, seed and arrival delay (seconds)."""

    prompt: str
    max_tokens: int
    seed: int
    delay: float


def mixed_calls(count: int, seed: int = 0) -> list[Call]:
    """``count`` prompts of the embedded suite (7 to ~40 characters), ``max_tokens`` 8 to 40 and arrival delays up
    to 0.5 s."""
    import random

    from dlm_decode.eval.tasks import load_examples

    rng = random.Random(seed)
    prompts = [example.prompt for example in load_examples(None, "test", 6, seed=seed)]
    rng.shuffle(prompts)
    return [Call(prompts[i], rng.choice([8, 16, 24, 40]), 1000 + i, rng.random() * 0.5) for i in range(count)]


def concurrently(calls: list[Call], send) -> list:
    """``send(call)`` for every call at once, each after its delay; the answers in order."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    def delayed(call: Call):
        time.sleep(call.delay)
        return send(call)

    with ThreadPoolExecutor(len(calls)) as pool:
        return list(pool.map(delayed, calls))


def solo_answers(decoder: Decoder, calls: list[Call]) -> list[tuple[str, list[int]]]:
    """Each call alone through ``Decoder.generate``: its text and token ids."""
    outputs = [decoder.generate([c.prompt], max_new_tokens=c.max_tokens, seeds=[c.seed]) for c in calls]
    return [(out.texts[0], out.token_ids[0]) for out in outputs]
