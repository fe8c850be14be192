"""Test settings: a deterministic Hypothesis profile (no deadlines: the first torch call of a test is slow), the
repository root as the working directory, and the models several test modules share (the remote-code stand-in
checkpoints, the sharpened random transformers)."""

import os
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings

settings.register_profile(
    "dlm",
    deadline=None,
    max_examples=int(os.environ.get("DLM_HYPOTHESIS_EXAMPLES", "25")),
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.load_profile("dlm")


@pytest.fixture(scope="session", autouse=True)
def _at_the_repository_root():
    """Tests name configs and scripts as the README's commands do (``configs/...``), relative to the repository
    root: run them there, from wherever pytest was started."""
    started = os.getcwd()
    os.chdir(Path(__file__).resolve().parent.parent)
    yield
    os.chdir(started)


@pytest.fixture(scope="session")
def stand_ins(tmp_path_factory):
    """Remote-code LLaDA and Dream stand-ins (stand_ins.py), spiked ones, a one-layer Dream and a Qwen2 verifier."""
    from dlm_decode.testing.models import build_dream_like, build_llada_like, build_qwen_like_verifier

    from stand_ins import SPIKE

    root = tmp_path_factory.mktemp("stand-ins")
    return {
        "dream": build_dream_like(root / "dream", seed=0),
        "dream1": build_dream_like(root / "dream1", seed=0, layers=1),
        "dream_spike": build_dream_like(root / "dream_spike", position_spike=SPIKE),
        "llada": build_llada_like(root / "llada"),
        "llada_spike": build_llada_like(root / "llada_spike", position_spike=SPIKE),
        "llada_legacy": build_llada_like(root / "llada_legacy", position_spike=SPIKE, legacy=True),
        "qwen": build_qwen_like_verifier(root / "qwen"),
    }


def sharp_dllm(directory, layers: int, eos_token_ids: list[int] | None = None):
    """A tiny random bidirectional Llama with its weights scaled from the 0.02 init to about 0.7, so that its
    predictions depend on the context and its confidences spread over (0, 1) (the plain tiny model is nearly
    uniform and proposes the same token everywhere, which would make token comparisons vacuous)."""
    from dlm_decode.config.schema import ModelSpec
    from dlm_decode.models.adapter import DiffusionLM
    from dlm_decode.testing.models import build_tiny_checkpoint

    path = build_tiny_checkpoint(directory, layers=layers, seed=0)
    dllm = DiffusionLM.from_spec(ModelSpec(path=str(path), eos_token_ids=eos_token_ids))
    with torch.no_grad():
        for name, weight in dllm.model.named_parameters():
            if "norm" not in name:
                weight.mul_(35.0)
    return dllm


@pytest.fixture(scope="session")
def sharp(tmp_path_factory):
    """A sharpened random two-layer bidirectional transformer (:func:`sharp_dllm`)."""
    return sharp_dllm(tmp_path_factory.mktemp("sharp"), layers=2)


@pytest.fixture(scope="session")
def one_layer(tmp_path_factory):
    """One layer; "}" (id 98, a frequent proposal of this model) also ends a row, so rows end early and the core
    fills their tails while masks remain before the EOS."""
    return sharp_dllm(tmp_path_factory.mktemp("one-layer"), layers=1, eos_token_ids=[2, 98])


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread while a module runs (restored after): for tiny models on a busy 2-core machine, where two
    threads made a 48-step DiffusionGemma ``generate`` take up to 20 s instead of 0.1 s."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
