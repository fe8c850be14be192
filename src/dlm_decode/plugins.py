"""Plugin discovery, the strategy registry, and the per-decoder plugin managers.

Discovery and execution are separate:

* the *discovery* manager (:func:`discovery_manager`) registers the built-in plugin modules listed in
  :data:`DEFAULT_PLUGINS`, then every module of the ``dlm_decode`` entry-point group, and asks each of them to
  fill a :class:`StrategyRegistry` through the ``dlm_register`` hook. Built-ins go through exactly the same path
  as third-party packages.
* each decoder builds its own manager (:func:`decoder_manager`) holding only the strategy objects its config
  chose, one per role, so role hooks return a single answer.

Environment switches:

``DLM_DECODE_DISABLE_PLUGIN_AUTOLOAD=1``
    do not load entry points (only the built-ins are registered).
``DLM_DECODE_PLUGINS=name1,name2``
    load only these entry points.
``DLM_DECODE_TRACE_PLUGINS=1``
    print every hook call of every decoder to stderr.
"""

from __future__ import annotations

import importlib
import os
import sys
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata
from typing import Any, Callable, Iterator

import pluggy

from dlm_decode import hookspecs


def _switch(name: str) -> bool:
    """Whether the environment switch ``name`` is on (unset, empty, 0, false, no and off mean off)."""
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no", "off")
from dlm_decode.errors import ConfigError, PluginError

ROLES = ("window", "cache", "proposal", "verification")

#: The hook each role's strategy object must implement.
ROLE_HOOKS = {
    "window": "dlm_window",
    "cache": "dlm_cache",
    "proposal": "dlm_propose",
    "verification": "dlm_verify",
}

DEFAULT_PLUGINS = (
    "dlm_decode.strategies.windows",
    "dlm_decode.strategies.caches",
    "dlm_decode.strategies.proposals",
    "dlm_decode.strategies.verification",
    "dlm_decode.strategies.apd",
    "dlm_decode.strategies.threshold",
    "dlm_decode.strategies.block_caches",
    "dlm_decode.strategies.wino",
)


@dataclass(frozen=True)
class StrategySpec:
    """One registered strategy.

    :ivar role: one of :data:`ROLES`.
    :ivar name: the name configs select it by (``decoder.<role>.name``).
    :ivar config_cls: the dataclass holding its parameters (the schema of its config section).
    :ivar factory: ``factory(config, context)`` -> the plugin object implementing the role hook.
    :ivar plugin: the plugin module (or object) name that registered it.
    :ivar package: the distribution that ships it.
    :ivar version: the distribution's version.
    """

    role: str
    name: str
    config_cls: type
    factory: Callable[[Any, Any], object]
    plugin: str
    package: str
    version: str


class StrategyRegistry:
    """All strategies known to this process, by role and name."""

    def __init__(self) -> None:
        self._specs: dict[tuple[str, str], StrategySpec] = {}
        self._origin: tuple[str, str, str] = ("?", "?", "?")

    def add(self, role: str, name: str, config_cls: type, factory: Callable[[Any, Any], object]) -> None:
        """Register a strategy (called from a plugin's ``dlm_register``).

        :raises PluginError: for an unknown role or a name already registered for that role.
        """
        plugin, package, version = self._origin
        if role not in ROLES:
            raise PluginError(plugin, "dlm_register", f"unknown role {role!r}", f"use one of {', '.join(ROLES)}")
        if (role, name) in self._specs:
            other = self._specs[(role, name)]
            raise PluginError(
                plugin,
                "dlm_register",
                f"{role} strategy {name!r} is already registered by {other.plugin} ({other.package})",
                "choose another name, or uninstall one of the two packages",
            )
        self._specs[(role, name)] = StrategySpec(role, name, config_cls, factory, plugin, package, version)

    def get(self, role: str, name: str) -> StrategySpec:
        """The strategy ``name`` of ``role``.

        :raises ConfigError: naming ``decoder.<role>.name`` and listing the registered names.
        """
        try:
            return self._specs[(role, name)]
        except KeyError:
            known = ", ".join(self.names(role)) or "none"
            raise ConfigError(
                f"decoder.{role}.name",
                f"unknown {role} strategy {name!r}; registered: {known}",
                "pick a registered name, or install the plugin package that provides it (`dlm-decode plugins`)",
            ) from None

    def names(self, role: str) -> list[str]:
        return sorted(name for (r, name) in self._specs if r == role)

    def __iter__(self) -> Iterator[StrategySpec]:
        return iter(sorted(self._specs.values(), key=lambda s: (ROLES.index(s.role), s.name)))

    def collect(self, manager: pluggy.PluginManager) -> None:
        """Ask every plugin of ``manager`` for its strategies, remembering which plugin added which."""
        distributions = {id(plugin): dist for plugin, dist in manager.list_plugin_distinfo()}
        own_version = _version("dlm-decode")
        for impl in manager.hook.dlm_register.get_hookimpls():
            dist = distributions.get(id(impl.plugin))
            if dist is None:
                self._origin = (impl.plugin_name, "dlm-decode", own_version)
            else:
                self._origin = (impl.plugin_name, dist.project_name, dist.version)
            try:
                impl.function(registry=self)
            except PluginError:
                raise
            except Exception as exc:
                raise PluginError(
                    impl.plugin_name, "dlm_register", f"raised {type(exc).__name__}: {exc}",
                    "fix or uninstall the plugin package, or set DLM_DECODE_DISABLE_PLUGIN_AUTOLOAD=1",
                ) from exc
        self._origin = ("?", "?", "?")


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "unknown"


