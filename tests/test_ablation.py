"""AUP against hand computation, and a small ablation end to end."""

from __future__ import annotations

import json
import math

import pytest

from dlm_decode import InputError
from dlm_decode.errors import DlmDecodeError
from dlm_decode.eval.ablation import ablate, parse_vary, plan_runs
from dlm_decode.eval.aup import aup


def test_single_point_aup_is_tokens_per_forward_times_accuracy():
    assert aup([(1.0, 83.0)], y_max=90.0) == 83.0
    assert aup([(2.5, 70.0)], y_max=90.0) == 175.0


def test_two_point_aup_by_hand():
    # first rectangle 1 * 80; trapezoid (3 - 1) / 2 * (78 * exp(-3 * (1 - 78 / 80)) + 80 * 1)
    expected = 80 + 0.5 * 2 * (78 * math.exp(-3 * (1 - 78 / 80)) + 80)
    assert aup([(3.0, 78.0), (1.0, 80.0)], y_max=80.0) == pytest.approx(expected)


def test_points_more_than_five_points_below_the_first_are_dropped():
    assert aup([(1.0, 80.0), (4.0, 74.0)], y_max=80.0) == 80.0


def test_vary_parsing_and_run_plan():
    factors = parse_vary(["decoder.verification=topk,left_to_right", "generation.seed=1"])
    assert factors == [("decoder.verification", ["topk", "left_to_right"]), ("generation.seed", ["1"])]
    names = [name for name, _, _ in plan_runs(factors)]
    assert names == ["base", "decoder.verification=topk", "decoder.verification=left_to_right", "generation.seed=1"]
    with pytest.raises(InputError, match="key=value1,value2"):
        parse_vary(["decoder.verification"])


def test_a_strategy_with_parameters_is_one_value_of_a_factor_and_its_run_is_named_readably():
    factors = parse_vary(
        [
            "decoder.verification={name: threshold, threshold: 0.8},{name: wino, draft_threshold: 0.7},topk",
            "decoder.window={size: [4, 8]}, {flag: 'a,b'}",
            "generation.note=don't,x",
        ]
    )
    assert factors == [
        ("decoder.verification", ["{name: threshold, threshold: 0.8}", "{name: wino, draft_threshold: 0.7}", "topk"]),
        ("decoder.window", ["{size: [4, 8]}", "{flag: 'a,b'}"]),
        ("generation.note", ["don't", "x"]),  # a quote inside a plain value opens nothing
    ]
    runs = plan_runs(factors[:2])
    assert [name for name, _, _ in runs] == [
        "base",
        "decoder.verification=threshold(threshold=0.8)",
        "decoder.verification=wino(draft_threshold=0.7)",
        "decoder.verification=topk",
        "decoder.window=(size=[4, 8])",
        "decoder.window=(flag=a,b)",
    ]
    assert runs[1][1:] == ("decoder.verification", ["decoder.verification={name: threshold, threshold: 0.8}"])


@pytest.mark.parametrize(
    ("vary", "message"),
    [
        ("decoder.verification={name: threshold, threshold: 0.8", "a value is missing its closing '}'"),
        ("decoder.verification={name: topk},'x", 'a value is missing its closing "\'"'),
        ("decoder.verification=topk},wino", "'}' at column 5 of the values, with no brace or bracket open"),
        ("decoder.window={size: [4, 8}", "'}' at column 13 of the values, where ']' was expected"),
    ],
    ids=["unclosed-brace", "unclosed-quote", "unopened-brace", "crossed"],
)
def test_unbalanced_vary_values_are_named(vary, message):
    with pytest.raises(InputError) as info:
        parse_vary([vary])
    assert str(info.value).startswith(f"--vary {vary!r}: {message}\n  fix: ")


