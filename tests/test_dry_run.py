"""``--dry-run`` (models/dry_run.py): every incompatibility it claims to catch, on edited copies of the stand-ins
and of tiny checkpoints, without loading weights (the missing files themselves: tests/test_loading_errors.py)."""

from __future__ import annotations

import pytest

from dlm_decode import ConfigError, ModelError
from dlm_decode.cli import main
from dlm_decode.config.schema import ModelSpec
from dlm_decode.decoder import Decoder
from dlm_decode.models.adapter import DiffusionLM
from dlm_decode.models.dry_run import dry_run
from dlm_decode.testing.models import build_tiny_checkpoint, dream_like_tokenizer

from helpers import edited_copy
from stand_ins import REMOTE


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-pair")
    return {"dllm": build_tiny_checkpoint(root / "dllm"), "ar": build_tiny_checkpoint(root / "ar", causal=True)}


def check(dllm, ar=None, *overrides, trust=True, **kwargs):
    items = [
        f"model.dllm.path={dllm}",
        "model.dllm.implementation=remote",
        f"model.dllm.trust_remote_code={str(trust).lower()}",
        *overrides,
    ]
    if ar is not None:
        items += [f"model.ar.path={ar}", "decoder.verification=apd", "decoder.window=lookahead"]
    if "prompts" not in kwargs:
        kwargs.setdefault("prompt_budget", 16)  # the stand-ins have 256 positions
    return dry_run({}, items, **kwargs)


def test_dry_run_passes_the_paper_pairing_without_weights(stand_ins, tmp_path):
    dream = edited_copy(stand_ins["dream"], tmp_path / "dream")
    qwen = edited_copy(stand_ins["qwen"], tmp_path / "qwen")
    report = check(dream, qwen, prompts=["What is 2+2?"])
    assert report.ok, report.format()
    assert "family dream" in report.facts["dllm"]
    tok = dream_like_tokenizer()
    assert report.facts["special_ids"].startswith(f"mask {tok.convert_tokens_to_ids('<|mask|>')}, ")
    apd = ["generate", "--dry-run", "-c", "configs/decoders/apd.yaml", *REMOTE]
    apd += [f"model.dllm.path={dream}", f"model.ar.path={qwen}"]
    assert main([*apd, "--prompt", "What is 2+2?"]) == 0
    assert main(apd) == 0, "no prompt: the budget is what the contexts leave"
    assert main([*apd, "--prompt-budget", "512"]) == 2, "512 + 32 > 256"


def test_dry_run_needs_trust_remote_code(stand_ins):
    assert check(stand_ins["llada"], trust=False).checks() == {"implementation"}


def test_dry_run_catches_tokenizers_that_disagree(stand_ins, tmp_path):
    def swap(vocab):
        vocab["a"], vocab["b"] = vocab["b"], vocab["a"]

    qwen = edited_copy(stand_ins["qwen"], tmp_path / "qwen", vocab=swap)
    report = check(stand_ins["dream"], qwen)
    assert report.checks() == {"pair_tokenizer"}
    assert "2 AR token(s)" in report.errors[0].message
    pair = check(stand_ins["llada"], stand_ins["qwen"])
    assert pair.checks() == {"pair_tokenizer"}, "LLaDA's tokenizer is not Qwen's"


def test_dry_run_catches_an_ar_head_wider_than_the_dllm_head(stand_ins, tmp_path):
    qwen = edited_copy(stand_ins["qwen"], tmp_path / "qwen", config={"vocab_size": 120})
    report = check(stand_ins["dream"], qwen)
    assert report.checks() == {"pair_vocab"}
    assert "120" in report.errors[0].message and "112" in report.errors[0].message


@pytest.mark.parametrize(
    ("edit", "expected"),
    [({"mask_token": None}, "mask"), ({"pad_token": "<mask>"}, "pad"), ({"eos_token": None}, "eos")],
    ids=["no-mask", "pad-is-mask", "no-eos"],
)
def test_a_bad_special_token_is_refused_by_the_dry_run_and_by_the_real_load(tiny, tmp_path, edit, expected):
    broken = edited_copy(tiny["dllm"], tmp_path / "broken", tokenizer_config=edit)
    assert check(broken).checks() == {expected}
    with pytest.raises(ModelError, match="fix"):
        DiffusionLM.from_spec(ModelSpec(path=str(broken)))


