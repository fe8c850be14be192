"""The evaluation runner: summary contract, resume after an interruption, example ids, refusing mixed results."""

from __future__ import annotations

import json
import logging

import pytest

from dlm_decode import InputError
from dlm_decode.eval.runner import evaluate
from dlm_decode.eval.tasks import load_examples
from dlm_decode.testing.models import build_tiny_checkpoint

SUMMARY_KEYS = {
    "accuracy",
    "per_task",
    "nfe",
    "tokens_per_forward",
    "ar_forwards",
    "tokens_per_s",
    "wall_s",
    "config_hash",
    "weights_hash",
    "split",
}


def read_results(path):
    return [json.loads(line) for line in (path / "results.jsonl").read_text().splitlines()]


def test_resume_after_interruption_matches_an_uninterrupted_run(make_decoder, tmp_path, monkeypatch):
    decoder = make_decoder(
        "generation.batch_size=2",
        "generation.max_new_tokens=6",
        "decoder.proposal=sample",
        "decoder.proposal.temperature=1.0",
    )
    tasks = ["arith", "sort"]
    reference = evaluate(decoder, tmp_path / "full", tasks=tasks, limit=3, progress=False)

    calls = {"n": 0}
    original = decoder.generate

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(decoder, "generate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        evaluate(decoder, tmp_path / "resumed", tasks=tasks, limit=3, progress=False)
    assert len(read_results(tmp_path / "resumed")) == 2, "the first batch was kept"
    monkeypatch.setattr(decoder, "generate", original)
    resumed = evaluate(decoder, tmp_path / "resumed", tasks=tasks, limit=3, progress=False)

    rows = read_results(tmp_path / "resumed")
    assert sorted(r["id"] for r in rows) == sorted(r["id"] for r in read_results(tmp_path / "full"))
    assert len(rows) == 6, "each example decoded once"
    full_text = {r["id"]: r["text"] for r in read_results(tmp_path / "full")}
    assert {r["id"]: r["text"] for r in rows} == full_text
    assert resumed["per_task"] == reference["per_task"] and resumed["examples"] == 6
    summary = json.loads((tmp_path / "resumed" / "summary.json").read_text())
    assert SUMMARY_KEYS <= set(summary) and set(summary["per_task"]) == set(tasks)
    assert summary["accuracy"] == sum(summary["per_task"].values()) / 2


def test_records_of_earlier_versions_with_a_steps_key_resume_and_summarise_as_before(make_decoder, tmp_path):
    """``steps`` (always equal to ``nfe``) is no longer written; a results.jsonl that has it still resumes."""
    decoder = make_decoder("generation.max_new_tokens=6")
    reference = evaluate(decoder, tmp_path / "new", tasks=["arith"], limit=2, progress=False)
    [first, second] = read_results(tmp_path / "new")
    assert "steps" not in first and first["nfe"] == len(first["commits_per_step"])
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "results.jsonl").write_text(json.dumps({**first, "steps": first["nfe"]}) + "\n")
    resumed = evaluate(decoder, tmp_path / "old", tasks=["arith"], limit=2, progress=False)
    assert [r["id"] for r in read_results(tmp_path / "old")] == [first["id"], second["id"]], "only the second decoded"
    assert {k: resumed[k] for k in ("per_task", "nfe", "examples")} == {
        k: reference[k] for k in ("per_task", "nfe", "examples")
    }


def test_results_of_another_config_are_not_mixed_in(make_decoder, tmp_path):
    evaluate(make_decoder("generation.max_new_tokens=4"), tmp_path, tasks=["arith"], limit=1, progress=False)
    with pytest.raises(InputError, match="holds results of another config"):
        evaluate(make_decoder("generation.max_new_tokens=5"), tmp_path, tasks=["arith"], limit=1, progress=False)


def test_results_of_a_retrained_checkpoint_are_not_mixed_in(make_decoder, tmp_path):
    """Same config (same path), other weights: the runner refuses to resume instead of mixing results."""
    model = build_tiny_checkpoint(tmp_path / "model", causal=False, seed=0)
    first = make_decoder(f"model.dllm.path={model}")
    summary = evaluate(first, tmp_path / "out", tasks=["arith"], limit=1, progress=False)
    assert summary["weights_hash"] == first.weights_hash
    build_tiny_checkpoint(model, causal=False, seed=1)  # "retrained" in place
    second = make_decoder(f"model.dllm.path={model}")
    assert second.config.hash == first.config.hash and second.weights_hash != first.weights_hash
    with pytest.raises(InputError, match="(?s)other model weights.*weights_hash.*fix"):
        evaluate(second, tmp_path / "out", tasks=["arith"], limit=1, progress=False)


