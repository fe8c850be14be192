"""What a newcomer's first wrong ``model.dllm.path`` gets (models/checkpoint.py): a :class:`ModelError` naming the
key, the path, the cause and the fix, the same from the Python API, ``generate`` and ``--dry-run``, and the dry
run failing where the real run would (no weights, no tokenizer files, a hub id not cached, no network)."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from dlm_decode import DlmDecodeError, ModelError
from dlm_decode.cli import main
from dlm_decode.decoder import Decoder
from dlm_decode.models.checkpoint import config_candidates
from dlm_decode.models.dry_run import dry_run
from dlm_decode.models.embedded import embedded_model_dir

from helpers import edited_copy

LLADA = "configs/decoders/llada.yaml"


def failures(path, *overrides, capsys) -> dict[str, str]:
    """The message of each front door for ``model.dllm.path=path``: the Python API, ``generate``, the dry run."""
    items = [f"model.dllm.path={path}", *overrides]
    with pytest.raises(ModelError) as error:
        Decoder.from_config(LLADA, items)
    assert main(["generate", "-c", LLADA, *items, "--prompt", "hi"]) != 0
    cli = capsys.readouterr().err
    report = dry_run(LLADA, items)
    assert not report.ok
    return {"api": str(error.value), "generate": cli, "dry-run": report.format()}


def assert_everywhere(messages: dict[str, str], *parts: str) -> None:
    for door, message in messages.items():
        for part in parts:
            assert part in message, f"{door}: {part!r} missing from\n{message}"
        assert "Traceback" not in message and "TypeError" not in message, door


def test_an_empty_directory_is_a_model_error_naming_the_key_path_cause_and_fix(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    messages = failures(empty, capsys=capsys)
    assert_everywhere(
        messages,
        "`model.dllm.path`",
        str(empty),
        "has no config.json (it is empty)",
        "fix: set model.dllm.path to the directory holding the checkpoint's config.json",
    )
    assert issubclass(ModelError, DlmDecodeError)


def test_the_parent_folder_of_checkpoints_lists_them_as_candidates(tmp_path, capsys):
    for name in ("llada", "dream"):
        (tmp_path / "runs" / name).mkdir(parents=True)
        (tmp_path / "runs" / name / "config.json").write_text("{}")
    (tmp_path / "runs" / "logs").mkdir()
    messages = failures(tmp_path / "runs", capsys=capsys)
    assert_everywhere(
        messages,
        f"these directories below it have one: {tmp_path / 'runs' / 'dream'}, {tmp_path / 'runs' / 'llada'}",
        "fix: set model.dllm.path to one of them",
    )


def test_candidates_are_looked_for_two_levels_down(tmp_path):
    (tmp_path / "a" / "b" / "c").mkdir(parents=True)
    for directory in (tmp_path / "a" / "b", tmp_path / "a" / "b" / "c"):
        (directory / "config.json").write_text("{}")
    assert config_candidates(tmp_path) == [tmp_path / "a" / "b"]


@pytest.mark.parametrize(
    "path", ["./checkpoints/llada", "~/no-such-checkpoint-dir/llada", "/no/such/llada", "checkpoints/a/b"]
)
def test_a_local_looking_path_that_does_not_exist_says_no_such_directory(path, capsys):
    absolute = Path(path).expanduser().resolve()
    messages = failures(path, capsys=capsys)
    assert_everywhere(messages, f"`model.dllm.path` = {path!r}: no such directory ({absolute})")
    assert not any("Repo id must be" in message for message in messages.values())


def test_a_file_is_not_taken_for_a_checkpoint_directory(capsys):
    config = embedded_model_dir("dllm") / "config.json"
    assert_everywhere(failures(config, capsys=capsys), "is a file", f"(perhaps {config.parent})")


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    return edited_copy(embedded_model_dir("dllm"), tmp_path / "dllm")


def test_a_checkpoint_without_weights_fails_the_dry_run_as_it_fails_the_real_run(checkpoint, capsys):
    (checkpoint / "model.safetensors").rename(checkpoint / "weights.safetensors")
    messages = failures(checkpoint, capsys=capsys)
    assert_everywhere(
        messages,
        "has no weights: none of model.safetensors, model.safetensors.index.json, "
        "pytorch_model.bin, pytorch_model.bin.index.json",
        "it has weights.safetensors, which from_pretrained does not read",
    )
    assert dry_run(LLADA, [f"model.dllm.path={checkpoint}"]).checks() == {"weights"}


def test_a_sharded_checkpoint_missing_a_shard_fails_the_dry_run(checkpoint):
    (checkpoint / "model.safetensors").unlink()
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (checkpoint / "model.safetensors.index.json").write_text(json.dumps(index))
    (checkpoint / "model-00001-of-00002.safetensors").write_text("")
    report = dry_run(LLADA, [f"model.dllm.path={checkpoint}"])
    assert report.checks() == {"weights"}
    assert "names 2 weight shard(s), of which 1 are missing" in report.errors[0].message
    assert "model-00002-of-00002.safetensors" in report.errors[0].message


def test_a_config_only_directory_names_the_missing_tokenizer_files(checkpoint, capsys):
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (checkpoint / name).unlink()
    messages = failures(checkpoint, capsys=capsys)
    assert_everywhere(
        messages,
        "has no tokenizer files: none of tokenizer.json, tokenizer.model",
        "vocab.json + merges.txt",
        "(it holds config.json, generation_config.json, model.safetensors)",
        "fix: copy the checkpoint's tokenizer files there",
    )
    for message in messages.values():
        assert "install" not in message and "implementation=remote" not in message


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """An empty local HF cache, and a hub endpoint that refuses connections at once (no network in tests)."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.setattr(
        constants, "HUGGINGFACE_CO_URL_TEMPLATE", "http://127.0.0.1:9/{repo_id}/resolve/{revision}/{filename}"
    )
    return tmp_path / "hub-cache"