def tracing_enabled() -> bool:
    """``DLM_DECODE_TRACE_PLUGINS`` is set: pluggy writes every hook call to stderr."""
    return _switch("DLM_DECODE_TRACE_PLUGINS")


def _new_manager() -> pluggy.PluginManager:
    manager = pluggy.PluginManager(hookspecs.PROJECT_NAME)
    manager.add_hookspecs(hookspecs)
    if tracing_enabled():
        manager.trace.root.setwriter(sys.stderr.write)
        manager.enable_tracing()
    return manager


def discovery_manager() -> pluggy.PluginManager:
    """A manager with the built-in plugin modules and (unless disabled) the ``dlm_decode`` entry points."""
    manager = _new_manager()
    for module_name in DEFAULT_PLUGINS:
        manager.register(importlib.import_module(module_name), name=module_name)
    if _switch("DLM_DECODE_DISABLE_PLUGIN_AUTOLOAD"):
        return manager
    allow = {name.strip() for name in os.environ.get("DLM_DECODE_PLUGINS", "").split(",") if name.strip()}
    for entry_point in metadata.entry_points(group=hookspecs.PROJECT_NAME):
        if allow and entry_point.name not in allow:
            manager.set_blocked(entry_point.name)
    try:
        manager.load_setuptools_entrypoints(hookspecs.PROJECT_NAME)
    except Exception as exc:
        raise PluginError(
            "entry point group 'dlm_decode'", "import", f"loading a plugin failed: {type(exc).__name__}: {exc}",
            "fix or uninstall the plugin package, or set DLM_DECODE_DISABLE_PLUGIN_AUTOLOAD=1",
        ) from exc
    manager.check_pending()
    return manager


@lru_cache(maxsize=1)
def get_registry() -> StrategyRegistry:
    """The process-wide registry (built once; :func:`reset_registry` rebuilds it)."""
    registry = StrategyRegistry()
    registry.collect(discovery_manager())
    return registry


def reset_registry() -> None:
    """Forget the cached registry, e.g. after installing a plugin or changing the environment switches."""
    get_registry.cache_clear()


def decoder_manager(strategies: dict[str, tuple[StrategySpec, object]], extra: list[object] = ()) -> pluggy.PluginManager:
    """A fresh manager holding one strategy object per role plus the core defaults and ``extra`` observers.

    :raises PluginError: when a strategy object does not implement its role hook, or implements another
        role's hook (which would make the role ambiguous).
    """
    from dlm_decode import loop

    manager = _new_manager()
    manager.register(loop.CoreInputs(), name="core.inputs")
    for role, (spec, plugin) in strategies.items():
        manager.register(plugin, name=f"{role}:{spec.name}")
        implemented = {
            hook for hook in ROLE_HOOKS.values()
            for impl in getattr(manager.hook, hook).get_hookimpls()
            if impl.plugin is plugin and not impl.wrapper and not impl.hookwrapper
        }
        if implemented != {ROLE_HOOKS[role]}:
            raise PluginError(
                f"{spec.plugin} ({spec.role} strategy {spec.name!r})",
                ROLE_HOOKS[role],
                f"a {role} strategy must implement exactly `{ROLE_HOOKS[role]}` among the role hooks, "
                f"but implements {sorted(implemented) or 'none'}",
                "implement the role hook as a method marked with @dlm_decode.hookimpl; use wrapper=True to "
                "extend another role",
            )
    for observer in extra:
        manager.register(observer)
    manager.check_pending()
    return manager