def test_results_without_a_weights_hash_are_refused_with_their_own_reason(make_decoder, tmp_path):
    decoder = make_decoder()
    evaluate(decoder, tmp_path, tasks=["arith"], limit=1, progress=False)
    record = read_results(tmp_path)[0]
    del record["weights_hash"]  # as written by a release that did not record it
    (tmp_path / "results.jsonl").write_text(json.dumps(record) + "\n")
    with pytest.raises(InputError, match="(?s)before weights hashes were recorded.*weights_hash None.*fix"):
        evaluate(decoder, tmp_path, tasks=["arith"], limit=1, progress=False)


def test_the_ar_verifier_counts_in_the_weights_hash(make_decoder, tmp_path):
    apd = ["decoder.verification=apd", "decoder.window=lookahead"]
    one = make_decoder(*apd, f"model.ar.path={build_tiny_checkpoint(tmp_path / 'a', causal=True, seed=1)}")
    two = make_decoder(*apd, f"model.ar.path={build_tiny_checkpoint(tmp_path / 'b', causal=True, seed=2)}")
    assert one.weights_hash != two.weights_hash


def test_results_of_another_split_are_not_mixed_in(make_decoder, tmp_path):
    decoder = make_decoder()
    train = evaluate(decoder, tmp_path, tasks=["sort"], limit=2, split="train", progress=False)
    assert train["split"] == "train" and all(r["split"] == "train" for r in read_results(tmp_path))
    with pytest.raises(InputError, match="(?s)another split.*'train', now 'test'.*fix"):
        evaluate(decoder, tmp_path, tasks=["sort"], limit=2, progress=False)


def test_unknown_task_is_named(make_decoder, tmp_path):
    with pytest.raises(InputError, match="unknown task\\(s\\) nope\n  fix: choose from .*arith"):
        evaluate(make_decoder(), tmp_path, tasks=["nope"], limit=1, progress=False)


def test_an_id_names_the_same_example_whatever_the_tasks_and_limit(make_decoder, tmp_path):
    """A rerun with other --tasks / --limit reuses only the records of the same examples, decoded with the same
    seeds, so it equals a fresh run."""
    decoder = make_decoder("generation.max_new_tokens=6", "decoder.proposal=sample", "decoder.proposal.temperature=1.0")
    evaluate(decoder, tmp_path / "out", tasks=["arith", "sort"], limit=1, progress=False)
    resumed = evaluate(decoder, tmp_path / "out", tasks=["sort"], limit=2, progress=False)
    fresh = evaluate(decoder, tmp_path / "fresh", tasks=["sort"], limit=2, progress=False)

    rows = [r for r in read_results(tmp_path / "out") if r["task"] == "sort"]
    assert [r["id"] for r in rows] == ["sort-0", "sort-1"], "sort-0 reused, sort-1 decoded: nothing twice"
    assert [r["prompt"] for r in rows] == [ex.prompt for ex in load_examples(["sort"], "test", 2)]
    assert [(r["text"], r["seed"]) for r in rows] == [(r["text"], r["seed"]) for r in read_results(tmp_path / "fresh")]
    assert resumed["per_task"] == fresh["per_task"] and resumed["examples"] == 2


def test_a_record_of_another_prompt_under_the_same_id_is_refused(make_decoder, tmp_path):
    decoder = make_decoder("generation.max_new_tokens=4")
    evaluate(decoder, tmp_path, tasks=["arith"], limit=1, progress=False)
    record = read_results(tmp_path)[0]
    record["prompt"] = "11+11="  # as if the task's examples had changed since
    (tmp_path / "results.jsonl").write_text(json.dumps(record) + "\n")
    with pytest.raises(InputError, match=r"(?s)record 'arith-0' decoded from prompt '11\+11='.*fix: pass another"):
        evaluate(decoder, tmp_path, tasks=["arith"], limit=1, progress=False)


