"""The lm-eval ``dlm_decode`` model, offline, on the local task suite written by ``write_task_suite``."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

lm_eval = pytest.importorskip("lm_eval")

from dlm_decode import ConfigError  # noqa: E402
from dlm_decode.decoder import Decoder  # noqa: E402
from dlm_decode.eval.runner import evaluate  # noqa: E402
from dlm_decode.eval.tasks import TASKS, load_examples  # noqa: E402
from dlm_decode.integrations.lm_eval import DlmDecodeLM, cut_at, write_task_suite  # noqa: E402

TASK_NAMES, LIMIT, NEW = ["arith", "sort"], 3, 8
OFFLINE = {"HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1"}


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    for key, value in OFFLINE.items():
        monkeypatch.setenv(key, value)


@pytest.fixture(scope="module")
def suite(tmp_path_factory):
    return write_task_suite(tmp_path_factory.mktemp("tasks"), TASK_NAMES, LIMIT, max_gen_toks=NEW)


def run_lm_eval(model, suite, **kwargs):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    return simple_evaluate(model=model, tasks=[suite.stem], task_manager=TaskManager(include_path=str(suite.parent)),
                           log_samples=True, **kwargs)


def overrides(tiny_dllm_dir):
    return {"config": "configs/decoders/llada.yaml", "model.dllm.path": str(tiny_dllm_dir),
            "generation.batch_size": 4}


def texts_by_doc(results, name):
    return {s["doc_id"]: s["filtered_resps"][0] for s in results["samples"][name]}


def test_the_task_file_holds_the_suite_in_order(suite):
    docs = [json.loads(line) for line in suite.with_suffix(".jsonl").read_text().splitlines()]
    assert [(d["task"], d["prompt"]) for d in docs] == [(e.task, e.prompt) for e in
                                                       load_examples(TASK_NAMES, "test", LIMIT)]


def test_generate_until_gives_the_answers_and_accuracy_of_dlm_decode_eval(tiny_dllm_dir, suite, tmp_path):
    results = run_lm_eval("dlm_decode", suite, model_args=overrides(tiny_dllm_dir))
    args = [f"{k}={v}" for k, v in overrides(tiny_dllm_dir).items() if k != "config"]
    decoder = Decoder.from_config("configs/decoders/llada.yaml", [*args, f"generation.max_new_tokens={NEW}"])
    summary = evaluate(decoder, tmp_path, TASK_NAMES, LIMIT, progress=False)
    records = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert texts_by_doc(results, suite.stem) == {i: r["text"] for i, r in enumerate(records)}
    assert results["results"][suite.stem]["acc,none"] == pytest.approx(summary["accuracy"])


class ScriptedDecoder:
    """Answers arith correctly and sort wrongly, through the Decoder's generate() signature."""

    def __init__(self):
        from dlm_decode.config import load_config

        self.generation = load_config({}).config.generation
        self.calls = []

    def generate(self, prompts, *, max_new_tokens=None, seeds=None):
        from types import SimpleNamespace

        self.calls.append((list(prompts), max_new_tokens, list(seeds)))
        answers = {e.prompt: e for e in load_examples(TASK_NAMES, "test", LIMIT)}
        texts = [answers[p].answer + "\nrest" if answers[p].task == "arith" else "nonsense" for p in prompts]
        return SimpleNamespace(texts=texts)


def test_accuracy_is_scored_by_the_task_checkers_and_until_cuts(suite):
    scripted = ScriptedDecoder()
    results = run_lm_eval(DlmDecodeLM(decoder=scripted), suite, gen_kwargs={"until": ["\n"]})
    assert results["results"][suite.stem]["acc,none"] == pytest.approx(0.5)
    arith = [t for t in texts_by_doc(results, suite.stem).values() if t[:1].isdigit()]
    assert len(arith) == LIMIT and all("\n" not in t for t in arith), "cut at until"
    doc_ids = {e.prompt: i for i, e in enumerate(load_examples(TASK_NAMES, "test", LIMIT))}
    seeded = [(prompt, seed) for prompts, _, seeds in scripted.calls for prompt, seed in zip(prompts, seeds)]
    assert sorted(seeded) == sorted(doc_ids.items()), "seed = generation.seed (0) + doc_id, once per document"
    assert {tokens for _, tokens, _ in scripted.calls} == {NEW}, "max_gen_toks is the canvas length"


def test_lm_evals_chat_template_replaces_the_decoders_own(tiny_dllm_dir, suite):
    plain = run_lm_eval("dlm_decode", suite, model_args=overrides(tiny_dllm_dir))
    model = DlmDecodeLM(**overrides(tiny_dllm_dir))
    templated = run_lm_eval(model, suite, apply_chat_template=True)
    assert model.decoder.dllm.chat_template is False, "no double wrapping"
    assert texts_by_doc(templated, suite.stem) == texts_by_doc(plain, suite.stem)


