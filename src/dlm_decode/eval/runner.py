"""Evaluate a decoder on the task suite: batched, resumable, with a summary table.

Results go to ``DIR/results.jsonl`` one line per example as each batch finishes, so an interrupted run loses
at most one batch and a rerun with the same config and model weights resumes where it stopped (results of
another config, or of a retrained checkpoint under the same config, are refused). An example's id is
``<task>-<j>``: the ``j``-th example of that task's split, whatever the other ``--tasks`` and ``--limit``, so
a rerun with more tasks or a larger limit reuses the examples already decoded. That example is decoded with
seed ``generation.seed + j`` whatever the batch it lands in, so resumed and uninterrupted runs agree; each
record stores its ``prompt`` and ``seed``, and a record whose prompt or seed differs from the example of its id
is refused. Nothing is written in ``DIR`` before its records are checked: then ``DIR/config.yaml``, and
``DIR/summary.json`` at the end. Under ``torchrun``/``accelerate launch`` the examples are split by rank and
gathered on rank 0 (see :func:`evaluate`).

One run at a time per directory: the run holds the directory's lock (:mod:`dlm_decode.eval.lock`).
"""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path

from tqdm.auto import tqdm

from dlm_decode.decoder import Decoder
from dlm_decode.errors import InputError
from dlm_decode.eval.lock import claim_out_dir
from dlm_decode.eval.tasks import TASKS, Example, load_examples

RESULTS, SUMMARY, CONFIG = "results.jsonl", "summary.json", "config.yaml"


#: What every record of a results directory must share with the run that resumes it, and how to say that a
#: record does not.
RUN_IDENTITY = {
    "config_hash": "another config",
    "weights_hash": "other model weights (a checkpoint retrained or replaced at the same path, or results written "
    "before weights hashes were recorded)",
    "split": "another split of the task suite",
}


#: The fix of the error for a results directory that cannot be resumed.
_USE_ANOTHER_OUT = "pass another --out directory (or delete this one)"


def _read_results(path: Path, identity: dict[str, str]) -> dict[str, dict]:
    """Finished records by example id; refuses records whose :data:`RUN_IDENTITY` keys differ from ``identity``
    and records without a ``seed`` (written by releases that numbered the examples across tasks)."""
    done: dict[str, dict] = {}
    if not path.exists():
        return done
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by an interruption: that example is decoded again
            for key, value in identity.items():
                if record.get(key) != value:
                    raise InputError(
                        f"{path} holds results of {RUN_IDENTITY[key]} ({key} {record.get(key)!r}, now {value!r})",
                        fix=_USE_ANOTHER_OUT,
                    )
            if "seed" not in record:
                raise InputError(
                    f"{path} holds results numbered across tasks by an earlier release (record {record['id']!r} has "
                    "no seed), so an id may name another example now",
                    fix=_USE_ANOTHER_OUT,
                )
            done[record["id"]] = record
    return done


def summarize(records: Sequence[dict], identity: dict[str, str]) -> dict:
    """Accuracy per task and overall (mean over tasks), and speed over all examples.

    ``tokens_per_forward`` = generated tokens / dLLM forwards, ``tokens_per_s`` = generated tokens / decoding
    seconds, ``nfe`` and ``ar_forwards`` are means per example, ``wall_s`` the decoding seconds in total, and
    ``commits_histogram`` maps "tokens committed in a step" to how many steps did so (APD's accepted tokens per
    iteration), ``extra`` holds the per-example means of the plugins' row statistics (e.g. WINO's revocations
    and flip-flops), and the ``identity`` keys (config hash, weights hash, split) are copied in.
    """
    by_task: dict[str, list[bool]] = defaultdict(list)
    for record in records:
        by_task[record["task"]].append(record["correct"])
    per_task = {task: sum(v) / len(v) for task, v in sorted(by_task.items())}
    histogram = Counter(c for record in records for c in record["commits_per_step"])
    tokens = sum(r["generated_tokens"] for r in records)
    nfe = sum(r["nfe"] for r in records)
    wall = sum(r["batch_wall_share_s"] for r in records)
    count = max(len(records), 1)
    return {
        "accuracy": sum(per_task.values()) / max(len(per_task), 1),
        "per_task": per_task,
        "examples": len(records),
        "nfe": nfe / count,
        "tokens_per_forward": tokens / max(nfe, 1),
        "ar_forwards": sum(r["ar_forwards"] for r in records) / count,
        "generated_tokens": tokens / count,
        "tokens_per_s": tokens / wall if wall > 0 else 0.0,
        "wall_s": wall,
        "commits_histogram": {str(k): histogram[k] for k in sorted(histogram)},
        "extra": {
            name: sum(r["extra"].get(name, 0.0) for r in records) / count
            for name in sorted({name for r in records for name in r["extra"]})
        },
        **identity,
    }


