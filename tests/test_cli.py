"""The dlm-decode command line, run in-process."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from dlm_decode.cli import main

REQUIRED = {"text", "token_ids", "nfe", "generated_tokens", "tokens_per_forward", "wall_s", "config_hash"}


def test_generate_json_prints_one_object_per_prompt(tiny_dllm_dir, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("sort: 3 1 2\n\nreverse: abc\n")
    code = main(
        [
            "generate",
            "-c",
            "configs/decoders/llada.yaml",
            f"model.dllm.path={tiny_dllm_dir}",
            "--prompts-file",
            str(prompts),
            "--prompt",
            "7+8=",
            "generation.max_new_tokens=10",
            "--json",
        ]
    )
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
    for key in [
        ("window", "full"),
        ("window", "blocks"),
        ("cache", "none"),
        ("proposal", "greedy"),
        ("proposal", "sample"),
        ("verification", "topk"),
        ("verification", "left_to_right"),
    ]:
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
    assert (
        main(
            [
                *command,
                "-c",
                "configs/decoders/llada.yaml",
                "--tasks",
                "arith",
                "--limit",
                "1",
                "--no-progress",
                "--out",
                str(tmp_path / "taken"),
            ]
        )
        == 2
    )
    assert f"--out {tmp_path / 'taken'} is a file, not a directory\n  fix:" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--tasks", ",", "--out", "OUT"], "--tasks names no task"),
        (["--tasks", "", "--dry-run"], "--tasks names no task"),
        (["--limit", "0", "--dry-run"], "--limit must be at least 1, got 0"),
    ],
)
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


@pytest.mark.parametrize(
    "command", [["generate", "--prompt", "sort 3 1 2"], ["eval", "--limit", "1", "--out", "unused"]]
)
def test_prompt_budget_without_dry_run_is_refused_not_ignored(command, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # nothing may be written; if it were, not into the repository
    config = str(Path(__file__).parents[1] / "configs" / "decoders" / "llada.yaml")
    assert main([command[0], "-c", config, *command[1:], "--prompt-budget", "64"]) == 2
    err = capsys.readouterr().err
    assert "--prompt-budget applies only with --dry-run" in err and "fix:" in err
    assert not (tmp_path / "unused").exists()


def test_version_prints_the_installed_version(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out == f"dlm-decode {version('dlm-decode')}\n"


def test_the_command_line_module_imports_neither_torch_nor_transformers():
    """What makes ``dlm-decode --help`` answer at once (4 s with torch): each command imports them when it runs."""
    import subprocess
    import sys

    heavy = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, dlm_decode.cli; print(sorted({m.split('.')[0] for m in sys.modules} & "
            "{'torch', 'transformers', 'omegaconf', 'tokenizers', 'numpy'}))",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert heavy == "[]\n"


GSM = "Ann has 7 pears, finds 5, sells 4. How many?"  # the embedded model answers on three lines


def test_generate_prints_each_batch_as_it_finishes(capsys, monkeypatch):
    """Batch 2 is decoded after batch 1's completions are printed; the completions equal one generate call's."""
    from dlm_decode.decoder import Decoder

    prompts = ["sort 5 3 9 1", GSM, "reverse kqzma"]
    printed_before_each_batch = []
    real_generate = Decoder.generate

    def generate(self, *args, **kwargs):
        printed_before_each_batch.append(capsys.readouterr().out.count("\n"))
        return real_generate(self, *args, **kwargs)

    monkeypatch.setattr(Decoder, "generate", generate)
    arguments = [f"--prompt={prompt}" for prompt in prompts]
    assert main(["generate", "-c", "configs/decoders/llada.yaml", "generation.batch_size=2", *arguments, "--json"]) == 0
    assert printed_before_each_batch == [0, 2]  # two JSON lines were out before the second batch started
    monkeypatch.setattr(Decoder, "generate", real_generate)
    whole = Decoder.from_config("configs/decoders/llada.yaml").generate(prompts)
    last = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [record["token_ids"] for record in last] == whole.token_ids[2:]


def test_plain_output_splits_back_into_the_completions(capsys):
    prompts = ["sort 5 3 9 1", GSM, "reverse kqzma"]
    command = ["generate", "-c", "configs/decoders/llada.yaml", *[f"--prompt={prompt}" for prompt in prompts]]
    assert main([*command, "--json"]) == 0
    texts = [json.loads(line)["text"] for line in capsys.readouterr().out.splitlines()]
    assert "\n" in texts[1], "a multi-line completion, the case a separator is for"
    assert main(command) == 0
    captured = capsys.readouterr()
    pieces = re.split(r"^==> prompt (\d+): (.*) <==\n", captured.out, flags=re.M)
    assert pieces[0] == ""
    assert [(int(index), json.loads(prompt)) for index, prompt in zip(pieces[1::3], pieces[2::3])] == list(
        enumerate(prompts)
    )
    assert [text.removesuffix("\n") for text in pieces[3::3]] == texts
    assert captured.err.count(" tokens/forward, ") == 3
    assert "Loading weights" not in captured.err, "transformers' loading bar is hidden"


@pytest.mark.parametrize(
    "command",
    [
        ["config", "validate"],
        ["generate", "--prompt", "sort 3 1 2"],
        ["eval", "--limit", "1", "--out", "OUT"],
        ["ablate", "--vary", "generation.seed=1", "--limit", "1", "--out", "OUT"],
    ],
)
def test_a_malformed_override_is_one_error_naming_it(command, tmp_path, capsys):
    out = tmp_path / "out"
    arguments = [str(out) if a == "OUT" else a for a in command]
    assert main([*arguments, "-c", "configs/decoders/llada.yaml", "decoder.verification={name: topk"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(
        "dlm-decode: error: `decoder.verification`: cannot parse the value '{name: topk' of the "
        "override 'decoder.verification={name: topk': did not find expected ',' or '}'"
    )
    assert "fix: write the value as YAML" in err and "Traceback" not in err and "--debug" not in err
    assert not out.exists()


def test_an_unbalanced_vary_value_is_refused_before_anything_runs(tmp_path, capsys):
    assert (
        main(
            [
                "ablate",
                "-c",
                "configs/decoders/llada.yaml",
                "--vary",
                "decoder.verification={name: topk,wino",
                "--out",
                str(tmp_path / "out"),
            ]
        )
        == 2
    )
    assert "a value is missing its closing '}'\n  fix:" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "command",
    [
        ["config", "validate"],
        ["generate", "--prompt", "sort 3 1 2"],
        ["generate", "--dry-run"],
        ["eval", "--dry-run", "--limit", "1"],
    ],
)
def test_a_strategy_missing_what_it_needs_is_refused_before_any_model_loads(command, capsys, monkeypatch):
    from transformers import PreTrainedModel

    def no_loading(*args, **kwargs):
        raise AssertionError("a model was loaded before the config was checked")

    monkeypatch.setattr(PreTrainedModel, "from_pretrained", classmethod(no_loading))
    assert main([*command, "-c", "configs/decoders/apd.yaml", "model.ar=null"]) == 2
    assert capsys.readouterr().err.startswith(
        "dlm-decode: error: `model.ar`: the 'apd' verification strategy (decoder.verification.name=apd) needs it, "
        "but it is null\n  fix: set model.ar.path (e.g. embedded:ar)"
    )


def test_prompts_are_checked_on_the_command_line(capsys):
    assert main(["generate", "-c", "configs/decoders/llada.yaml", "--prompt", "sort 3 1 2", "--prompt", " "]) == 2
    assert "--prompt number 2 is empty\n  fix: give every --prompt some text" in capsys.readouterr().err


def test_threads_sets_torchs_cpu_threads_for_the_run_only(capsys, monkeypatch):
    import torch

    from dlm_decode.decoder import Decoder

    before, during = torch.get_num_threads(), []
    real_generate = Decoder.generate

    def generate(self, *args, **kwargs):
        during.append(torch.get_num_threads())
        return real_generate(self, *args, **kwargs)

    monkeypatch.setattr(Decoder, "generate", generate)
    wanted = 2 if before == 1 else 1
    assert (
        main(["generate", "-c", "configs/decoders/llada.yaml", "--prompt", "sort 3 1 2", "--threads", str(wanted)]) == 0
    )
    assert during == [wanted] and torch.get_num_threads() == before
    with pytest.raises(SystemExit):
        main(["generate", "-c", "configs/decoders/llada.yaml", "--prompt", "sort 3 1 2", "--threads", "0"])
    assert "--threads: must be at least 1, got 0" in capsys.readouterr().err
    assert main(["eval", "-c", "configs/decoders/llada.yaml", "--limit", "1", "--dry-run", "--threads", "1"]) == 2
    assert (
        "--threads applies only to a run that decodes, and --dry-run decodes nothing\n  fix:" in capsys.readouterr().err
    )


@pytest.mark.parametrize(
    ("load", "threads", "environment", "noted"),
    [
        (2.5, 2, {}, True),
        (1.5, 2, {}, False),  # fewer runnable processes than cores
        (2.5, 1, {}, False),  # one thread already
        (2.5, 2, {"OMP_NUM_THREADS": "2"}, False),  # the user chose
    ],
    ids=["busy", "idle", "one-thread", "chosen"],
)
def test_a_cpu_run_on_a_busy_machine_suggests_one_thread(load, threads, environment, noted, capsys, monkeypatch):
    import os

    import torch

    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    monkeypatch.setattr(torch, "set_num_threads", lambda count: None)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert main(["generate", "-c", "configs/decoders/llada.yaml", "--prompt", "sort 3 1 2"]) == 0
    note = (
        f"dlm-decode: note: the machine is busy (load average {load:.1f} on 2 cores) and torch uses {threads} "
        "threads per operation, which can make CPU decoding several times slower; pass --threads 1 (or set "
        "OMP_NUM_THREADS=1) if it is slow\n"
    )
    assert (note in capsys.readouterr().err) == noted
