"""Scoring backends: every Triton kernel against its native twin, and the backend dispatch.

The kernels run under the Triton interpreter in one child process: ``TRITON_INTERPRET`` is read when the kernel
module is imported, so it is set in the child's environment only and this process (shared with the other test
modules) never sees it. The child gets the inputs and returns the outputs through files; the comparisons run
here. Interpreted kernels cost about 3 ms per program (one per position), so the shapes stay tiny; a small
``block_v`` makes the vocabulary loop run several chunks, the last one partial.

Run as a script (``python tests/test_ops.py INPUTS OUTPUTS``) it is that child.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from dataclasses import dataclass

import pytest
import torch

import dlm_decode.ops as ops
from dlm_decode.errors import ConfigError
from dlm_decode.ops import _triton, kernels, reference

NEG_INF = float("-inf")
TEMPERATURE = 0.7
WEIGHTS = (0.0, 0.35, 1.0)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
#: Per input dtype. Both upcast exactly to float32, so kernel and twin differ only in float32 summation order.
TOLERANCES = {"fp32": dict(rtol=1e-5, atol=1e-6), "bf16": dict(rtol=1e-5, atol=1e-6)}

requires_triton = pytest.mark.skipif(not _triton.HAS_TRITON, reason="Triton is not installed")


@dataclass(frozen=True)
class Case:
    """A batch of ``positions`` rows over ``vocab`` ids (``ar_vocab`` for the AR side of APD)."""

    positions: int
    vocab: int
    ar_vocab: int
    block_v: int | None = 16
    scale: float = 3.0


CASES = {
    "odd_vocab": Case(3, 37, 30),
    "one_position": Case(1, 50, 50),
    "large_magnitude": Case(2, 40, 33, scale=1e4),
    "neg_inf": Case(4, 37, 29),
    "ties": Case(2, 33, 33),
    "vocab_of_one": Case(2, 1, 1),
    "default_block": Case(2, 5000, 4999, block_v=None),
}


def make_inputs(name: str, dtype: torch.dtype) -> dict:
    """Logits, tokens, noise and AR logits of a case (deterministic)."""
    case = CASES[name]
    generator = torch.Generator().manual_seed(sorted(CASES).index(name))
    k, v = case.positions, case.vocab
    logits = torch.randn(k, v, generator=generator) * case.scale
    ar = torch.randn(k, case.ar_vocab, generator=generator) * case.scale
    tokens = torch.randint(0, v, (k,), generator=generator)
    if name == "neg_inf":
        logits[0, ::3] = NEG_INF  # scattered exclusions
        logits[1] = NEG_INF
        logits[1, 35] = 1.5  # all -inf but one, in the last, partial block
        logits[2] = NEG_INF
        logits[2, 4] = -2.0  # all -inf but one, in the first block
        logits[3, :16] = NEG_INF  # a whole first block of -inf before any finite logit
        ar[0, 1::4] = NEG_INF
        ar[3, 20:] = NEG_INF
        tokens = torch.tensor([0, 35, 4, 2])  # excluded, sole, sole, excluded
    if name == "ties":
        logits[0, [3, 20]] = 9.0  # the top logit twice, in different blocks
        logits[1, [5, 6]] = 9.0  # and twice in one block
    noise = -torch.empty(k, v, dtype=torch.float64).exponential_(generator=generator).log()
    return dict(logits=logits.to(dtype), ar=ar.to(dtype), tokens=tokens, noise=noise, block_v=case.block_v)


def native_perturbed_argmax(logits, noise, temperature, ar_logits=None, weight=1.0, *, block_v=None):
    """``perturbed_argmax_triton`` spelled with the native functions."""
    if ar_logits is None:
        return reference.gumbel_argmax_native(logits, noise, temperature)
    return reference.coupled_sample_native(logits, ar_logits, weight, noise, temperature)


def native_stats(logits, tokens, *, block_v=None):
    return reference.softmax_stats_native(logits, tokens)


def score_all(x: dict, scorer: ops.Scorer, stats, perturbed_argmax) -> dict[str, torch.Tensor]:
    """Every output the parity tests compare, through one backend's functions and scorer."""
    logits, ar, tokens, noise, block_v = x["logits"], x["ar"], x["tokens"], x["noise"], x["block_v"]
    out = {
        f"stats.{field}": value
        for field, value in zip(reference.SoftmaxStats._fields, stats(logits, tokens, block_v=block_v))
    }
    out["gumbel_argmax"] = perturbed_argmax(logits, noise, TEMPERATURE, block_v=block_v)
    for weight in WEIGHTS:
        out[f"coupled.{weight}"] = perturbed_argmax(logits, noise, TEMPERATURE, ar, weight, block_v=block_v)
        out[f"coupled_argmax.{weight}"] = perturbed_argmax(logits, None, TEMPERATURE, ar, weight, block_v=block_v)
    fused = scorer.stats(logits)
    out["scorer.stats.entropy"] = fused.entropy
    out["scorer.max_prob"], out["scorer.argmax"] = scorer.max_prob(logits)
    out["scorer.token_prob"] = scorer.token_prob(logits, tokens)
    out["scorer.margin"] = scorer.margin(logits)
    out["scorer.entropy"] = scorer.entropy(logits)
    out["scorer.gumbel_argmax"] = scorer.gumbel_argmax(logits, noise, TEMPERATURE)
    out["scorer.coupled_sample"] = scorer.coupled_sample(logits, ar, WEIGHTS[1], noise, TEMPERATURE)
    out["scorer.coupled_argmax"] = scorer.coupled_sample(logits, ar, WEIGHTS[1], noise, 0.0)
    return out