def test_results_numbered_across_tasks_are_refused(make_decoder, tmp_path):
    decoder = make_decoder("generation.max_new_tokens=4")
    evaluate(decoder, tmp_path, tasks=["arith"], limit=1, progress=False)
    record = read_results(tmp_path)[0]
    del record["seed"]  # as written by a release that numbered the examples across tasks
    (tmp_path / "results.jsonl").write_text(json.dumps(record) + "\n")
    with pytest.raises(InputError, match="(?s)numbered across tasks.*fix: pass another --out"):
        evaluate(decoder, tmp_path, tasks=["arith"], limit=1, progress=False)


def test_a_refused_resume_writes_nothing(make_decoder, tmp_path):
    first = make_decoder("generation.max_new_tokens=4")
    evaluate(first, tmp_path, tasks=["arith"], limit=1, progress=False)
    before = {path.name: path.read_bytes() for path in tmp_path.iterdir()}
    with pytest.raises(InputError, match="another config"):
        evaluate(make_decoder("generation.max_new_tokens=5"), tmp_path, tasks=["arith"], limit=1, progress=False)
    assert {path.name: path.read_bytes() for path in tmp_path.iterdir()} == before
    assert (tmp_path / "config.yaml").read_text().startswith(f"# config_hash: {first.config.hash}\n")


@pytest.mark.parametrize(
    ("tasks", "limit", "message"),
    [
        ([], 1, "--tasks names no task\n  fix: name one or more of"),
        (["sort", "arith", "sort"], 1, "--tasks names sort more than once\n  fix: name each task once"),
        (["sort"], 0, "--limit must be at least 1, got 0\n  fix: pass --limit 1 or more"),
    ],
)
def test_an_empty_or_repeated_selection_is_refused(make_decoder, tmp_path, tasks, limit, message):
    with pytest.raises(InputError, match=message):
        evaluate(make_decoder(), tmp_path, tasks=tasks, limit=limit, progress=False)
    assert not list(tmp_path.iterdir()), "nothing decoded or written"


def test_an_out_path_that_is_a_file_is_refused(make_decoder, tmp_path):
    (tmp_path / "taken").write_text("")
    with pytest.raises(InputError, match="--out .*taken is a file, not a directory\n  fix"):
        evaluate(make_decoder(), tmp_path / "taken", tasks=["arith"], limit=1, progress=False)
    with pytest.raises(InputError, match="(?s)--out .*taken.*cannot be created.*\n  fix"):
        evaluate(make_decoder(), tmp_path / "taken" / "sub", tasks=["arith"], limit=1, progress=False)


HOLD_THE_LOCK = """
import sys, time
from pathlib import Path
from dlm_decode.eval.lock import claim_out_dir
from dlm_decode.distributed import Ranks
with claim_out_dir(Path(sys.argv[1]), Ranks(), sys.argv[2]):
    Path(sys.argv[3]).touch()
    time.sleep(3600)  # until the test kills it
"""


@pytest.fixture
def busy_out(tmp_path):
    """A results directory whose lock another process holds (as a running `dlm-decode eval` does)."""
    import subprocess
    import sys
    import time

    out, ready = tmp_path / "run", tmp_path / "ready"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_THE_LOCK, str(out), "eval", str(ready)])
    deadline = time.monotonic() + 60
    while not ready.exists():
        assert holder.poll() is None and time.monotonic() < deadline, "the lock holder did not start"
        time.sleep(0.05)
    yield out, holder
    holder.kill()
    holder.wait()