def test_ablation_runs_each_distinct_config_once_and_writes_table_and_plots(tiny_dllm_dir, tmp_path):
    rows = ablate(
        {},
        parse_vary(["decoder.verification=topk,left_to_right", "generation.max_new_tokens=4"]),
        tmp_path,
        overrides=[f"model.dllm.path={tiny_dllm_dir}", "generation.max_new_tokens=6"],
        tasks=["arith", "sort"],
        limit=2,
        progress=False,
    )
    assert [r["run"] for r in rows] == [
        "base",
        "decoder.verification=topk",
        "decoder.verification=left_to_right",
        "generation.max_new_tokens=4",
    ]
    assert rows[1]["config_hash"] == rows[0]["config_hash"], "topk is the base: reused, not rerun"
    run_dirs = sorted(p.name for p in (tmp_path / "runs").iterdir())
    assert len(run_dirs) == 3
    assert json.loads((tmp_path / "ablation.json").read_text())[2]["run"] == "decoder.verification=left_to_right"
    table = (tmp_path / "ablation.md").read_text()
    header, rule, *lines = table.splitlines()
    assert "| AUP |" in header and len([line for line in lines if line.startswith("| `")]) == len(rows)
    assert "Accuracy Under Parallelism" in table and "less than 1" in table  # the columns are explained
    assert (tmp_path / "pareto_tpf.png").stat().st_size > 0 and (tmp_path / "pareto_tps.png").stat().st_size > 0
    for row in rows:
        assert row["aup"] == pytest.approx(
            sum(row["tokens_per_forward"] * 100 * a for a in row["per_task"].values()) / len(row["per_task"])
        )


@pytest.mark.parametrize(
    ("vary", "tasks", "message"),
    [
        ("decoder.window.size=8,0", ["arith"], "decoder.window.size.*at least 1, got 0"),
        ("decoder.verification=topk,nope", ["arith"], "nope"),
        ("generation.seed=1", ["arith", "nope"], "unknown task.*nope"),
    ],
)
def test_every_planned_run_is_checked_before_any_is_evaluated(
    tiny_dllm_dir, tmp_path, vary, tasks, message, monkeypatch
):
    import dlm_decode.eval.ablation

    def evaluated(*args, **kwargs):
        raise AssertionError("a run was evaluated before every planned run was checked")

    monkeypatch.setattr(dlm_decode.eval.ablation, "evaluate", evaluated)
    with pytest.raises(DlmDecodeError, match=message):
        ablate(
            "configs/decoders/llada.yaml",
            parse_vary([vary]),
            tmp_path,
            overrides=[f"model.dllm.path={tiny_dllm_dir}"],
            tasks=tasks,
            limit=1,
            progress=False,
        )
    assert not list(tmp_path.iterdir()), "no run was evaluated"


def _row(run, factor, tpf, accuracy):
    return {"run": run, "factor": factor, "tokens_per_forward": tpf, "tokens_per_s": 100 * tpf, "accuracy": accuracy}


def test_plot_labels_never_overlap_and_the_base_stays_visible_under_an_equal_variation():
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    from dlm_decode.eval.ablation import pareto_figure

    names = [
        "threshold",
        "factor",
        "wino",
        "apd",
        "prophet",
        "klass",
        "hierarchy",
        "credit",
        "local_leap",
        "slow_fast",
        "freedave",
        "entropy_bound",
    ]
    # a dense cluster: tokens per forward 3.9 to 4.3, accuracy 97.5 to 98.6, and one variation equal to the base
    rows = [_row("base", None, 0.85, 0.98), _row("decoder.verification=topk", "decoder.verification", 0.85, 0.98)]
    rows += [
        _row(f"decoder.verification={name}", "decoder.verification", 3.9 + 0.04 * i, 0.975 + 0.001 * (i % 5))
        for i, name in enumerate(names)
    ]
    figure, texts = pareto_figure(rows, "tokens_per_forward")
    renderer = figure.canvas.get_renderer()
    boxes = [text.get_window_extent(renderer) for text in texts]
    overlapping = [
        (a.get_text(), b.get_text())
        for i, (a, box_a) in enumerate(zip(texts, boxes))
        for b, box_b in zip(texts[i + 1 :], boxes[i + 1 :])
        if box_a.overlaps(box_b)
    ]
    assert overlapping == []
    assert sorted(text.get_text() for text in texts) == sorted(["base = topk", *names])
    base = next(c for c in figure.axes[0].collections if c.get_label() == "base")
    assert base.get_zorder() > max(c.get_zorder() for c in figure.axes[0].collections if c is not base)
    assert base.get_facecolor().size == 0 or base.get_facecolor()[0][3] == 0  # a ring: what is under it shows


def test_without_matplotlib_the_plots_are_skipped_with_a_logged_warning(tmp_path, monkeypatch, caplog):
    import logging
    import sys

    from dlm_decode.eval.ablation import plot_pareto

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
    with caplog.at_level(logging.WARNING, logger="dlm_decode.eval.ablation"):
        plot_pareto([_row("base", None, 0.85, 0.98)], tmp_path)
    assert [(record.levelno, record.getMessage()) for record in caplog.records] == [
        (logging.WARNING, "matplotlib is not installed: no plots (pip install 'dlm-decode[plots]')")
    ]
    assert not list(tmp_path.iterdir())
