"""The strategy registry: every strategy known to the process, by role and name.

Plugins fill it through their ``dlm_register`` hook (see :mod:`dlm_decode.plugins` for discovery); configs select
strategies from it by name (:mod:`dlm_decode.config`), and a decoder builds the chosen ones with their factories.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from dlm_decode.errors import ConfigError, PluginError

ROLES = ("window", "cache", "proposal", "verification")

#: The hook each role's strategy object must implement.
ROLE_HOOKS = {
    "window": "dlm_window",
    "cache": "dlm_cache",
    "proposal": "dlm_propose",
    "verification": "dlm_verify",
}

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

    @property
    def label(self) -> str:
        """How errors name the strategy: ``<plugin> (<role> strategy '<name>')``."""
        return f"{self.plugin} ({self.role} strategy {self.name!r})"


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

    @contextlib.contextmanager
    def origin(self, plugin: str, package: str, version: str) -> Iterator[None]:
        """Record the strategies added in the block as registered by ``plugin`` of ``package`` ``version``."""
        self._origin = (plugin, package, version)
        try:
            yield
        finally:
            self._origin = ("?", "?", "?")
