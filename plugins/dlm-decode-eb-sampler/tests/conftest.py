"""Every test starts from the installed entry points, whatever switches the surrounding process has set."""

from __future__ import annotations

import pytest

from dlm_decode.plugins import reset_registry

SWITCHES = ("DLM_DECODE_DISABLE_PLUGIN_AUTOLOAD", "DLM_DECODE_PLUGINS", "DLM_DECODE_TRACE_PLUGINS")


@pytest.fixture(autouse=True)
def plugin_environment(monkeypatch):
    """Clear the plugin environment switches and rebuild the process registry before and after each test."""
    for name in SWITCHES:
        monkeypatch.delenv(name, raising=False)
    reset_registry()
    yield
    reset_registry()
