"""The lm-eval ``dlm_decode`` model, offline, on the local task suite written by ``write_task_suite``."""

from __future__ import annotations

import json

import pytest

lm_eval = pytest.importorskip("lm_eval")

from dlm_decode import ConfigError, InputError  # noqa: E402
from dlm_decode.decoder import Decoder  # noqa: E402
from dlm_decode.eval.runner import evaluate  # noqa: E402
from dlm_decode.eval.tasks import TASKS, load_examples  # noqa: E402
from dlm_decode.integrations.lm_eval import REPEAT_STRIDE, DlmDecodeLM, cut_at, request_seeds, write_task_suite  # noqa: E402

from helpers import run_module  # noqa: E402

TASK_NAMES, LIMIT, NEW = ["arith", "sort"], 3, 8
#: A sampling decoder: answers depend on the seeds (the greedy llada.yaml gives the same answers for any seed).
SAMPLING = {"decoder.proposal": "sample", "decoder.proposal.temperature": 1.5}
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

    return simple_evaluate(
        model=model,
        tasks=[suite.stem],
        task_manager=TaskManager(include_path=str(suite.parents[1])),
        log_samples=True,
        **kwargs,
    )


def overrides(tiny_dllm_dir, **extra):
    return {
        "config": "configs/decoders/llada.yaml",
        "model.dllm.path": str(tiny_dllm_dir),
        "generation.batch_size": 4,
        **extra,
    }


def answers(samples):
    """``{(embedded task, prompt): answer}`` over every lm-eval task of the suite's samples."""
    return {(s["doc"]["task"], s["doc"]["prompt"]): s["filtered_resps"][0] for s in samples}


def texts_by_doc(results):
    return answers(s for task_samples in results["samples"].values() for s in task_samples)


def test_each_task_file_holds_its_examples_in_order(suite):
    for task in TASK_NAMES:
        docs = [json.loads(line) for line in (suite.parents[1] / f"{suite.stem}_{task}.jsonl").read_text().splitlines()]
        assert [(d["task"], d["prompt"]) for d in docs] == [
            (e.task, e.prompt) for e in load_examples([task], "test", LIMIT)
        ]


def test_a_suite_name_that_cannot_name_its_module_is_refused(tmp_path):
    with pytest.raises(
        InputError,
        match=r"(?s)suite name 'suite.v2' is not a Python identifier.*\n  fix: .*e.g. "
        r"'suite_v2'",
    ):
        write_task_suite(tmp_path, ["arith"], 1, name="suite.v2")
    assert not list(tmp_path.iterdir()), "nothing written"
    write_task_suite(tmp_path, ["arith"], 1, name="suite_v2")
    assert {p.name for p in tmp_path.iterdir()} == {
        "groups",
        "suite_v2_arith.jsonl",
        "suite_v2_arith.yaml",
        "suite_v2_utils.py",
    }


def test_tasks_of_another_selection_in_the_directory_are_refused(tmp_path):
    write_task_suite(tmp_path, TASK_NAMES, 1)
    write_task_suite(tmp_path, TASK_NAMES, 2)  # the same tasks: rewritten
    with pytest.raises(InputError, match=r"(?s)holds dlm_suite_sort.yaml.*--tasks.*fix: delete it"):
        write_task_suite(tmp_path, ["arith"], 2)
    (tmp_path / "dlm_suite.yaml").write_text("task: dlm_suite\n")  # the single task of earlier releases
    with pytest.raises(InputError, match=r"(?s)holds dlm_suite.yaml, dlm_suite_sort.yaml.*\n  fix: delete them"):
        write_task_suite(tmp_path, ["arith"], 2)


