"""The pytest plugin that installing dlm_decode registers (the ``pytest11`` entry point): pytest loads it in every
session of every project with dlm_decode installed, so loading it must stay cheap."""

from __future__ import annotations

import subprocess
import sys

LOAD_THE_PLUGIN = """
import sys
from importlib.metadata import entry_points

(plugin,) = [ep for ep in entry_points(group="pytest11") if ep.value.startswith("dlm_decode")]
plugin.load()
print(plugin.value, sorted(name for name in ("torch", "transformers") if name in sys.modules))
"""


def test_loading_the_pytest_plugin_imports_neither_torch_nor_transformers():
    loaded = subprocess.run([sys.executable, "-c", LOAD_THE_PLUGIN], capture_output=True, text=True, check=True)
    assert loaded.stdout.split() == ["dlm_decode.testing.fixtures", "[]"], loaded.stdout + loaded.stderr
