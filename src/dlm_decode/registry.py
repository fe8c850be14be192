"""The strategy registry: every strategy known to the process, by role and name.

Plugins fill it through their ``dlm_register`` hook (see :mod:`dlm_decode.plugins` for discovery); configs select
strategies from it by name (:mod:`dlm_decode.config`), and a decoder builds the chosen ones with their factories.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from dlm_decode.errors import ConfigError, PluginError

ROLES = ("window", "cache", "proposal", "verification")

#: The hook each role's strategy object must implement.
ROLE_HOOKS = {"window": "dlm_window", "cache": "dlm_cache", "proposal": "dlm_propose", "verification": "dlm_verify"}


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
    :ivar requires: dotted config keys the strategy cannot work without (each must not be null), with how to set
        each; checked when a config is composed (``load_config``), so ``dlm-decode config validate`` and the dry
        run report them before any model loads.
    """

    role: str
    name: str
    config_cls: type
    factory: Callable[[Any, Any], object]
    plugin: str
    package: str
    version: str
    requires: Mapping[str, str] = field(default_factory=dict)

    @property
    def label(self) -> str:
        """How errors name the strategy: ``<plugin> (<role> strategy '<name>')``."""
        return f"{self.plugin} ({self.role} strategy {self.name!r})"


class StrategyRegistry:
    """All strategies known to this process, by role and name."""

    def __init__(self) -> None:
        self._specs: dict[tuple[str, str], StrategySpec] = {}
        self._origin: tuple[str, str, str] = ("?", "?", "?")

    def add(
        self,
        role: str,
        name: str,
        config_cls: type,
        factory: Callable[[Any, Any], object],
        *,
        requires: Mapping[str, str] | None = None,
    ) -> None:
        """Register a strategy (called from a plugin's ``dlm_register``).

        :param requires: optional: the config keys the strategy needs set (not null), each with the fix to print
            when it is null, e.g. ``{"model.ar": "set model.ar.path (e.g. embedded:ar)"}``.
        :raises PluginError: for an unknown role, a name already registered for that role, or a ``requires`` that
            is not a mapping of dotted keys to fixes.
        """
        plugin, package, version = self._origin
        if role not in ROLES:
            raise PluginError(plugin, "dlm_register", f"unknown role {role!r}", f"use one of {', '.join(ROLES)}")
        requires = dict(requires or {})
        if not all(isinstance(key, str) and key and isinstance(fix, str) and fix for key, fix in requires.items()):
            raise PluginError(
                plugin,
                "dlm_register",
                f"{role} strategy {name!r}: requires must map dotted config keys to fixes, got {requires!r}",
                "e.g. requires={'model.ar': 'set model.ar.path (e.g. embedded:ar)'}",
            )
        if (role, name) in self._specs:
            other = self._specs[(role, name)]
            raise PluginError(
                plugin,
                "dlm_register",
                f"{role} strategy {name!r} is already registered by {other.plugin} ({other.package})",
                "choose another name, or uninstall one of the two packages",
            )
        self._specs[(role, name)] = StrategySpec(role, name, config_cls, factory, plugin, package, version, requires)

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

    @contextlib.contextmanager
    def origin(self, plugin: str, package: str, version: str) -> Iterator[None]:
        """Record the strategies added in the block as registered by ``plugin`` of ``package`` ``version``."""
        self._origin = (plugin, package, version)
        try:
            yield
        finally:
            self._origin = ("?", "?", "?")