def test_cut_at():
    assert cut_at("12\n34</s>5", ["</s>", "\n"]) == "12"
    assert cut_at("abc", None) == cut_at("abc", []) == "abc"
    assert cut_at("a.b", ".") == "a"


def test_loglikelihood_tasks_are_refused_with_a_fix(tiny_dllm_dir):
    model = DlmDecodeLM(**overrides(tiny_dllm_dir))
    with pytest.raises(NotImplementedError, match="(?s)generate_until.*fix"):
        model.loglikelihood([])
    with pytest.raises(NotImplementedError, match="loglikelihood_rolling"):
        model.loglikelihood_rolling([])


def test_model_args_name_their_fix(tiny_dllm_dir):
    with pytest.raises(ConfigError, match="(?s)pretrained.*config=FILE"):
        DlmDecodeLM.create_from_arg_string(f"pretrained={tiny_dllm_dir}")
    model = DlmDecodeLM.create_from_arg_string(
        f"config=configs/decoders/llada.yaml+configs/strategies/window/blocks-8.yaml,model.dllm.path={tiny_dllm_dir},"
        "model.dllm.chat_template=False", {"batch_size": 3, "device": "cuda:0"})
    assert model.decoder.generation.batch_size == 3
    assert model.decoder.config.strategies["window"][1].size == 8, "configs joined by + compose"
    assert model.decoder.dllm.chat_template is False and model.device.type == "cpu"


def test_command_line_prints_accuracy(tiny_dllm_dir, suite):
    command = [sys.executable, "-m", "dlm_decode.integrations.lm_eval", "--model", "dlm_decode", "--model_args",
               f"config=configs/decoders/llada.yaml,model.dllm.path={tiny_dllm_dir}", "--tasks", suite.stem,
               "--include_path", str(suite.parent), "--batch_size", "4"]
    run = subprocess.run(command, env={**os.environ, **OFFLINE, "OMP_NUM_THREADS": "1"}, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    row = next(line for line in run.stdout.splitlines() if line.startswith(f"|{suite.stem}"))
    assert "|acc" in row


def test_plain_lm_eval_command_with_the_embedded_pair(suite, tmp_path):
    """``lm_eval --model dlm_decode --tasks DIR``: loading the task directory imports the suite's scorer, which
    registers the model, so lm-eval's own command runs it and prints the accuracy of ``dlm-decode eval``."""
    command = [sys.executable, "-m", "lm_eval", "--model", "dlm_decode", "--model_args",
               "config=configs/decoders/llada.yaml", "--tasks", str(suite.parent), "--batch_size", "16"]
    run = subprocess.run(command, env={**os.environ, **OFFLINE, "OMP_NUM_THREADS": "1"}, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    row = next(line for line in run.stdout.splitlines() if line.startswith(f"|{suite.stem}"))
    accuracy = float(row.split("|acc")[1].split("|")[2])
    decoder = Decoder.from_config("configs/decoders/llada.yaml", [f"generation.max_new_tokens={NEW}"])
    assert accuracy == pytest.approx(evaluate(decoder, tmp_path, TASK_NAMES, LIMIT, progress=False)["accuracy"],
                                     abs=1e-4)


def test_two_processes_split_the_requests(tiny_dllm_dir, suite, tmp_path):
    """torchrun + lm-eval's own sharding: the gathered samples equal a single process's."""
    single = run_lm_eval("dlm_decode", suite, model_args=overrides(tiny_dllm_dir))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc_per_node",
               "2", "-m", "dlm_decode.integrations.lm_eval", "--model", "dlm_decode", "--model_args",
               ",".join(f"{k}={v}" for k, v in overrides(tiny_dllm_dir).items()), "--tasks", suite.stem,
               "--include_path", str(suite.parent), "--log_samples", "--output_path", str(tmp_path)]
    run = subprocess.run(command, env={**os.environ, **OFFLINE, "OMP_NUM_THREADS": "1"}, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    samples = [json.loads(line) for path in tmp_path.rglob(f"samples_{suite.stem}_*.jsonl")
               for line in path.read_text().splitlines()]
    assert sorted(s["doc_id"] for s in samples) == list(range(len(TASK_NAMES) * LIMIT)), "each document once"
    assert {s["doc_id"]: s["filtered_resps"][0] for s in samples} == texts_by_doc(single, suite.stem)
    assert TASKS  # the suite's checkers scored them (process_results imports dlm_decode.eval.tasks)
