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
import logging
import re
from collections.abc import Sequence
from pathlib import Path

import yaml
from tqdm.auto import tqdm

from dlm_decode.config.compose import Source, load_config
from dlm_decode.decoder import Decoder
from dlm_decode.errors import InputError
from dlm_decode.eval.aup import aup
from dlm_decode.eval.lock import claim_out_dir
from dlm_decode.eval.runner import check_out_dir, check_selection, evaluate
from dlm_decode.models.dllm import load_dllm

logger = logging.getLogger(__name__)


def parse_vary(items: Sequence[str]) -> list[tuple[str, list[str]]]:
    """``["key=v1,v2", ...]`` -> ``[("key", ["v1", "v2"]), ...]``.

    The values split at the commas outside braces, brackets and quotes, so a whole strategy with its parameters is
    one value: ``decoder.verification={name: threshold, threshold: 0.8},topk`` has two.

    :raises InputError: naming the ``--vary`` item, for one without ``=``, a key or a value, or with an unclosed
        (or unopened) brace, bracket or quote.
    """
    factors = []
    for item in items:
        key, sep, values = item.partition("=")
        choices = [v.strip() for v in _split_values(item, values) if v.strip()]
        if not sep or not key or not choices:
            raise InputError(
                f"--vary {item!r} must be key=value1,value2,...", fix="e.g. --vary decoder.verification=topk,apd"
            )
        factors.append((key.strip(), choices))
    return factors


_CLOSING = {"{": "}", "[": "]", "(": ")"}


def _split_values(item: str, values: str) -> list[str]:
    """``values`` split at the commas outside ``{}``, ``[]``, ``()`` and quotes (``item``: the whole ``--vary``
    argument, for errors)."""
    parts, start, open_, quote, previous = [], 0, [], None, ","
    for index, char in enumerate(values):
        if quote is not None:
            quote = None if char == quote else quote
        elif char in "'\"" and previous in ",{[(:":  # a quote opens a scalar only where one starts (not in don't)
            quote = char
        elif char in _CLOSING:
            open_.append(_CLOSING[char])
        elif char in _CLOSING.values():
            expected = open_.pop() if open_ else None
            if char != expected:
                what = f"where {expected!r} was expected" if expected else "with no brace or bracket open"
                raise InputError(
                    f"--vary {item!r}: {char!r} at column {index + 1} of the values, {what}",
                    fix="balance the braces and brackets of each value, e.g. "
                    "--vary 'decoder.verification={name: threshold, threshold: 0.8},topk'",
                )
        elif char == "," and not open_:
            parts.append(values[start:index])
            start = index + 1
        if not char.isspace():
            previous = char
    if quote is not None or open_:
        missing = quote if quote is not None else open_[-1]
        raise InputError(
            f"--vary {item!r}: a value is missing its closing {missing!r}",
            fix="close every brace, "
            "bracket and quote of each value, e.g. --vary 'decoder.verification={name: threshold, "
            "threshold: 0.8},topk'",
        )
    return [*parts, values[start:]]


def plan_runs(factors: list[tuple[str, list[str]]]) -> list[tuple[str, str | None, list[str]]]:
    """``[(run name, factor key or None for the base, overrides)]`` with the base first; a run is named
    ``key=value``, a strategy value with parameters as ``name(param=value, ...)``
    (:func:`_readable_value`)."""
    runs: list[tuple[str, str | None, list[str]]] = [("base", None, [])]
    for key, values in factors:
        runs += [(f"{key}={_readable_value(value)}", key, [f"{key}={value}"]) for value in values]
    return runs


def _readable_value(value: str) -> str:
    """A ``--vary`` value as a run name: a mapping such as ``{name: threshold, threshold: 0.8}`` as
    ``threshold(threshold=0.8)`` (``(threshold=0.8)`` without a name); any other value, or one that is not YAML
    (:func:`load_config` reports it), as given."""
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        return value
    if not isinstance(parsed, dict):
        return value
    parameters = ", ".join(f"{key}={_yaml_scalar(item)}" for key, item in parsed.items() if key != "name")
    return f"{parsed.get('name', '')}({parameters})"


