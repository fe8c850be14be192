"""The task suite: generators against their independent checkers, determinism, split disjointness."""

from __future__ import annotations

import dataclasses
import re
from collections import Counter

import pytest

from dlm_decode.eval.tasks import (
    TASKS,
    Example,
    Pick,
    Sudoku,
    count_sudoku_solutions,
    get_task,
    load_examples,
    split_of,
    sudoku_solutions,
)

N = 300


@pytest.fixture(scope="module", params=sorted(TASKS))
def task(request):
    return TASKS[request.param]


@pytest.fixture(scope="module")
def examples(task):
    return {split: task.generate(split, N, seed=0) for split in ("train", "test")}


def test_task_names_are_the_contract():
    assert list(TASKS) == ["arith", "gsm", "sort", "reverse", "pick", "sudoku"]
    assert all(name == task.name for name, task in TASKS.items())


def test_reference_answers_pass_the_checker(task, examples):
    for split, batch in examples.items():
        assert len(batch) == N
        for example in batch:
            assert example.task == task.name
            assert task.check(example, example.answer), (split, example)


def test_prompts_and_answers_stay_short(examples):
    for example in examples["train"] + examples["test"]:
        assert 0 < len(example.answer) <= 25 and len(example.prompt) <= 48, example
        assert example.answer.isascii() and example.prompt.isascii()


def test_generation_is_deterministic_and_seeded(task):
    assert task.generate("train", 50, seed=3) == task.generate("train", 50, seed=3)
    assert task.generate("test", 50, seed=3) == task.generate("test", 50, seed=3)
    assert task.generate("train", 50, seed=3) != task.generate("train", 50, seed=4)


def test_splits_are_disjoint_by_construction(task, examples):
    assert all(split_of(task.name, e.prompt) == "test" for e in examples["test"])
    assert all(split_of(task.name, e.prompt) == "train" for e in examples["train"])
    other_seed = task.generate("train", N, seed=1)
    assert not {e.prompt for e in examples["test"]} & {e.prompt for e in examples["train"] + other_seed}


def test_split_rejects_unknown_names():
    with pytest.raises(ValueError, match="split"):
        get_task("arith").generate("validation", 1, seed=0)


def _corrupt(example: Example) -> list[str]:
    """Wrong outputs, specific to each task, that a checker must reject."""
    answer = example.answer
    wrong = ["", answer + "1", answer[:-1]]
    if example.task == "arith":
        wrong += [str(int(answer) + 1), str(int(answer) - 10), "0" + answer]
    elif example.task == "gsm":
        *worked, final = answer.split("\n")
        value = int(final.removeprefix("#### "))
        wrong += ["\n".join([*worked, f"#### {value + 1}"]), f"#### {value}", "\n".join([worked[0], f"#### {value}"])]
        a, rest = worked[0].split("=")
        wrong += ["\n".join([f"{a}={int(rest) + 1}", worked[1], final])]  # a false worked line
    elif example.task == "sort":
        values = answer.split(" ")
        wrong += [" ".join(reversed(values)) if values != values[::-1] else answer + " 0", " ".join(values[1:])]
    elif example.task == "reverse":
        prompt_text = example.prompt.removeprefix("reverse ")
        if prompt_text != prompt_text[::-1]:
            wrong.append(prompt_text)
    elif example.task == "pick":
        other = next(words for words in Pick.CATEGORIES.values() if answer not in words)
        wrong += [other[0], answer.upper()]
    elif example.task == "sudoku":
        rows = answer.split("/")
        swapped_rows = "/".join([rows[1], rows[0], *rows[2:]])  # still a valid grid, but not the givens'
        wrong += ["/".join([rows[0][::-1], *rows[1:]]), swapped_rows, answer.replace("/", "")]
    return [w for w in wrong if w != answer]


def test_checkers_reject_wrong_outputs(task, examples):
    for example in examples["test"][:100]:
        for output in _corrupt(example):
            assert not task.check(example, output), (example, output)


def test_checkers_recompute_instead_of_comparing_to_the_stored_answer(task, examples):
    for example in examples["test"][:50]:
        tampered = dataclasses.replace(example, answer="tampered")
        assert task.check(tampered, example.answer)
        assert not task.check(tampered, "tampered")