#: What tokens per forward counts, printed under every summary (it is below 1 for one token per step).
TOKENS_PER_FORWARD_NOTE = (
    "(tokens/forward: generated tokens, up to and including the first EOS, per dLLM forward; one token per step "
    "gives less than 1 when steps commit the padding after the EOS, which is not counted)"
)


def format_table(summary: dict) -> str:
    """A plain-text table of a summary."""
    lines = [f"config {summary['config_hash']}  examples {summary['examples']}", f"{'task':<10} {'accuracy':>8}"]
    lines += [f"{task:<10} {100 * acc:>7.1f}%" for task, acc in summary["per_task"].items()]
    lines.append(f"{'mean':<10} {100 * summary['accuracy']:>7.1f}%")
    lines.append(
        f"NFE {summary['nfe']:.2f}  tokens/forward {summary['tokens_per_forward']:.2f}  "
        f"AR forwards {summary['ar_forwards']:.2f}  tokens/s {summary['tokens_per_s']:.1f}  "
        f"wall {summary['wall_s']:.1f} s"
    )
    if summary.get("extra"):
        lines.append("  ".join(f"{name} {value:.2f}" for name, value in summary["extra"].items()))
    lines.append(TOKENS_PER_FORWARD_NOTE)
    return "\n".join(lines)


def evaluate(
    decoder: Decoder,
    out_dir: str | Path,
    tasks: Sequence[str] | None = None,
    limit: int = 100,
    split: str = "test",
    data_seed: int = 0,
    progress: bool = True,
) -> dict:
    """Decode the first ``limit`` examples of each task (every task when ``tasks`` is None), check them, and write
    the results under ``out_dir`` (see the module docstring for ids, seeds and resuming).

    **Several processes.** Under ``torchrun --nproc_per_node N`` / ``accelerate launch --num_processes N`` (the
    ``RANK``/``WORLD_SIZE`` environment, see :mod:`dlm_decode.distributed`) every rank builds the same example
    list, skips what earlier runs finished, and decodes every ``N``-th remaining example from its rank on (each
    example once, with the seed of its id, so the results equal a single process's); it appends its records
    to ``out_dir/results.rank<r>.jsonl`` as batches finish (resumable per rank), and rank 0 gathers the records,
    writes them to ``results.jsonl`` in example order, removes the rank files and writes the summary (with
    ``decoded_per_rank``: the examples each rank decoded in this run), which every rank returns. ``out_dir``
    must be shared by the ranks (one node, or a shared file system).

    :return: the summary (also written to ``out_dir/summary.json``).
    """
    from dlm_decode.distributed import broadcast_object, distributed, gather_objects

    names = check_selection(tasks, limit)
    out = check_out_dir(out_dir)
    identity = {"config_hash": decoder.config.hash, "weights_hash": decoder.weights_hash, "split": split}
    with distributed() as ranks, claim_out_dir(out, ranks, "eval"):
        done = _read_results(out / RESULTS, identity)
        for partial in sorted(out.glob(RANK_RESULTS.format(rank="*"))):
            done.update(_read_results(partial, identity))
        examples, seeds = [], {}
        for name in names:
            for index, example in enumerate(load_examples([name], split, limit, data_seed)):
                key = f"{name}-{index}"
                examples.append((key, example))
                seeds[key] = decoder.generation.seed + index
        for key, example in examples:
            if key in done:
                _check_same_example(out, done[key], example, seeds[key])
        if ranks.main:
            (out / CONFIG).write_text(
                f"# config_hash: {identity['config_hash']}\n{decoder.config.yaml}", encoding="utf-8"
            )
        todo = [(key, ex) for key, ex in examples if key not in done][ranks.rank :: ranks.world_size]
        path = out / (RESULTS if ranks.world_size == 1 else RANK_RESULTS.format(rank=ranks.rank))
        initial = len(examples) - len(todo) if ranks.world_size == 1 else 0
        mine = _decode(
            decoder,
            todo,
            seeds,
            path,
            progress and ranks.main,
            total=initial + len(todo),
            initial=initial,
            rank=None if ranks.world_size == 1 else ranks.rank,
            identity=identity,
        )
        gathered = gather_objects(mine, ranks)
        summary = None
        if ranks.main:
            assert gathered is not None  # the main rank receives every rank's records
            for records in gathered:
                done.update((record["id"], record) for record in records)
            if ranks.world_size > 1:
                _merge_rank_files(out, [done[key] for key, _ in examples], gathered, identity)
            summary = summarize([done[key] for key, _ in examples], identity)
            if ranks.world_size > 1:
                summary["decoded_per_rank"] = [len(records) for records in gathered]
            (out / SUMMARY).write_text(json.dumps(summary, indent=2), encoding="utf-8")
        return broadcast_object(summary, ranks)