@pytest.mark.slow
def test_sampled_answers_and_accuracy_are_those_of_dlm_decode_eval(tiny_dllm_dir, suite, tmp_path):
    """Document j of each suite task is example <task>-<j> of ``dlm-decode eval``, decoded with its seed."""
    results = run_lm_eval("dlm_decode", suite, model_args=overrides(tiny_dllm_dir, **SAMPLING))
    args = [f"{k}={v}" for k, v in overrides(tiny_dllm_dir, **SAMPLING).items() if k != "config"]
    decoder = Decoder.from_config("configs/decoders/llada.yaml", [*args, f"generation.max_new_tokens={NEW}"])
    summary = evaluate(decoder, tmp_path, TASK_NAMES, LIMIT, progress=False)
    records = [json.loads(line) for line in (tmp_path / "results.jsonl").read_text().splitlines()]
    assert texts_by_doc(results) == {(r["task"], r["prompt"]): r["text"] for r in records}
    assert results["results"][suite.stem]["acc,none"] == pytest.approx(summary["accuracy"])


class SeedSpy(Decoder):
    """A real decoder that records the (prompt, seed) pairs it is asked to decode."""

    def generate(self, prompts, **kwargs):
        self.seen = [*getattr(self, "seen", []), *zip(prompts, kwargs["seeds"])]
        return super().generate(prompts, **kwargs)


def test_repeats_of_a_document_are_sampled_with_their_own_seeds(tiny_dllm_dir, tmp_path):
    """lm-eval ``repeats: 4`` sends one request 4 times: repeat r of document j gets seed j + r * REPEAT_STRIDE,
    so a sampling decoder returns 4 samples (repeat 0 keeps the seed of ``dlm-decode eval``)."""
    suite = write_task_suite(tmp_path, ["arith"], 2, max_gen_toks=NEW)
    arith = suite.parents[1] / f"{suite.stem}_arith.yaml"
    arith.write_text(arith.read_text().replace("test_split: test\n", "test_split: test\nrepeats: 4\n"))
    decoder = SeedSpy.from_config(
        "configs/decoders/llada.yaml",
        [f"model.dllm.path={tiny_dllm_dir}", "decoder.proposal=sample", "decoder.proposal.temperature=4.0"],
    )
    results = run_lm_eval(DlmDecodeLM(decoder=decoder), suite)
    prompts = [e.prompt for e in load_examples(["arith"], "test", 2)]
    assert sorted(decoder.seen) == sorted(
        (prompt, j + r * REPEAT_STRIDE) for j, prompt in enumerate(prompts) for r in range(4)
    )
    [samples] = results["samples"].values()
    assert {len(s["resps"][0]) for s in samples} == {4}
    assert any(len(set(s["resps"][0])) > 1 for s in samples), "4 samples, not one sample 4 times"


def request(task="t", doc_id=0, idx=0):
    from types import SimpleNamespace

    return SimpleNamespace(task_name=task, doc_id=doc_id, idx=idx)


def test_request_seeds_count_repeats_per_task_document_and_request():
    same = request()
    requests = [same, same, request(task="u"), request(idx=1), request(doc_id=2), same, request(doc_id=None)]
    assert request_seeds(requests, 10) == [10, 10 + REPEAT_STRIDE, 10, 10, 12, 10 + 2 * REPEAT_STRIDE, 16]
    many = [request(doc_id=d) for d in [*range(100), 19_999_999] for _ in range(100)]
    assert len({seed % 2**32 for seed in request_seeds(many, 0)}) == len(many), "a CPU generator reads 32 bits"
    with pytest.raises(
        InputError,
        match=r"(?s)repeat 1 of document 0 of task 't'.*outside.*fix: lower "
        r"generation.seed",
    ):
        request_seeds([same, same], 2**64 - 1)


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
    arith = [t for (task, _), t in texts_by_doc(results).items() if task == "arith"]
    assert len(arith) == LIMIT and all(t[:1].isdigit() and "\n" not in t for t in arith), "cut at until"
    doc_ids = [(e.prompt, j) for task in TASK_NAMES for j, e in enumerate(load_examples([task], "test", LIMIT))]
    seeded = [(prompt, seed) for prompts, _, seeds in scripted.calls for prompt, seed in zip(prompts, seeds)]
    assert sorted(seeded) == sorted(doc_ids), "seed = generation.seed (0) + doc_id within its task, once per document"
    assert {tokens for _, tokens, _ in scripted.calls} == {NEW}, "max_gen_toks is the canvas length"


