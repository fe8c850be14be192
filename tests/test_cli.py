"""The dlm-decode command line, run in-process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dlm_decode.cli import main

REQUIRED = {"text", "token_ids", "nfe", "generated_tokens", "tokens_per_forward", "steps", "wall_s", "config_hash"}


def test_generate_json_prints_one_object_per_prompt(tiny_dllm_dir, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("sort: 3 1 2\n\nreverse: abc\n")
    code = main(["generate", "-c", "configs/decoders/llada.yaml", f"model.dllm.path={tiny_dllm_dir}",
                 "--prompts-file", str(prompts), "--prompt", "7+8=", "generation.max_new_tokens=10", "--json"])
    assert code == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["prompt"] for r in records] == ["7+8=", "sort: 3 1 2", "reverse: abc"]  # --prompt first
    for record in records:
        assert REQUIRED <= set(record)
        assert 1 <= record["generated_tokens"] == len(record["token_ids"]) <= 10
        assert record["tokens_per_forward"] == record["generated_tokens"] / record["nfe"]
        assert sum(record["commits_per_step"]) >= record["generated_tokens"] - 1
    assert len({r["config_hash"] for r in records}) == 1


def test_generate_without_prompt_fails_with_a_fix(capsys):
    assert main(["generate", "-c", "configs/decoders/llada.yaml"]) == 2
    assert "fix: pass --prompt" in capsys.readouterr().err


def test_plugins_lists_every_builtin_by_role_with_its_package(capsys):
    assert main(["plugins", "--json"]) == 0
    rows = {(r["role"], r["name"]): r for r in json.loads(capsys.readouterr().out)}
    for key in [("window", "full"), ("window", "blocks"), ("cache", "none"), ("proposal", "greedy"),
                ("proposal", "sample"), ("verification", "topk"), ("verification", "left_to_right")]:
        assert rows[key]["package"] == "dlm-decode"


def test_config_show_prints_the_resolved_config_and_hash(capsys):
    assert main(["config", "show", "-c", "configs/decoders/llada.yaml", "decoder.verification=left_to_right"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# config_hash: ")
    assert "name: left_to_right" in out and "k: 1" in out and "score:" not in out


def test_config_validate_reports_errors_with_exit_code_2(capsys):
    assert main(["config", "validate", "-c", "configs/decoders/llada.yaml", "generation.batch_size=0"]) == 2
    assert "`generation.batch_size`" in capsys.readouterr().err


def test_unknown_arguments_are_rejected(capsys):
    try:
        main(["config", "show", "--bogus"])
    except SystemExit as exc:
        assert exc.code == 2
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_an_unreadable_prompts_file_is_an_error_not_a_traceback(tmp_path, capsys):
    for path, reason in [(tmp_path / "missing.txt", "No such file"), (tmp_path, "Is a directory")]:
        assert main(["generate", "-c", "configs/decoders/llada.yaml", "--prompts-file", str(path)]) == 2
        err = capsys.readouterr().err
        assert f"--prompts-file {path}: cannot read it ({reason}" in err and "fix:" in err


@pytest.mark.parametrize("command", [["eval"], ["ablate", "--vary", "decoder.window.size=8"]])
def test_an_out_that_is_a_file_is_named_before_any_model_loads(command, tmp_path, capsys, monkeypatch):
    import dlm_decode.decoder

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded before --out was checked")

    monkeypatch.setattr(dlm_decode.decoder.DiffusionLM, "from_spec", no_loading)
    (tmp_path / "taken").write_text("")
    assert main([*command, "-c", "configs/decoders/llada.yaml", "--tasks", "arith", "--limit", "1", "--no-progress",
                 "--out", str(tmp_path / "taken")]) == 2
    assert f"--out {tmp_path / 'taken'} is a file, not a directory; fix:" in capsys.readouterr().err


@pytest.mark.parametrize(("arguments", "message"), [
    (["--tasks", ",", "--out", "OUT"], "--tasks names no task"),
    (["--tasks", "", "--dry-run"], "--tasks names no task"),
    (["--limit", "0", "--dry-run"], "--limit must be at least 1, got 0"),
])
def test_eval_refuses_an_empty_task_list_and_a_zero_limit(arguments, message, tmp_path, capsys):
    out = tmp_path / "out"
    arguments = [str(out) if a == "OUT" else a for a in arguments]
    assert main(["eval", "-c", "configs/decoders/llada.yaml", *arguments]) == 2
    err = capsys.readouterr().err
    assert message in err and "fix:" in err
    assert not out.exists(), "nothing evaluated"


@pytest.mark.parametrize("budget", ["-5", "0"])
def test_generate_dry_run_refuses_a_non_positive_prompt_budget(budget, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["generate", "-c", "configs/decoders/llada.yaml", "--dry-run", "--prompt-budget", budget])
    assert exc.value.code == 2
    assert f"--prompt-budget: must be at least 1, got {budget}" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["generate", "--prompt", "sort 3 1 2"], ["eval", "--limit", "1", "--out", "unused"]])
def test_prompt_budget_without_dry_run_is_refused_not_ignored(command, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # nothing may be written; if it were, not into the repository
    config = str(Path(__file__).parents[1] / "configs" / "decoders" / "llada.yaml")
    assert main([command[0], "-c", config, *command[1:], "--prompt-budget", "64"]) == 2
    err = capsys.readouterr().err
    assert "--prompt-budget applies only with --dry-run" in err and "fix:" in err
    assert not (tmp_path / "unused").exists()
