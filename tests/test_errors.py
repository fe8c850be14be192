"""The errors (errors.py): one constructor ``(message, fix=None)``, one format for the fix, the fix kept apart
(``error.fix``), and no error in the package or its plugins that spells its fix by hand."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from dlm_decode.errors import (
    ConfigError,
    DecodeError,
    DlmDecodeError,
    InputError,
    ModelError,
    PluginError,
    StrategyError,
    with_fix,
)

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("kind", [DlmDecodeError, InputError, ModelError, DecodeError, StrategyError])
def test_an_error_keeps_its_fix_apart_and_prints_it_on_a_line_of_its_own(kind):
    error = kind("`x` is 3, over its bound 2", fix="set x to 2 or less")
    assert (error.message, error.fix) == ("`x` is 3, over its bound 2", "set x to 2 or less")
    assert str(error) == "`x` is 3, over its bound 2\n  fix: set x to 2 or less"
    bare = kind("no fix to suggest")
    assert (str(bare), bare.message, bare.fix) == ("no fix to suggest", "no fix to suggest", None)


def test_the_errors_that_name_a_key_or_a_plugin_put_it_in_front_of_the_message():
    error = ConfigError("decoder.window.size", "must be at least 1, got 0", "set it to 1 or more")
    assert (error.key, error.message, error.fix) == (
        "decoder.window.size",
        "`decoder.window.size`: must be at least 1, got 0",
        "set it to 1 or more",
    )
    assert str(error) == "`decoder.window.size`: must be at least 1, got 0\n  fix: set it to 1 or more"
    error = PluginError("wino", "dlm_verify", "raised KeyError: 'k'", fix="report it")
    assert (error.plugin, error.hook, error.fix) == ("wino", "dlm_verify", "report it")
    assert str(error) == "plugin wino in dlm_verify: raised KeyError: 'k'\n  fix: report it"
    assert str(ConfigError("a", "unknown key")) == "`a`: unknown key"


def test_errors_that_are_not_dlm_decode_errors_use_the_same_format():
    assert with_fix("needs lm-eval", "pip install lm-eval") == "needs lm-eval\n  fix: pip install lm-eval"
    assert with_fix("no fix", None) == "no fix"


def _hand_spelt_fixes(path: Path) -> list[str]:
    """``file:line`` of every string literal (f-string parts too) in ``path`` that spells ``fix:`` itself."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and re.search(r"\bfix: ", node.value):
            found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_no_error_spells_its_fix_by_hand():
    """Every raising site passes ``fix=`` (or uses :func:`with_fix`); only errors.py spells the separator, and the
    dry run's report its own indented line under each finding."""
    allowed = {ROOT / "src" / "dlm_decode" / "errors.py", ROOT / "src" / "dlm_decode" / "models" / "dry_run.py"}
    sources = [*(ROOT / "src" / "dlm_decode").rglob("*.py"), *(ROOT / "plugins").glob("*/src/**/*.py")]
    assert len(sources) > 50
    found = [site for path in sources if path not in allowed for site in _hand_spelt_fixes(path)]
    assert found == []
