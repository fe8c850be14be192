"""The checkable task suite of the embedded models.

Six tasks, each with short prompts (at most 48 characters) and variable-length answers (at most 25 characters,
so ``max_new_tokens=32`` always leaves room for the EOS that ends every answer):

========  ==========================================  ======================================
task      prompt                                      answer
========  ==========================================  ======================================
arith     ``47+85=`` / ``92-38=``                     ``132`` / ``54``
gsm       ``Ann has 7 pears, finds 5, sells 4. How    ``7+5=12`` ``\\n`` ``12-4=8`` ``\\n``
          many?``                                     ``#### 8``
sort      ``sort 7 2 9 2``                            ``2 2 7 9``
reverse   ``reverse kqzma``                           ``amzqk``
pick      ``name a fruit`` (16 phrasings)             any fruit of the list, e.g. ``mango``
sudoku    ``sudoku 1.34/34.2/2.43/4.21``              ``1234/3412/2143/4321``
========  ==========================================  ======================================

Every generator is deterministic given ``(split, n, seed)``. A problem belongs to the test split when a hash of
its task name and prompt says so (:func:`split_of`), so the two splits are disjoint by construction whatever the
seeds. Every checker recomputes the answer from the prompt alone; the stored ``answer`` is one valid reference,
never the criterion (``pick`` and, in principle, ``gsm`` accept answers other than the stored one).
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import random
import re
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import ClassVar

SPLITS = ("train", "test")
#: Fraction of problems (prompts) that belong to the test split.
TEST_FRACTION = 0.2


@dataclass(frozen=True)
class Example:
    """One problem: ``prompt`` goes into the chat template, ``answer`` is a valid reference output (no EOS)."""

    task: str
    prompt: str
    answer: str


def split_of(task: str, prompt: str) -> str:
    """The split a problem belongs to, decided by a hash of the task name and the prompt (not by any seed)."""
    digest = hashlib.sha256(f"{task}\x00{prompt}".encode()).digest()
    return "test" if int.from_bytes(digest[:8], "big") % 10_000 < TEST_FRACTION * 10_000 else "train"


class Task(ABC):
    """A family of problems with a generator and an independent checker."""

    name: ClassVar[str]

    @abstractmethod
    def sample(self, rng: random.Random) -> Example:
        """Draw one problem of either split, with a reference answer."""

    @abstractmethod
    def check(self, example: Example, output: str) -> bool:
        """Whether ``output`` (decoded text before the EOS) solves ``example.prompt``.

        Recomputes the solution from the prompt; raises ``ValueError`` if the prompt is not one of this task's.
        """

    def draw(self, rng: random.Random, split: str) -> Example:
        """Draw one problem of ``split`` (rejection sampling on :func:`split_of`)."""
        if split not in SPLITS:
            raise ValueError(f"`split` must be one of {SPLITS}, but is {split!r} instead.")
        for _ in range(100_000):
            example = self.sample(rng)
            if split_of(self.name, example.prompt) == split:
                return example
        raise RuntimeError(f"task {self.name!r} found no {split} problem in 100,000 draws")

    def generate(self, split: str, n: int, seed: int) -> list[Example]:
        """``n`` problems of ``split``, the same for the same ``(split, n, seed)`` (repeats are possible)."""
        rng = random.Random(f"{self.name}/{split}/{seed}")
        return [self.draw(rng, split) for _ in range(n)]


def _parse(pattern: re.Pattern[str], task: str, prompt: str) -> re.Match[str]:
    match = pattern.fullmatch(prompt)
    if match is None:
        raise ValueError(f"not a {task!r} prompt: {prompt!r}")
    return match


_INT = re.compile(r"0|-?[1-9][0-9]*")


def _apply(a: int, op: str, b: int) -> int:
    return a + b if op == "+" else a - b


class Arith(Task):
    """Addition or subtraction of two 2-digit numbers (carries and borrows arise naturally); answer the number.
    Subtraction keeps the larger operand first, so results are never negative."""

    name = "arith"
    _PROMPT = re.compile(r"([0-9]+)([+-])([0-9]+)=")

    def sample(self, rng: random.Random) -> Example:
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        op = rng.choice("+-")
        if op == "-" and a < b:
            a, b = b, a
        return Example(self.name, f"{a}{op}{b}=", str(_apply(a, op, b)))

    def check(self, example: Example, output: str) -> bool:
        a, op, b = _parse(self._PROMPT, self.name, example.prompt).groups()
        return _INT.fullmatch(output) is not None and int(output) == _apply(int(a), op, int(b))


class GsmLite(Task):
    """A two-step word problem; the answer shows one worked line per step, then ``#### n``.

    Every number in the prompt has one digit (a start of 2-9, then two amounts of 1-9; a subtraction never goes
    below 1) and every item and verb has five letters, so the numbers sit at fixed offsets. The worked lines are
    what makes the task hard for a masked-diffusion model: a digit of a line's result is trained with the line's
    operands visible only when the random mask happens to spare them. With two-digit numbers (and words of varying
    length) a 0.87M-parameter dLLM trained on GSM-lite alone for 2,000 steps solved 0.5% of the test problems;
    with this layout 94% (the AR model solves either).
    """

    name = "gsm"
    _NAMES = ("Ann", "Bob", "Cal", "Dan", "Eve", "Kim", "Max", "Sam", "Tom", "Zoe")
    _ITEMS = ("cards", "books", "coins", "beads", "seeds", "rocks", "pears", "bells")
    _VERBS = {"finds": "+", "earns": "+", "gains": "+", "picks": "+",
              "sells": "-", "loses": "-", "gives": "-", "drops": "-"}  # fmt: skip
    _PROMPT = re.compile(r"([A-Z][a-z]+) has ([0-9]+) ([a-z]+), ([a-z]+) ([0-9]+), ([a-z]+) ([0-9]+)\. How many\?")
    _LINE = re.compile(r"([0-9]+)([+-])([0-9]+)=([0-9]+)")

    def sample(self, rng: random.Random) -> Example:
        start = total = rng.randint(2, 9)
        steps, lines = [], []
        for _ in range(2):
            op = rng.choice("+-") if total > 1 else "+"
            verb = rng.choice([v for v, o in self._VERBS.items() if o == op])
            amount = rng.randint(1, 9) if op == "+" else rng.randint(1, min(total - 1, 9))
            lines.append(f"{total}{op}{amount}={_apply(total, op, amount)}")
            steps.append(f"{verb} {amount}")
            total = _apply(total, op, amount)
        prompt = f"{rng.choice(self._NAMES)} has {start} {rng.choice(self._ITEMS)}, {steps[0]}, {steps[1]}. How many?"
        return Example(self.name, prompt, "\n".join([*lines, f"#### {total}"]))

    def check(self, example: Example, output: str) -> bool:
        match = _parse(self._PROMPT, self.name, example.prompt)
        start, verb1, amount1, verb2, amount2 = match.group(2, 4, 5, 6, 7)
        if verb1 not in self._VERBS or verb2 not in self._VERBS:
            raise ValueError(f"not a {self.name!r} prompt (unknown verb): {example.prompt!r}")
        expected = int(start)
        for verb, amount in ((verb1, amount1), (verb2, amount2)):
            expected = _apply(expected, self._VERBS[verb], int(amount))
        *worked, final = output.split("\n")
        if len(worked) != 2 or final != f"#### {expected}":
            return False
        for line in worked:
            step = self._LINE.fullmatch(line)
            if step is None or _apply(int(step[1]), step[2], int(step[3])) != int(step[4]):
                return False
        return True


class Sort(Task):
    """Sort 3 to 7 digits (repeats allowed) in ascending order, space-separated."""

    name = "sort"
    _PROMPT = re.compile(r"sort ([0-9]+(?: [0-9]+)*)")

    def sample(self, rng: random.Random) -> Example:
        values = [rng.randint(0, 9) for _ in range(rng.randint(3, 7))]
        return Example(self.name, "sort " + " ".join(map(str, values)), " ".join(map(str, sorted(values))))

    def check(self, example: Example, output: str) -> bool:
        given = [int(v) for v in _parse(self._PROMPT, self.name, example.prompt)[1].split(" ")]
        parts = output.split(" ")
        if not all(_INT.fullmatch(p) and not p.startswith("-") for p in parts):
            return False
        values = [int(p) for p in parts]
        return Counter(values) == Counter(given) and all(x <= y for x, y in itertools.pairwise(values))


class Reverse(Task):
    """Reverse a string of 3 to 7 lowercase letters."""

    name = "reverse"
    _PROMPT = re.compile(r"reverse ([a-z]+)")

    def sample(self, rng: random.Random) -> Example:
        text = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 7)))
        return Example(self.name, f"reverse {text}", text[::-1])

    def check(self, example: Example, output: str) -> bool:
        return output == _parse(self._PROMPT, self.name, example.prompt)[1][::-1]


class Pick(Task):
    """Name any word of a category (multi-valid: the training answers are uniform over the category's words).

    Committing the letters of several words at once mixes them into a non-word, which the checker rejects: this
    is the task where parallel decoding loses coherence. A problem is a (phrasing, category) pair; the test split
    holds phrasings not seen with that category in training.
    """

    name = "pick"
    CATEGORIES: ClassVar[dict[str, tuple[str, ...]]] = {
        "fruit": ("apple", "banana", "cherry", "grape", "lemon", "mango", "peach", "plum"),
        "color": ("red", "blue", "green", "yellow", "purple", "black", "white", "brown"),
        "tool": ("hammer", "saw", "drill", "wrench", "pliers", "chisel", "shovel", "rake"),
        "bird": ("robin", "eagle", "owl", "crow", "swan", "parrot", "pigeon", "hawk"),
        "fish": ("salmon", "trout", "tuna", "cod", "bass", "carp", "shark", "herring"),
        "tree": ("oak", "pine", "maple", "birch", "cedar", "willow", "elm", "spruce"),
        "metal": ("iron", "gold", "silver", "copper", "tin", "zinc", "nickel", "lead"),
        "sport": ("tennis", "soccer", "golf", "rugby", "hockey", "boxing", "rowing", "skiing"),
        "drink": ("tea", "coffee", "juice", "milk", "water", "cocoa", "soda", "lemonade"),
        "planet": ("mars", "venus", "earth", "jupiter", "saturn", "uranus", "neptune", "mercury"),
    }
    PHRASINGS = ("name a {}", "give a {}", "say a {}", "pick a {}", "any {}?", "one {}, please", "tell me a {}",
                 "a {}:", "a {} please", "some {}?", "{}?", "one {} now", "write a {}", "your {}?", "list a {}",
                 "a {}, any")  # fmt: skip

    @functools.cached_property
    def _category_of(self) -> dict[str, str]:
        return {p.format(c): c for p in self.PHRASINGS for c in self.CATEGORIES}

    def sample(self, rng: random.Random) -> Example:
        category = rng.choice(sorted(self.CATEGORIES))
        prompt = rng.choice(self.PHRASINGS).format(category)
        return Example(self.name, prompt, rng.choice(self.CATEGORIES[category]))

    def check(self, example: Example, output: str) -> bool:
        category = self._category_of.get(example.prompt)
        if category is None:
            raise ValueError(f"not a {self.name!r} prompt: {example.prompt!r}")
        return output in self.CATEGORIES[category]


@functools.cache
def sudoku_solutions() -> tuple[str, ...]:
    """All 288 valid 4x4 sudoku grids, each as 16 digits row by row."""
    grids = []
    for rows in itertools.product(itertools.permutations("1234"), repeat=4):
        columns_ok = all(len(set(column)) == 4 for column in zip(*rows))
        boxes_ok = all(len({rows[r + i][c + j] for i in (0, 1) for j in (0, 1)}) == 4 for r in (0, 2) for c in (0, 2))
        if columns_ok and boxes_ok:
            grids.append("".join("".join(row) for row in rows))
    return tuple(grids)


@functools.cache
def _solutions_with() -> dict[tuple[int, str], int]:
    """For each ``(cell, digit)``, the set of solutions (bits indexing :func:`sudoku_solutions`) with it."""
    masks: dict[tuple[int, str], int] = {}
    for bit, grid in enumerate(sudoku_solutions()):
        for cell, digit in enumerate(grid):
            masks[cell, digit] = masks.get((cell, digit), 0) | 1 << bit
    return masks


def count_sudoku_solutions(puzzle: str) -> int:
    """How many valid grids agree with ``puzzle`` (16 characters, ``.`` for a blank)."""
    matching = (1 << len(sudoku_solutions())) - 1
    for cell, digit in enumerate(puzzle):
        if digit != ".":
            matching &= _solutions_with()[cell, digit]
    return matching.bit_count()


def _rows(cells: str) -> str:
    return "/".join(cells[i : i + 4] for i in range(0, 16, 4))


class Sudoku(Task):
    """Complete a 4x4 sudoku with 4 to 7 blanks (``.``) and a unique solution; rows are separated by ``/``."""

    name = "sudoku"
    MIN_BLANKS, MAX_BLANKS = 4, 7
    _PROMPT = re.compile(r"sudoku ([1-4.]{4}(?:/[1-4.]{4}){3})")
    _GRID = re.compile(r"[1-4]{4}(?:/[1-4]{4}){3}")

    def sample(self, rng: random.Random) -> Example:
        solutions = sudoku_solutions()
        solution = rng.choice(solutions)
        blanks = rng.randint(self.MIN_BLANKS, self.MAX_BLANKS)
        while True:
            holes = set(rng.sample(range(16), blanks))
            puzzle = "".join("." if i in holes else d for i, d in enumerate(solution))
            if count_sudoku_solutions(puzzle) == 1:
                return Example(self.name, f"sudoku {_rows(puzzle)}", _rows(solution))

    @staticmethod
    def _agrees(grid: str, puzzle: str) -> bool:
        return all(p in (".", g) for p, g in zip(puzzle, grid, strict=True))

    def check(self, example: Example, output: str) -> bool:
        puzzle = _parse(self._PROMPT, self.name, example.prompt)[1].replace("/", "")
        if self._GRID.fullmatch(output) is None:
            return False
        grid = output.replace("/", "")
        rows = [grid[i : i + 4] for i in range(0, 16, 4)]
        columns = ["".join(row[c] for row in rows) for c in range(4)]
        boxes = ["".join(rows[r + i][c + j] for i in (0, 1) for j in (0, 1)) for r in (0, 2) for c in (0, 2)]
        return all(set(group) == set("1234") for group in rows + columns + boxes) and self._agrees(grid, puzzle)


#: The task suite by name (the names are a contract of configs and result files).
TASKS: dict[str, Task] = {task.name: task for task in (Arith(), GsmLite(), Sort(), Reverse(), Pick(), Sudoku())}


def get_task(name: str) -> Task:
    """The task called ``name``; an unknown name raises ``KeyError`` listing the available ones."""
    try:
        return TASKS[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r}; available tasks: {', '.join(TASKS)}") from None


def load_examples(tasks: Iterable[str] | None, split: str, n_per_task: int, seed: int = 0) -> list[Example]:
    """``n_per_task`` examples of each task in ``tasks`` (all tasks when ``None``), task by task."""
    names: Sequence[str] = list(TASKS) if tasks is None else list(tasks)
    return [example for name in names for example in get_task(name).generate(split, n_per_task, seed)]
