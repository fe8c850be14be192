"""The GPU benchmark script runs end to end (``--scale tiny`` on the CPU), so it is ready when a GPU is lent."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_real_size_benchmark_measures_every_preset_on_every_family(tmp_path):
    out = tmp_path / "real_size.json"
    run = subprocess.run(
        [
            sys.executable,
            "benchmarks/real_size.py",
            "--device",
            "cpu",
            "--scale",
            "tiny",
            "--batch-sizes",
            "2",
            "--new-tokens",
            "32",
            "--prompt-tokens",
            "8",
            "--warmup",
            "1",
            "--steps",
            "2",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr[-4000:]
    rows = json.loads(out.read_text())["rows"]
    measured = {(row["model"], row["preset"]) for row in rows}
    assert measured == {
        ("llada", p)
        for p in (
            "llada",
            "fast-dllm",
            "fast-dllm+prefix",
            "fast-dllm+none",
            "fast-dllm-prefix",
            "wino",
            "dream-entropy",
            "left-to-right",
        )
    } | {("dream", p) for p in ("llada", "fast-dllm", "dream-entropy", "left-to-right", "apd")} | {
        ("sdar", p) for p in ("llada", "fast-dllm+prefix", "fast-dllm+none", "wino", "left-to-right")
    }
    assert all(row["steps"] == 2 and row["ms_per_step"] > 0 and row["tokens_per_s"] > 0 for row in rows)
