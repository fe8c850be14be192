"""Evaluate a decoder on the task suite: batched, resumable, with a summary table.

Results go to ``DIR/results.jsonl`` one line per example as each batch finishes, so an interrupted run loses
at most one batch and a rerun with the same config resumes where it stopped. ``DIR/summary.json`` and
``DIR/config.yaml`` are written at the end. Example ``i`` of the run is decoded with seed
``generation.seed + i`` whatever the batch it lands in, so resumed and uninterrupted runs agree.
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
from dlm_decode.eval.tasks import TASKS, load_examples

RESULTS, SUMMARY, CONFIG = "results.jsonl", "summary.json", "config.yaml"


def _read_results(path: Path, config_hash: str) -> dict[str, dict]:
    """Finished records by example id; refuses results written by another config."""
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
            if record["config_hash"] != config_hash:
                raise InputError(
                    f"{path} holds results of config {record['config_hash']}, not {config_hash}; "
                    "fix: pass another --out directory (or delete this one) to evaluate a different config")
            done[record["id"]] = record
    return done


def summarize(records: Sequence[dict], config_hash: str) -> dict:
    """Accuracy per task and overall (mean over tasks), and speed over all examples.

    ``tokens_per_forward`` = generated tokens / dLLM forwards, ``tokens_per_s`` = generated tokens / decoding
    seconds, ``nfe`` and ``ar_forwards`` are means per example, ``wall_s`` the decoding seconds in total, and
    ``commits_histogram`` maps "tokens committed in a step" to how many steps did so (APD's accepted tokens per
    iteration), and ``extra`` holds the per-example means of the plugins' row statistics (e.g. WINO's
    revocations and flip-flops).
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
        "extra": {name: sum(r["extra"].get(name, 0.0) for r in records) / count
                  for name in sorted({name for r in records for name in r["extra"]})},
        "config_hash": config_hash,
    }


def format_table(summary: dict) -> str:
    """A plain-text table of a summary."""
    lines = [f"config {summary['config_hash']}  examples {summary['examples']}", f"{'task':<10} {'accuracy':>8}"]
    lines += [f"{task:<10} {100 * acc:>7.1f}%" for task, acc in summary["per_task"].items()]
    lines.append(f"{'mean':<10} {100 * summary['accuracy']:>7.1f}%")
    lines.append(f"NFE {summary['nfe']:.2f}  tokens/forward {summary['tokens_per_forward']:.2f}  "
                 f"AR forwards {summary['ar_forwards']:.2f}  tokens/s {summary['tokens_per_s']:.1f}  "
                 f"wall {summary['wall_s']:.1f} s")
    if summary.get("extra"):
        lines.append("  ".join(f"{name} {value:.2f}" for name, value in summary["extra"].items()))
    return "\n".join(lines)


def evaluate(decoder: Decoder, out_dir: str | Path, tasks: Sequence[str] | None = None, limit: int = 100,
             split: str = "test", data_seed: int = 0, progress: bool = True) -> dict:
    """Decode ``limit`` examples of each task, check them, and write the results under ``out_dir``.

    :return: the summary (also written to ``out_dir/summary.json``).
    """
    names = list(tasks or TASKS)
    unknown = [name for name in names if name not in TASKS]
    if unknown:
        raise InputError(f"unknown task(s) {', '.join(unknown)}; fix: choose from {', '.join(TASKS)}")
    if limit < 1:
        raise InputError(f"--limit must be at least 1, got {limit}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config_hash = decoder.config.hash
    done = _read_results(out / RESULTS, config_hash)
    (out / CONFIG).write_text(f"# config_hash: {config_hash}\n{decoder.config.yaml}", encoding="utf-8")
    examples = [(f"{ex.task}-{i}", ex) for i, ex in enumerate(load_examples(names, split, limit, data_seed))]
    seeds = {key: decoder.generation.seed + index for index, (key, _) in enumerate(examples)}
    todo = [(key, ex) for key, ex in examples if key not in done]
    batch = decoder.generation.batch_size
    with (out / RESULTS).open("a", encoding="utf-8") as handle, tqdm(
        total=len(examples), initial=len(examples) - len(todo), desc="eval", unit="ex", disable=not progress
    ) as bar:
        for first in range(0, len(todo), batch):
            chunk = todo[first: first + batch]
            output = decoder.generate([ex.prompt for _, ex in chunk], seeds=[seeds[key] for key, _ in chunk],
                                      batch_size=batch)
            batch_wall = max(s.wall_s for s in output.stats)
            for (key, ex), record in zip(chunk, output.records()):
                record.update(id=key, task=ex.task, reference=ex.answer,
                              correct=TASKS[ex.task].check(ex, record["text"]),
                              batch_wall_share_s=batch_wall / len(chunk))
                done[key] = record
                handle.write(json.dumps(record) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
            bar.update(len(chunk))
    summary = summarize([done[key] for key, _ in examples], config_hash)
    (out / SUMMARY).write_text(json.dumps(summary, indent=2), encoding="utf-8")
    return summary
