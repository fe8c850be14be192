"""Register strategies inline, for tests: the same discovery path as an installed plugin package."""

from __future__ import annotations

from typing import Any, Callable

from dlm_decode.hookspecs import hookimpl
from dlm_decode.plugins import StrategyRegistry, discovery_manager


def registry_with(*strategies: tuple[str, str, type, Callable[[Any, Any], object]],
                  plugin_name: str = "tests.inline_plugin") -> StrategyRegistry:
    """A registry with every discovered strategy plus ``strategies`` (``(role, name, config_cls, factory)``),
    registered by a plugin called ``plugin_name``."""

    class InlinePlugin:
        @staticmethod
        @hookimpl
        def dlm_register(registry: StrategyRegistry) -> None:
            for role, name, config_cls, factory in strategies:
                registry.add(role, name, config_cls, factory)

    manager = discovery_manager()
    manager.register(InlinePlugin, name=plugin_name)
    registry = StrategyRegistry()
    registry.collect(manager)
    return registry