def test_checkers_refuse_foreign_prompts(task):
    foreign = Example(task.name, "what is this?", "nothing")
    with pytest.raises(ValueError, match=task.name):
        task.check(foreign, "nothing")


def test_arith_covers_carries_and_both_operations():
    examples = get_task("arith").generate("train", 500, seed=0)
    assert {"+" if "+" in e.prompt else "-" for e in examples} == {"+", "-"}
    carries = 0
    for example in examples:
        a, b = (int(x) for x in example.prompt.rstrip("=").replace("-", "+").split("+"))
        carries += "+" in example.prompt and (a % 10 + b % 10 >= 10)
    assert carries > 50


def test_gsm_accepts_any_true_worked_lines():
    example = Example("gsm", "Ann has 7 pears, finds 5, sells 4. How many?", "7+5=12\n12-4=8\n#### 8")
    assert get_task("gsm").check(example, "5+7=12\n12-4=8\n#### 8")
    assert not get_task("gsm").check(example, "7+5=12\n12-4=9\n#### 8")
    assert not get_task("gsm").check(example, "7+5=12\n12-4=8\n#### 9")


def test_gsm_keeps_its_numbers_at_fixed_offsets():
    """One-digit numbers and five-letter words (see GsmLite): every prompt with a name of three letters has its
    numbers at the same columns, and the answer holds two worked lines with both operations over the sample."""
    examples = get_task("gsm").generate("train", 500, seed=0)
    columns = {tuple(i for i, ch in enumerate(e.prompt) if ch.isdigit()) for e in examples}
    assert columns == {(8, 23, 32)}
    operations = {op for e in examples for op in re.findall(r"[0-9]([+-])[0-9]", e.answer)}
    assert operations == {"+", "-"}
    assert all(int(e.answer.rsplit(" ", 1)[1]) >= 1 for e in examples)  # a subtraction never goes below 1


def test_pick_is_multimodal_and_rejects_mixed_words():
    task = get_task("pick")
    examples = task.generate("train", 8000, seed=0)  # about 60 draws of each train prompt
    by_prompt = Counter(e.prompt for e in examples)
    prompt = by_prompt.most_common(1)[0][0]
    answers = Counter(e.answer for e in examples if e.prompt == prompt)
    assert len(answers) >= 6 and max(answers.values()) / sum(answers.values()) < 0.3
    example = Example("pick", "name a fruit", "mango")
    assert task.check(example, "grape") and task.check(example, "lemon")
    assert not task.check(example, "grmon")  # letters of two fruits mixed
    assert not task.check(example, "salmon")  # a word of another category


def test_pick_categories_are_unambiguous_and_in_both_splits():
    words = [w for ws in Pick.CATEGORIES.values() for w in ws]
    assert len(words) == len(set(words))
    assert all(3 <= len(w) <= 8 and w.isalpha() and w.islower() for w in words)
    prompts = {(split_of("pick", p.format(c)), c) for p in Pick.PHRASINGS for c in Pick.CATEGORIES}
    assert {c for s, c in prompts if s == "train"} == set(Pick.CATEGORIES)
    assert {c for s, c in prompts if s == "test"}


def test_sudoku_puzzles_have_unique_solutions():
    assert len(sudoku_solutions()) == 288
    for example in get_task("sudoku").generate("test", 100, seed=0):
        puzzle = example.prompt.removeprefix("sudoku ").replace("/", "")
        assert Sudoku.MIN_BLANKS <= puzzle.count(".") <= Sudoku.MAX_BLANKS
        assert count_sudoku_solutions(puzzle) == 1
    assert count_sudoku_solutions("." * 16) == 288


def test_load_examples():
    batch = load_examples(["sort", "pick"], "test", n_per_task=3, seed=0)
    assert [e.task for e in batch] == ["sort"] * 3 + ["pick"] * 3
    assert batch[:3] == get_task("sort").generate("test", 3, seed=0)
    assert len(load_examples(None, "train", 2)) == 2 * len(TASKS)
    with pytest.raises(KeyError, match="available tasks: arith"):
        load_examples(["chess"], "test", 1)