def test_dry_run_checks_the_special_ids_a_config_sets(tiny, tmp_path):
    assert check(tiny["dllm"], None, "model.dllm.mask_token_id=100").checks() == {"mask"}, "head is 100 wide"
    assert check(tiny["dllm"], None, "model.dllm.eos_token_ids=[2,150]").checks() == {"eos"}
    no_mask = edited_copy(tiny["dllm"], tmp_path / "no-mask", tokenizer_config={"mask_token": None})
    assert check(no_mask, None, "model.dllm.mask_token_id=3").ok, "an explicit id fixes a missing one"


def test_dry_run_catches_a_context_too_short(stand_ins, tiny, tmp_path):
    short = edited_copy(tiny["dllm"], tmp_path / "short", config={"max_position_embeddings": 40})
    assert check(short, None, "generation.max_new_tokens=32", prompts=["x" * 6]).ok, "<bos> + 6 + newline + 32 = 40"
    report = check(short, None, "generation.max_new_tokens=32", prompts=["x" * 7])
    assert report.checks() == {"context"} and report.errors[0].key == "model.dllm.path"
    short_ar = edited_copy(stand_ins["qwen"], tmp_path / "short-ar", config={"max_position_embeddings": 64})
    report = check(stand_ins["dream"], short_ar, "generation.max_new_tokens=32", prompt_budget=40)
    assert report.checks() == {"context"} and report.errors[0].key == "model.ar.path"
    long_dream = edited_copy(stand_ins["dream"], tmp_path / "long", config={"max_position_embeddings": 131072})
    assert check(long_dream, None, prompt_budget=2048 - 32).ok
    assert check(long_dream, None, prompt_budget=2048 - 31).checks() == {"context"}, "Dream was trained on 2048"


def test_dry_run_catches_causal_dllms_and_bidirectional_ar_models(tiny):
    assert check(tiny["ar"]).checks() == {"causal"}
    report = check(tiny["dllm"], tiny["dllm"])
    assert report.checks() == {"causal"} and report.errors[0].key == "model.ar.path"


def test_dry_run_and_loading_agree_on_causal_dllms_and_a_mask_id_that_is_an_eos_id(tiny):

    for path, overrides, problem in ((tiny["ar"], [], "causal"), (tiny["dllm"], ["model.dllm.mask_token_id=2"], "eos")):
        assert problem in check(path, None, *overrides).checks(), "the dry run finds it"
        with pytest.raises(ModelError, match="fix:"):  # and loading the weights refuses it too
            Decoder.from_config({}, [f"model.dllm.path={path}", *overrides])


def test_dry_run_catches_apd_without_an_ar_model(tiny):
    with pytest.raises(
        ConfigError,
        match=r"(?s)`model.ar`: the 'apd' verification strategy.*null.*fix: set "
        r"model.ar.path",
    ):
        check(tiny["dllm"], None, "decoder.verification=apd")


def test_dry_run_reports_unreadable_files_and_family_overrides(stand_ins, tiny, tmp_path):
    assert check(tmp_path / "nowhere").checks() == {"config"}
    no_tokenizer = edited_copy(tiny["dllm"], tmp_path / "tok", drop=("tokenizer.json", "tokenizer_config.json"))
    assert check(no_tokenizer).checks() == {"tokenizer"}
    report = check(stand_ins["dream"], None, "model.dllm.family=llada")
    assert report.checks("warning") == {"family"}


def test_cli_dry_run_exit_status(tiny, capsys):
    assert main(["eval", "--dry-run", f"model.dllm.path={tiny['ar']}", "--limit", "2"]) == 2
    assert "[causal]" in capsys.readouterr().out
    assert main(["eval", "--dry-run", f"model.dllm.path={tiny['dllm']}", "--limit", "2", "--tasks", "arith"]) == 0


def test_a_finding_carries_the_errors_message_and_fix_apart(tiny, tmp_path):
    """The dry run reads ``error.fix``: the finding's message holds no fix, its fix is the one loading gives."""
    [missing] = check(tmp_path / "nowhere").errors
    assert "fix" not in missing.message and missing.message.startswith(f"`model.dllm.path` = '{tmp_path / 'nowhere'}'")
    assert missing.fix.startswith("check the path (a relative one is read from the working directory")
    [attention] = check(tiny["dllm"], None, "model.dllm.block_size=4").errors
    assert attention.message == (
        "model.dllm.block_size is 4, but the model is bidirectional (model.dllm.attention: auto)"
    )
    assert attention.fix == "set model.dllm.attention=block_causal if it is block-causal, or drop model.dllm.block_size"
    assert str(attention).endswith("\n    fix: " + attention.fix)
