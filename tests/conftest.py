"""Test settings: a deterministic Hypothesis profile (no deadlines: the first torch call of a test is slow), the
repository root as the working directory, and the remote-code stand-in checkpoints several test modules share."""

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "dlm", deadline=None, max_examples=int(os.environ.get("DLM_HYPOTHESIS_EXAMPLES", "25")), derandomize=True,
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