def interpreted_outputs(inputs_path: str, outputs_path: str) -> None:
    """The child: run every kernel under the interpreter on the saved inputs."""
    scorer = ops.get_scorer("triton")
    assert kernels.INTERPRETED, "TRITON_INTERPRET=1 must be set before dlm_decode is imported"
    inputs = torch.load(inputs_path)
    outputs = {
        key: score_all(x, scorer, kernels.softmax_stats_triton, kernels.perturbed_argmax_triton)
        for key, x in inputs.items()
    }
    torch.save(outputs, outputs_path)


@pytest.fixture(scope="module")
def kernel_outputs(tmp_path_factory):
    """``{"case/dtype": {output: tensor}}`` from the interpreted kernels, computed once in a child process."""
    folder = tmp_path_factory.mktemp("kernels")
    inputs, outputs = folder / "inputs.pt", folder / "outputs.pt"
    torch.save({f"{name}/{dtype}": make_inputs(name, DTYPES[dtype]) for name in CASES for dtype in DTYPES}, inputs)
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    run = subprocess.run(
        [sys.executable, __file__, str(inputs), str(outputs)], env=env, capture_output=True, text=True, timeout=900
    )
    assert run.returncode == 0, f"the interpreted kernels failed:\n{run.stderr[-4000:]}"
    return torch.load(outputs)


@requires_triton
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", CASES)
def test_kernels_match_their_native_twins(kernel_outputs, name, dtype):
    x = make_inputs(name, DTYPES[dtype])
    expected = score_all(x, ops.Scorer(), native_stats, native_perturbed_argmax)
    got = kernel_outputs[f"{name}/{dtype}"]
    assert got.keys() == expected.keys()
    wrong = []
    for key, want in expected.items():
        have = got[key]
        if want is None or have is None:
            if want is not have:
                wrong.append(f"{key}: {have} != {want}")
        elif not want.is_floating_point():
            if not torch.equal(have, want):
                wrong.append(f"{key}: {have.tolist()} != {want.tolist()}")
        elif not torch.allclose(have, want, equal_nan=True, **TOLERANCES[dtype]):
            wrong.append(f"{key}: max |diff| {(have - want).abs().max():.3g}\n  got  {have}\n  want {want}")
    assert not wrong, "\n".join(wrong)


@requires_triton
def test_edge_rows_have_the_exact_values(kernel_outputs):
    """The all--inf-but-one rows are certain; tied tops have margin 0 and the first index."""
    got = kernel_outputs["neg_inf/fp32"]
    assert got["stats.max_prob"][1:3].tolist() == [1.0, 1.0]
    assert got["stats.entropy"][1:3].tolist() == [0.0, 0.0]
    assert got["stats.argmax"][1:3].tolist() == [35, 4]
    assert got["stats.token_prob"].tolist()[1:3] == [1.0, 1.0] and got["stats.token_prob"][[0, 3]].tolist() == [0, 0]
    ties = kernel_outputs["ties/fp32"]
    assert ties["stats.margin"].tolist() == [0.0, 0.0] and ties["stats.argmax"].tolist() == [3, 5]
    assert kernel_outputs["vocab_of_one/bf16"]["stats.margin"].tolist() == [1.0, 1.0]


# Dispatch. No kernel runs below: each test fixes the facts it depends on (CUDA, Triton, the interpreter).


@pytest.fixture
def machine(monkeypatch):
    """Set whether this "machine" has CUDA, Triton and interpreted kernels; clear the logged fallbacks."""
    monkeypatch.delenv(ops.KERNELS_ENV, raising=False)
    monkeypatch.setattr(ops, "_logged", set())

    def configure(cuda: bool = False, triton: bool = True, interpreted: bool = False):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        monkeypatch.setattr(_triton, "HAS_TRITON", triton)
        monkeypatch.setattr(kernels, "INTERPRETED", interpreted)

    return configure


