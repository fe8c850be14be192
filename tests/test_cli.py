"""The dlm-decode command line, run in-process."""

from __future__ import annotations

import json

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
