"""One-factor-at-a-time ablations: evaluate a base config and every single-key variation of it.

``ablate`` runs the base config, then, for each ``--vary key=v1,v2,...``, the base with just that key changed
(a strategy section such as ``decoder.verification=apd`` is swapped whole, with the new strategy's defaults).
Every planned config, and the task selection, is checked before the first run starts, so a bad value fails
at once instead of after the runs before it.
Each run is a resumable :func:`~dlm_decode.eval.runner.evaluate` in ``DIR/runs/<name>/``; the ablation writes
``DIR/ablation.json``, a Markdown table ``DIR/ablation.md`` (accuracy, NFE, tokens per forward, tokens/s, AUP)
and Pareto plots ``DIR/pareto_tpf.png`` and ``DIR/pareto_tps.png`` (matplotlib, when installed).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from pathlib import Path

from tqdm.auto import tqdm

from dlm_decode.config.compose import Source, load_config
from dlm_decode.decoder import Decoder
from dlm_decode.errors import InputError
from dlm_decode.eval.aup import aup
from dlm_decode.eval.runner import check_out_dir, check_selection, claim_out_dir, evaluate
from dlm_decode.models.hf import DiffusionLM


def parse_vary(items: Sequence[str]) -> list[tuple[str, list[str]]]:
    """``["key=v1,v2", ...]`` -> ``[("key", ["v1", "v2"]), ...]``."""
    factors = []
    for item in items:
        key, sep, values = item.partition("=")
        choices = [v.strip() for v in values.split(",") if v.strip()]
        if not sep or not key or not choices:
            raise InputError(f"--vary {item!r} must be key=value1,value2,...; "
                             "fix: e.g. --vary decoder.verification=topk,apd")
        factors.append((key.strip(), choices))
    return factors


def plan_runs(factors: list[tuple[str, list[str]]]) -> list[tuple[str, str | None, list[str]]]:
    """``[(run name, factor key or None for the base, overrides)]`` with the base first."""
    runs: list[tuple[str, str | None, list[str]]] = [("base", None, [])]
    for key, values in factors:
        runs += [(f"{key}={value}", key, [f"{key}={value}"]) for value in values]
    return runs


def _directory_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", name)


def ablate(base: Source | Sequence[Source], factors: list[tuple[str, list[str]]], out_dir: str | Path, *,
           overrides: Sequence[str] = (), tasks: Sequence[str] | None = None, limit: int = 100,
           split: str = "test", progress: bool = True) -> list[dict]:
    """Evaluate the base and every one-key variation; returns one row per distinct config.

    Every config is composed (and validated) and ``tasks``/``limit`` are checked before anything is evaluated.
    """
    from dlm_decode.distributed import distributed

    out = check_out_dir(out_dir)
    runs = [(name, factor, load_config(base, [*overrides, *extra])) for name, factor, extra in plan_runs(factors)]
    check_selection(tasks, limit)
    with distributed() as ranks, claim_out_dir(out, ranks, "ablate"):  # the whole ablation, not run by run
        return _run_all(runs, out, tasks, limit, split, progress)


def _run_all(runs: list, out: Path, tasks: Sequence[str] | None, limit: int, split: str, progress: bool) -> list[dict]:
    rows, seen, models = [], {}, {}
    for name, factor, config in tqdm(runs, desc="ablation", unit="run", disable=not progress):
        if config.hash in seen:  # a variation equal to the base (or to an earlier run) is not run twice
            rows.append({**seen[config.hash], "run": name, "factor": factor})
            continue
        model_key = json.dumps(config.to_dict()["model"]["dllm"], sort_keys=True)
        if model_key not in models:
            models[model_key] = DiffusionLM.from_spec(config.config.model.dllm)
        decoder = Decoder(config, dllm=models[model_key])
        summary = evaluate(decoder, out / "runs" / _directory_name(name), tasks=tasks, limit=limit, split=split,
                           progress=progress)
        row = {"run": name, "factor": factor, **summary}
        seen[config.hash] = row
        rows.append(row)
    _attach_aup(rows)
    (out / "ablation.json").write_text(json.dumps(rows, indent=2), encoding="utf-8")
    (out / "ablation.md").write_text(markdown_table(rows), encoding="utf-8")
    plot_pareto(rows, out)
    return rows


def _attach_aup(rows: list[dict]) -> None:
    """Per run, the single-point AUP (mean over tasks); per factor, the AUP of its curve (base included)."""
    tasks = sorted({task for row in rows for task in row["per_task"]})
    best = {task: max(100 * row["per_task"].get(task, 0.0) for row in rows) for task in tasks}

    def mean_aup(members: list[dict]) -> float:
        return sum(aup([(m["tokens_per_forward"], 100 * m["per_task"][task]) for m in members], best[task])
                   for task in tasks) / len(tasks)

    base = [row for row in rows if row["factor"] is None]
    for row in rows:
        row["aup"] = mean_aup([row])
        members = base + [r for r in rows if r["factor"] == row["factor"] and r["factor"] is not None]
        row["factor_aup"] = mean_aup(members) if row["factor"] is not None else None


def markdown_table(rows: list[dict]) -> str:
    """The ablation as a Markdown table (accuracy in %, speed per run, AUP, then the plugins' row statistics,
    such as WINO's revocations, as per-example means)."""
    extras = sorted({name for row in rows for name in row.get("extra", {})})
    lines = ["| run | accuracy | NFE | tokens/forward | tokens/s | wall s | AUP | sweep AUP |"
             + "".join(f" {name} |" for name in extras),
             "|---|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * len(extras)]
    for row in rows:
        sweep = "" if row["factor_aup"] is None else f"{row['factor_aup']:.1f}"
        values = "".join(f" {row['extra'][name]:.2f} |" if name in row.get("extra", {}) else " |" for name in extras)
        lines.append(f"| `{row['run']}` | {100 * row['accuracy']:.1f} | {row['nfe']:.2f} | "
                     f"{row['tokens_per_forward']:.2f} | {row['tokens_per_s']:.1f} | {row['wall_s']:.1f} | "
                     f"{row['aup']:.1f} | {sweep} |{values}")
    return "\n".join(lines) + "\n"


def plot_pareto(rows: list[dict], out: Path) -> None:
    """Accuracy against tokens per forward and against tokens/s, one colour per factor."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plots (pip install 'dlm-decode[plots]')")
        return
    for metric, label, filename in (("tokens_per_forward", "tokens per dLLM forward", "pareto_tpf.png"),
                                    ("tokens_per_s", "tokens / s", "pareto_tps.png")):
        figure, axes = plt.subplots(figsize=(6.4, 4.4))
        groups: dict[str, list[dict]] = {}
        for row in rows:
            groups.setdefault(row["factor"] or "base", []).append(row)
        for factor, members in groups.items():
            xs = [m[metric] for m in members]
            ys = [100 * m["accuracy"] for m in members]
            axes.scatter(xs, ys, label=factor)
            for m, x, y in zip(members, xs, ys):
                axes.annotate(m["run"].split("=", 1)[-1], (x, y), fontsize=7, xytext=(3, 3),
                              textcoords="offset points")
        axes.set_xlabel(label)
        axes.set_ylabel("accuracy (%)")
        axes.grid(alpha=0.3)
        axes.legend(fontsize=7)
        figure.tight_layout()
        figure.savefig(out / filename, dpi=120)
        plt.close(figure)
