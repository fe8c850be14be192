"""Register strategies inline, for tests: the same discovery path as an installed plugin package."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dlm_decode.hookspecs import hookimpl
from dlm_decode.plugins import build_registry
from dlm_decode.registry import StrategyRegistry


def registry_with(
    *strategies: tuple[str, str, type, Callable[[Any, Any], object]], plugin_name: str = "tests.inline_plugin"
) -> StrategyRegistry:
    """A registry with every discovered strategy plus ``strategies`` (``(role, name, config_cls, factory)``),
    registered by a plugin called ``plugin_name``."""

    class InlinePlugin:
        @staticmethod
        @hookimpl
        def dlm_register(registry: StrategyRegistry) -> None:
            for role, name, config_cls, factory in strategies:
                registry.add(role, name, config_cls, factory)

    return build_registry({plugin_name: InlinePlugin})