@pytest.mark.parametrize(
    "value, expected",
    [
        ("native", ops.Scorer),
        (" Native ", ops.Scorer),
        ("", ops.Scorer),
        ("auto", ops.Scorer),
        ("triton", ops.TritonScorer),
    ],
)
def test_the_environment_variable_chooses_the_backend(machine, monkeypatch, value, expected):
    machine(cuda=False, interpreted=True)
    monkeypatch.setenv(ops.KERNELS_ENV, value)
    assert type(ops.get_scorer()) is expected


def test_an_argument_overrides_the_environment_variable(machine, monkeypatch):
    machine(cuda=True)
    monkeypatch.setenv(ops.KERNELS_ENV, "triton")
    assert type(ops.get_scorer("native")) is ops.Scorer


def test_an_unknown_backend_names_its_setting(machine, monkeypatch):
    monkeypatch.setenv(ops.KERNELS_ENV, "cuda")
    with pytest.raises(ConfigError, match=r"(?s)`DLM_DECODE_KERNELS`: unknown scoring backend 'cuda'.*auto, triton"):
        ops.get_scorer()
    with pytest.raises(ConfigError, match=r"`generation.kernels`: unknown"):
        ops.get_scorer("fast", key="generation.kernels")


@pytest.mark.parametrize(
    "facts, message",
    [
        (dict(triton=False, cuda=True), r"Triton is not installed\n  fix: install it with `pip install 'dlm-decode"),
        (dict(cuda=False, interpreted=False), r"no CUDA device[^\n]*\n  fix: [^\n]*export TRITON_INTERPRET=1"),
    ],
)
def test_an_explicit_triton_that_cannot_run_raises(machine, monkeypatch, facts, message):
    machine(**facts)
    monkeypatch.setenv(ops.KERNELS_ENV, "triton")
    with pytest.raises(
        ConfigError,
        match=r"(?s)`DLM_DECODE_KERNELS`: the Triton scoring kernels cannot run: "
        + message
        + r".*set DLM_DECODE_KERNELS=auto",
    ):
        ops.get_scorer()


@pytest.mark.parametrize(
    "facts, level, reason",
    [
        (dict(cuda=False), logging.INFO, "no CUDA device"),
        (dict(cuda=True, triton=False), logging.WARNING, "Triton is not installed"),
    ],
)
def test_auto_falls_back_with_one_log_line(machine, caplog, facts, level, reason):
    machine(**facts)
    with caplog.at_level(logging.INFO, logger="dlm_decode.ops"):
        scorers = [ops.get_scorer(), ops.get_scorer("auto")]
    assert all(type(scorer) is ops.Scorer for scorer in scorers)
    assert [(record.levelno, reason in record.getMessage()) for record in caplog.records] == [(level, True)]


def test_auto_takes_triton_on_cuda_and_scores_cpu_tensors_natively(machine, caplog):
    machine(cuda=True)
    with caplog.at_level(logging.INFO, logger="dlm_decode.ops"):
        scorer = ops.get_scorer()
    assert isinstance(scorer, ops.TritonScorer) and not scorer.strict and not caplog.records
    x = make_inputs("odd_vocab", torch.float32)
    assert torch.equal(scorer.entropy(x["logits"]), reference.entropy_native(x["logits"]))
    assert torch.equal(
        scorer.coupled_sample(x["logits"], x["ar"], 0.5, x["noise"], 1.0),
        reference.coupled_sample_native(x["logits"], x["ar"], 0.5, x["noise"], 1.0),
    )


def test_an_explicit_triton_refuses_cpu_tensors_it_cannot_run(machine):
    machine(cuda=True)
    scorer = ops.get_scorer("triton", key="generation.kernels")
    with pytest.raises(
        ConfigError,
        match=r"`generation.kernels`: the Triton scorer got tensors on cpu.*"
        r"\n  fix: .*set generation.kernels=auto",
    ):
        scorer.max_prob(torch.zeros(2, 5))


def test_without_triton_the_modules_import_and_auto_is_native():
    """Hide Triton from a fresh interpreter: the shim's placeholders let the kernel module import."""
    script = "\n".join(
        [
            "import sys; sys.modules['triton'] = None",
            "import pytest, dlm_decode.ops as ops",
            "from dlm_decode.errors import ConfigError",
            "from dlm_decode.ops import _triton, kernels",
            "assert not _triton.HAS_TRITON and not kernels.INTERPRETED",
            "assert type(ops.get_scorer('auto')) is ops.Scorer",
            "with pytest.raises(ConfigError, match='Triton is not installed'): ops.get_scorer('triton')",
        ]
    )
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-4000:]


if __name__ == "__main__":
    interpreted_outputs(*sys.argv[1:])