def _yaml_scalar(value: object) -> str:
    """``value`` in YAML's flow style on one line (``0.8``, ``true``, ``[1, 2]``)."""
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("\n...").strip()


def _directory_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", name)


def ablate(
    base: Source | Sequence[Source],
    factors: list[tuple[str, list[str]]],
    out_dir: str | Path,
    *,
    overrides: Sequence[str] = (),
    tasks: Sequence[str] | None = None,
    limit: int = 100,
    split: str = "test",
    progress: bool = True,
) -> list[dict]:
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
    rows: list[dict] = []
    seen: dict[str, dict] = {}
    models: dict = {}
    for name, factor, config in tqdm(runs, desc="ablation", unit="run", disable=not progress):
        if config.hash in seen:  # a variation equal to the base (or to an earlier run) is not run twice
            rows.append({**seen[config.hash], "run": name, "factor": factor})
            continue
        model_key = json.dumps(config.to_dict()["model"]["dllm"], sort_keys=True)
        if model_key not in models:
            models[model_key] = load_dllm(config.config.model.dllm)
        decoder = Decoder(config, dllm=models[model_key])
        summary = evaluate(
            decoder, out / "runs" / _directory_name(name), tasks=tasks, limit=limit, split=split, progress=progress
        )
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
        return sum(
            aup([(m["tokens_per_forward"], 100 * m["per_task"][task]) for m in members], best[task]) for task in tasks
        ) / len(tasks)

    base = [row for row in rows if row["factor"] is None]
    for row in rows:
        row["aup"] = mean_aup([row])
        members = base + [r for r in rows if r["factor"] == row["factor"] and r["factor"] is not None]
        row["factor_aup"] = mean_aup(members) if row["factor"] is not None else None


#: What the table's AUP columns mean, written under it.
AUP_NOTE = (
    "AUP (Accuracy Under Parallelism, d3LLM): the area under accuracy (%) against tokens per dLLM forward, weighted "
    "to penalise accuracy below the task's best, averaged over tasks; `AUP` is the run's own point, `sweep AUP` the "
    "curve through the base and every value of the run's factor. Tokens per forward count generated tokens up to "
    "and including the first EOS, so one token per step gives less than 1."
)


def markdown_table(rows: list[dict]) -> str:
    """The ablation as a Markdown table (accuracy in %, speed per run, AUP, then the plugins' row statistics,
    such as WINO's revocations, as per-example means)."""
    extras = sorted({name for row in rows for name in row.get("extra", {})})
    lines = [
        "| run | accuracy | NFE | tokens/forward | tokens/s | wall s | AUP | sweep AUP |"
        + "".join(f" {name} |" for name in extras),
        "|---|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * len(extras),
    ]
    for row in rows:
        sweep = "" if row["factor_aup"] is None else f"{row['factor_aup']:.1f}"
        values = "".join(f" {row['extra'][name]:.2f} |" if name in row.get("extra", {}) else " |" for name in extras)
        lines.append(
            f"| `{row['run']}` | {100 * row['accuracy']:.1f} | {row['nfe']:.2f} | "
            f"{row['tokens_per_forward']:.2f} | {row['tokens_per_s']:.1f} | {row['wall_s']:.1f} | "
            f"{row['aup']:.1f} | {sweep} |{values}"
        )
    return "\n".join([*lines, "", AUP_NOTE]) + "\n"


#: Directions tried around a point for its label, nearest first at each distance (points of offset).
_LABEL_DIRECTIONS = ((1, 1), (1, -1), (-1, 1), (-1, -1), (1, 0), (-1, 0), (0, 1), (0, -1))
_LABEL_DISTANCES = (4, 10, 18, 28, 40, 55, 75, 100)