def check_out_dir(out_dir: str | Path) -> Path:
    """``out_dir`` as a path, after checking it is not an existing file (it is created when missing).

    :raises InputError: naming ``--out``.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InputError(
            f"--out {out} is a file, not a directory", fix="pass a directory path (it is created if missing)"
        )
    return out


def check_selection(tasks: Sequence[str] | None, limit: int) -> list[str]:
    """The task names to evaluate (every task when ``tasks`` is None), after checking them and ``limit``.

    :raises InputError: for an empty, unknown or repeated task name, or a ``limit`` below 1.
    """
    names = list(TASKS) if tasks is None else list(tasks)
    if not names:
        raise InputError(
            "--tasks names no task",
            fix=f"name one or more of {', '.join(TASKS)} (or leave --tasks out to run them all)",
        )
    unknown = [name for name in names if name not in TASKS]
    if unknown:
        raise InputError(f"unknown task(s) {', '.join(unknown)}", fix=f"choose from {', '.join(TASKS)}")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise InputError(f"--tasks names {', '.join(repeated)} more than once", fix="name each task once")
    if limit < 1:
        raise InputError(f"--limit must be at least 1, got {limit}", fix="pass --limit 1 or more")
    return names


def _check_same_example(out: Path, record: dict, example: Example, seed: int) -> None:
    """Refuse a finished record that was decoded from another prompt or seed than the example of its id."""
    if (record["prompt"], record["seed"]) != (example.prompt, seed):
        raise InputError(
            f"{out} holds record {record['id']!r} decoded from prompt {record['prompt']!r} with seed "
            f"{record['seed']}, but that id is now prompt {example.prompt!r} with seed {seed} (the task's examples "
            "changed, e.g. another data seed)",
            fix=_USE_ANOTHER_OUT,
        )


#: Per-rank results file of a multi-process run (merged into ``results.jsonl`` by rank 0 at the end).
RANK_RESULTS = "results.rank{rank}.jsonl"


def _decode(
    decoder: Decoder,
    todo: list,
    seeds: dict[str, int],
    path: Path,
    progress: bool,
    total: int,
    initial: int,
    rank: int | None,
    identity: dict[str, str],
) -> list[dict]:
    """Decode ``todo`` in batches, appending each batch's records (stamped with ``identity``) to ``path``;
    returns the new records.

    :param rank: recorded in each record of a multi-process run (None in a single process).
    """
    batch = decoder.generation.batch_size
    records = []
    with (
        path.open("a", encoding="utf-8") as handle,
        tqdm(total=total, initial=initial, desc="eval", unit="ex", disable=not progress) as bar,
    ):
        for first in range(0, len(todo), batch):
            chunk = todo[first : first + batch]
            output = decoder.generate(
                [ex.prompt for _, ex in chunk], seeds=[seeds[key] for key, _ in chunk], batch_size=batch
            )
            batch_wall = max(s.wall_s for s in output.stats)
            for (key, ex), record in zip(chunk, output.records()):
                record.update(
                    id=key,
                    task=ex.task,
                    seed=seeds[key],
                    reference=ex.answer,
                    correct=TASKS[ex.task].check(ex, record["text"]),
                    batch_wall_share_s=batch_wall / len(chunk),
                    **identity,
                )
                if rank is not None:
                    record["rank"] = rank
                records.append(record)
                handle.write(json.dumps(record) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
            bar.update(len(chunk))
    return records


def _merge_rank_files(out: Path, ordered: list[dict], gathered: list[list[dict]], identity: dict[str, str]) -> None:
    """Rank 0: append the records gathered from every rank (and those left in per-rank files by an interrupted
    run) to ``results.jsonl`` in example order, then remove the per-rank files."""
    merged = {record["id"] for records in gathered for record in records}
    partials = sorted(out.glob(RANK_RESULTS.format(rank="*")))
    for partial in partials:
        merged.update(_read_results(partial, identity))
    with (out / RESULTS).open("a", encoding="utf-8") as handle:
        for record in ordered:
            if record["id"] in merged:
                handle.write(json.dumps(record) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    for partial in partials:
        partial.unlink()