@pytest.mark.slow
def test_lm_evals_chat_template_replaces_the_decoders_own(tiny_dllm_dir, suite):
    plain = run_lm_eval("dlm_decode", suite, model_args=overrides(tiny_dllm_dir))
    model = DlmDecodeLM(**overrides(tiny_dllm_dir))
    templated = run_lm_eval(model, suite, apply_chat_template=True)
    assert model.decoder.dllm.chat_template is False, "no double wrapping"
    assert texts_by_doc(templated) == texts_by_doc(plain)


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
        "model.dllm.chat_template=False",
        {"batch_size": 3, "device": "cuda:0"},
    )
    assert model.decoder.generation.batch_size == 3
    assert model.decoder.config.strategies["window"][1].size == 8, "configs joined by + compose"
    assert model.decoder.dllm.chat_template is False and model.device.type == "cpu"


@pytest.mark.slow
def test_command_line_prints_accuracy(tiny_dllm_dir, suite):
    command = [
        "dlm_decode.integrations.lm_eval",
        "--model",
        "dlm_decode",
        "--model_args",
        f"config=configs/decoders/llada.yaml,model.dllm.path={tiny_dllm_dir}",
        "--tasks",
        suite.stem,
        "--include_path",
        str(suite.parents[1]),
        "--batch_size",
        "4",
    ]
    run = run_module(*command)
    row = next(line for line in run.stdout.splitlines() if line.startswith(f"|{suite.stem} "))
    assert "|acc" in row, "the group's row"


@pytest.mark.slow
def test_plain_lm_eval_command_with_the_embedded_pair(suite, tmp_path):
    """``lm_eval --model dlm_decode --tasks DIR``: loading the task directory imports the suite's scorer, which
    registers the model, so lm-eval's own command runs it and prints the per-task accuracy of ``dlm-decode eval``."""
    command = [
        "lm_eval",
        "--model",
        "dlm_decode",
        "--model_args",
        "config=configs/decoders/llada.yaml",
        "--tasks",
        str(suite.parents[1]),
        "--batch_size",
        "16",
    ]
    run = run_module(*command)
    rows = {
        line.split("|")[1].strip(): float(line.split("|acc")[1].split("|")[2])
        for line in run.stdout.splitlines()
        if line.startswith(f"|{suite.stem}_")
    }
    decoder = Decoder.from_config("configs/decoders/llada.yaml", [f"generation.max_new_tokens={NEW}"])
    per_task = evaluate(decoder, tmp_path, TASK_NAMES, LIMIT, progress=False)["per_task"]
    assert rows == pytest.approx({f"{suite.stem}_{task}": acc for task, acc in per_task.items()}, abs=1e-4)


@pytest.mark.slow
def test_two_processes_split_the_requests(tiny_dllm_dir, suite, tmp_path):
    """torchrun + lm-eval's own sharding: the gathered samples equal a single process's."""
    single = run_lm_eval("dlm_decode", suite, model_args=overrides(tiny_dllm_dir))
    command = [
        "dlm_decode.integrations.lm_eval",
        "--model",
        "dlm_decode",
        "--model_args",
        ",".join(f"{k}={v}" for k, v in overrides(tiny_dllm_dir).items()),
        "--tasks",
        suite.stem,
        "--include_path",
        str(suite.parents[1]),
        "--log_samples",
        "--output_path",
        str(tmp_path),
    ]
    run_module(*command, processes=2)
    samples = [json.loads(line) for path in tmp_path.rglob("samples_*.jsonl") for line in path.read_text().splitlines()]
    assert sorted((s["doc"]["task"], s["doc_id"]) for s in samples) == [
        (task, j) for task in TASK_NAMES for j in range(LIMIT)
    ], "each document once"
    assert answers(samples) == texts_by_doc(single)
    assert TASKS  # the suite's checkers scored them (process_results imports dlm_decode.eval.tasks)