def test_a_hub_id_not_cached_says_so_and_that_downloading_is_off(hub, capsys):
    messages = failures("some-org/some-dllm", capsys=capsys)
    assert_everywhere(
        messages,
        "'some-org/some-dllm' is neither a local directory",
        f"nor a hub id in the local Hugging Face cache ({hub}), and downloading is off",
        "fix: set model.dllm.allow_download=true",
    )
    assert not any("couldn't connect" in message for message in messages.values())


def test_a_download_without_network_fails_at_once(hub, capsys):
    """huggingface_hub alone retries five times (about 23 s) before it gives up."""
    start = time.perf_counter()
    messages = failures("some-org/some-dllm", "model.dllm.allow_download=true", capsys=capsys)
    assert time.perf_counter() - start < 15, "three front doors, each well under huggingface_hub's 23 s"
    assert_everywhere(
        messages,
        "is not in the local Hugging Face cache and model.dllm.allow_download=true, but the hub",
        "cannot be reached",
        "fix: run where the hub is reachable",
    )


def test_a_cached_hub_id_is_checked_in_its_snapshot(hub, checkpoint):
    """With downloading off, the files must be in the cached snapshot: missing weights fail the dry run there."""
    snapshot = hub / "models--some-org--some-dllm" / "snapshots" / "0123abc"
    shutil.copytree(checkpoint, snapshot)
    (hub / "models--some-org--some-dllm" / "refs").mkdir()
    (hub / "models--some-org--some-dllm" / "refs" / "main").write_text("0123abc")
    assert dry_run(LLADA, ["model.dllm.path=some-org/some-dllm"]).ok
    (snapshot / "model.safetensors").unlink()
    report = dry_run(LLADA, ["model.dllm.path=some-org/some-dllm"])
    assert report.checks() == {"weights"} and str(snapshot) in report.errors[0].message


def test_the_default_dry_run_fits_the_default_model(capsys):
    assert main(["generate", "-c", LLADA, "--dry-run"]) == 0
    assert "prompt_budget: 96 tokens (model.dllm's context 128 - max_new_tokens 32)" in capsys.readouterr().out


def test_a_prompt_budget_that_does_not_fit_says_how_much_does(capsys):
    assert main(["generate", "-c", LLADA, "--dry-run", "--prompt-budget", "512"]) == 2
    out = capsys.readouterr().out
    assert (
        "context 128 < prompt budget 512 + generation.max_new_tokens 32 = 544 (room for prompts of 96 tokens at "
        "most)" in out
    )
    assert "fix: lower --prompt-budget (prompt_budget) or generation.max_new_tokens" in out
    report = dry_run(LLADA, ["generation.max_new_tokens=128"])
    assert report.checks() == {"context"} and "(no room for any prompt)" in report.errors[0].message