def place_labels(
    axes, points: Sequence[tuple[float, float]], labels: Sequence[str], fontsize: float = 7, avoid: Sequence = ()
) -> list:
    """Annotate each point with its label at the nearest offset where the label overlaps no other label, no marker
    and no artist of ``avoid`` (a legend, say), and stays inside the axes (a leader line joins a label placed away
    from its point).

    :return: the matplotlib ``Annotation`` of each label, in order.
    """
    figure = axes.figure
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    frame = axes.get_window_extent(renderer)
    centres = [axes.transData.transform(point) for point in points]
    radius = fontsize * figure.dpi / 72 * 0.8  # a marker's half-width in pixels, about
    taken = [(cx - radius, cy - radius, cx + radius, cy + radius) for cx, cy in centres]
    taken += [tuple(artist.get_window_extent(renderer).extents) for artist in avoid]

    def free(box, own: int) -> bool:
        inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
        return inside and all(
            box.x1 < x0 or box.x0 > x1 or box.y1 < y0 or box.y0 > y1
            for index, (x0, y0, x1, y1) in enumerate(taken)
            if index != own
        )

    texts = []
    for index, (point, label) in enumerate(zip(points, labels)):
        text = None
        for distance in _LABEL_DISTANCES:
            for dx, dy in _LABEL_DIRECTIONS:
                if text is not None:
                    text.remove()
                text = axes.annotate(
                    label,
                    point,
                    xytext=(dx * distance, dy * distance),
                    textcoords="offset points",
                    fontsize=fontsize,
                    ha="left" if dx > 0 else "right" if dx < 0 else "center",
                    va="bottom" if dy > 0 else "top" if dy < 0 else "center",
                    arrowprops=None if distance <= 10 else {"arrowstyle": "-", "lw": 0.5, "color": "0.5"},
                )
                box = text.get_window_extent(renderer)
                if free(box, index):
                    break
            else:
                continue
            break
        assert text is not None  # the loops above ran: there are distances and directions
        box = text.get_window_extent(renderer)
        taken.append((box.x0, box.y0, box.x1, box.y1))
        texts.append(text)
    return texts


def plot_pareto(rows: list[dict], out: Path) -> None:
    """``pareto_tpf.png`` and ``pareto_tps.png`` in ``out`` (:func:`pareto_figure`), when matplotlib is installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        logger.warning("matplotlib is not installed: no plots (pip install 'dlm-decode[plots]')")
        return
    for metric, filename in (("tokens_per_forward", "pareto_tpf.png"), ("tokens_per_s", "pareto_tps.png")):
        figure, _ = pareto_figure(rows, metric)
        figure.savefig(out / filename, dpi=120)
        plt.close(figure)


def pareto_figure(rows: list[dict], metric: str):
    """Accuracy against ``metric`` (``tokens_per_forward`` or ``tokens_per_s``), one colour per factor, every point
    labelled by its value without overlapping another label or marker (:func:`place_labels`); the base is a ring
    drawn over the other markers, so it stays visible where a variation equals it, and runs at the same point share
    one label (``base = value``).

    :return: the matplotlib figure and its labels.
    """
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7.2, 5.0))
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row["factor"] or "base", []).append(row)
    for factor, members in groups.items():
        style = (
            {"s": 110, "facecolors": "none", "edgecolors": "black", "linewidths": 1.5, "zorder": 3}
            if factor == "base"
            else {"s": 30, "zorder": 2}
        )
        axes.scatter([m[metric] for m in members], [100 * m["accuracy"] for m in members], label=factor, **style)
    names: dict[tuple[float, float], list[str]] = {}
    for row in rows:
        names.setdefault((row[metric], 100 * row["accuracy"]), []).append(row["run"].split("=", 1)[-1])
    axes.margins(0.12)
    axes.set_xlabel("tokens per dLLM forward" if metric == "tokens_per_forward" else "tokens / s")
    axes.set_ylabel("accuracy (%)")
    axes.grid(alpha=0.3)
    legend = axes.legend(fontsize=7, loc="lower left")
    figure.tight_layout()  # before the labels: it moves the axes, which would move the points under them
    texts = place_labels(
        axes, list(names), [" = ".join(dict.fromkeys(value)) for value in names.values()], avoid=[legend]
    )
    return figure, texts