def test_a_second_run_on_a_busy_out_is_refused_and_writes_nothing(make_decoder, busy_out, capsys):
    from dlm_decode.cli import main

    out, holder = busy_out
    with pytest.raises(
        InputError,
        match=rf"(?s)--out {out} is in use by another run \(dlm-decode eval, pid "
        rf"{holder.pid} .*record it twice.*another --out",
    ):
        evaluate(make_decoder(), out, tasks=["sort"], limit=2, progress=False)
    assert sorted(p.name for p in out.iterdir()) == [".dlm-decode.lock"], "nothing written beside the lock"
    assert (out / ".dlm-decode.lock").read_text().startswith(f"dlm-decode eval, pid {holder.pid} on ")
    assert main(["eval", "--tasks", "sort", "--limit", "2", "--out", str(out)]) == 2
    assert "is in use by another run" in capsys.readouterr().err
    assert (
        main(
            [
                "ablate",
                "--vary",
                "decoder.verification.tokens_per_step=2",
                "--tasks",
                "sort",
                "--limit",
                "2",
                "--out",
                str(out),
            ]
        )
        == 2
    )
    assert "is in use by another run (dlm-decode eval" in capsys.readouterr().err
    holder.kill()
    holder.wait()  # the lock goes with its process, even a killed one
    assert evaluate(make_decoder(), out, tasks=["sort"], limit=2, progress=False)["examples"] == 2
    assert not (out / ".dlm-decode.lock").exists(), "a finished run removes the lock file, stale or its own"
    assert sorted(p.name for p in out.iterdir()) == ["config.yaml", "results.jsonl", "summary.json"]


def test_a_run_locks_the_file_its_path_names_even_when_the_holder_before_removes_it(tmp_path, monkeypatch):
    """Between opening the lock file and locking it, the run before may end and remove the file: the lock taken
    then would be on a removed file, invisible to a third run. The run locks the file that its path names."""
    import fcntl

    from dlm_decode.distributed import Ranks
    from dlm_decode.eval.lock import LOCK, claim_out_dir

    real_flock, calls = fcntl.flock, []

    def previous_run_ends_first(handle, operation):
        calls.append(operation)
        if len(calls) == 1:
            (tmp_path / LOCK).unlink()  # what the run before does as it ends
        return real_flock(handle, operation)

    monkeypatch.setattr(fcntl, "flock", previous_run_ends_first)
    with claim_out_dir(tmp_path, Ranks(), "eval"):
        assert (tmp_path / LOCK).read_text().startswith("dlm-decode eval, pid ")
    assert not (tmp_path / LOCK).exists()


def test_a_file_system_without_flock_logs_a_warning_and_runs(make_decoder, tmp_path, monkeypatch, caplog):
    import errno
    import fcntl

    def unsupported(handle, operation):
        if operation & fcntl.LOCK_EX:
            raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", unsupported)
    with caplog.at_level(logging.WARNING, logger="dlm_decode.eval.lock"):
        summary = evaluate(make_decoder(), tmp_path / "run", tasks=["sort"], limit=1, progress=False)
    assert [(record.levelno, record.getMessage()) for record in caplog.records] == [
        (
            logging.WARNING,
            f"--out {tmp_path / 'run'}: its file system does not support flock (No locks available), "
            "so another run started on this directory would not be refused; start one run per directory",
        )
    ]
    assert summary["examples"] == 1
    assert not (tmp_path / "run" / ".dlm-decode.lock").exists()


def test_an_ablation_holds_its_directory_for_every_run(make_decoder, tmp_path, monkeypatch):
    """A second ablation on the same --out is refused at every run of the first, not only while one evaluates."""
    from dlm_decode.eval import ablation

    out = tmp_path / "ablation"
    seen = []
    real_evaluate = ablation.evaluate

    def evaluate_while_another_starts(decoder, run_dir, **kwargs):
        with pytest.raises(InputError, match="is in use by another run \\(dlm-decode ablate"):
            ablation.ablate({}, [], out, tasks=["sort"], limit=1, progress=False)
        seen.append(run_dir.name)
        return real_evaluate(decoder, run_dir, **kwargs)

    monkeypatch.setattr(ablation, "evaluate", evaluate_while_another_starts)
    ablation.ablate({}, ablation.parse_vary(["generation.seed=1"]), out, tasks=["sort"], limit=1, progress=False)
    assert len(seen) == 2


def test_the_printed_summary_explains_tokens_per_forward():
    """Newcomers read 0.85 tokens per forward for one token per step as a bug: the summary says what is counted."""
    from dlm_decode.eval.runner import format_table

    summary = {
        "config_hash": "abc",
        "examples": 2,
        "per_task": {"sort": 1.0},
        "accuracy": 1.0,
        "nfe": 12.0,
        "tokens_per_forward": 0.85,
        "ar_forwards": 0.0,
        "tokens_per_s": 100.0,
        "wall_s": 1.0,
    }
    text = format_table(summary)
    assert "tokens/forward 0.85" in text and "up to and including the first EOS" in text and "less than 1" in text
