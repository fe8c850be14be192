"""`dlm-decode eval` under torchrun: two CPU processes (gloo) split the examples and rank 0 gathers them."""

from __future__ import annotations

import json

import pytest

from dlm_decode.cli import main
from dlm_decode.distributed import Ranks, env_ranks, gather_objects

from helpers import run_module

EVAL_ARGS = [
    "generation.max_new_tokens=6",
    "generation.batch_size=2",
    "--tasks",
    "arith,sort",
    "--limit",
    "3",
    "--no-progress",
]


def read(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_single_process_helpers_are_no_ops(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("RANK", raising=False)
    assert env_ranks() == Ranks(0, 1, 0)
    assert gather_objects({"a": 1}, Ranks()) == [{"a": 1}]
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(RuntimeError, match="RANK=2, WORLD_SIZE=2"):
        env_ranks()


@pytest.mark.slow
def test_two_processes_evaluate_each_example_once_with_the_single_process_results(tiny_dllm_dir, tmp_path):
    single, double = tmp_path / "single", tmp_path / "double"
    overrides = [f"model.dllm.path={tiny_dllm_dir}"]
    assert main(["eval", *overrides, *EVAL_ARGS, "--out", str(single)]) == 0
    launch = ["dlm_decode.cli", "eval", *overrides, *EVAL_ARGS, "--out", str(double)]
    run_module(*launch, processes=2)

    one, two = read(single / "results.jsonl"), read(double / "results.jsonl")
    ids = [r["id"] for r in two]
    assert sorted(ids) == sorted(r["id"] for r in one) and len(ids) == len(set(ids)) == 6
    assert ids == [r["id"] for r in one], "rank 0 writes the records in example order"
    assert {r["rank"] for r in two} == {0, 1}, "both ranks decoded examples"
    by_id = {r["id"]: r for r in one}
    for record in two:
        assert record["text"] == by_id[record["id"]]["text"], record["id"]
        assert record["correct"] == by_id[record["id"]]["correct"]
    assert not list(double.glob("results.rank*.jsonl")), "rank files are merged and removed"
    summary_one = json.loads((single / "summary.json").read_text())
    summary_two = json.loads((double / "summary.json").read_text())
    assert summary_two["accuracy"] == summary_one["accuracy"]
    assert summary_two["per_task"] == summary_one["per_task"] and summary_two["examples"] == 6
    assert summary_two["decoded_per_rank"] == [3, 3], "each example decoded once, split by rank"

    run_module(*launch, processes=2)
    assert [r["id"] for r in read(double / "results.jsonl")] == ids, "a rerun resumes: nothing decoded twice"
    assert json.loads((double / "summary.json").read_text())["decoded_per_rank"] == [0, 0]
