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
    load only these entry points (a name no installed entry point has is a :class:`PluginError`).
``DLM_DECODE_TRACE_PLUGINS=1``
    print every hook call of every decoder to stderr.

The two on/off switches are off when unset, empty, ``0``, ``false``, ``no`` or ``off`` (any case), on otherwise.
"""

from __future__ import annotations

import difflib
import importlib
import os
import sys
import types
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata
from typing import Any, Callable, Iterator

import pluggy

from dlm_decode import hookspecs
from dlm_decode.errors import ConfigError, PluginError


def _switch(name: str) -> bool:
    """Whether the environment switch ``name`` is on (unset, empty, 0, false, no and off mean off)."""
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no", "off")


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
    """A manager with the built-in plugin modules and (unless disabled) the ``dlm_decode`` entry points.

    :raises PluginError: when two distributions give an entry point the same name, ``DLM_DECODE_PLUGINS`` names an
        entry point that is not installed, an entry point fails to load, or a plugin implements a hook that does
        not exist or asks a hook for an argument it does not pass.
    """
    manager = _new_manager()
    for module_name in DEFAULT_PLUGINS:
        register(manager, importlib.import_module(module_name), module_name)
    if not _switch("DLM_DECODE_DISABLE_PLUGIN_AUTOLOAD"):
        for entry_point in _selected_entry_points():
            _load_entry_point(manager, entry_point)
    check_pending(manager)
    return manager


def _dist_label(entry_point: metadata.EntryPoint) -> str:
    """``dlm-decode-eb-sampler 0.1.0``: the distribution of ``entry_point``."""
    dist = entry_point.dist
    return "an unknown distribution" if dist is None else f"{dist.name} {dist.version}"


def _entry_point_label(entry_point: metadata.EntryPoint) -> str:
    """``eb_sampler (dlm-decode-eb-sampler 0.1.0)``: the entry point's name and its distribution."""
    return f"{entry_point.name} ({_dist_label(entry_point)})"


def _selected_entry_points() -> list[metadata.EntryPoint]:
    """The ``dlm_decode`` entry points to load: all of them, or only those ``DLM_DECODE_PLUGINS`` names.

    :raises PluginError: when two distributions use the same entry-point name (one would hide the other), or when
        ``DLM_DECODE_PLUGINS`` names an entry point no installed distribution has.
    """
    by_name: dict[str, metadata.EntryPoint] = {}
    for entry_point in metadata.entry_points(group=hookspecs.PROJECT_NAME):  # one copy of each distribution
        first = by_name.setdefault(entry_point.name, entry_point)
        if first is not entry_point:
            raise PluginError(
                entry_point.name, f"entry point group {hookspecs.PROJECT_NAME!r}",
                f"two installed packages, {_dist_label(first)} and {_dist_label(entry_point)}, both name an entry "
                f"point {entry_point.name!r}; one of the two plugins would silently hide the other",
                "uninstall one of the two packages, or rename the entry point in one package's "
                "`[project.entry-points.dlm_decode]`",
            )
    allow = [name.strip() for name in os.environ.get("DLM_DECODE_PLUGINS", "").split(",") if name.strip()]
    unknown = [name for name in allow if name not in by_name]
    if unknown:
        raise PluginError(
            ", ".join(unknown), "DLM_DECODE_PLUGINS",
            f"no installed package has a {hookspecs.PROJECT_NAME!r} entry point of this name; installed entry "
            f"points: {', '.join(sorted(by_name)) or 'none'}",
            "correct the name in DLM_DECODE_PLUGINS, install the package that provides it, or unset "
            "DLM_DECODE_PLUGINS to load every installed entry point",
        )
    return [entry_point for name, entry_point in by_name.items() if not allow or name in allow]


def _load_entry_point(manager: pluggy.PluginManager, entry_point: metadata.EntryPoint) -> None:
    """Import ``entry_point`` and register it under its name with pluggy (which records its distribution)."""
    label = _entry_point_label(entry_point)
    if manager.has_plugin(entry_point.name):
        raise PluginError(label, f"entry point group {hookspecs.PROJECT_NAME!r}",
                          f"the name {entry_point.name!r} is already taken by a built-in plugin",
                          "rename the entry point in the package's `[project.entry-points.dlm_decode]`")
    try:
        manager.load_setuptools_entrypoints(hookspecs.PROJECT_NAME, name=entry_point.name)
    except pluggy.PluginValidationError as exc:
        raise _invalid_plugin(manager, exc.plugin, label, exc) from exc
    except Exception as exc:
        raise PluginError(
            label, "import", f"loading `{entry_point.value}` failed: {type(exc).__name__}: {exc}",
            "fix or uninstall the package, leave the plugin out of DLM_DECODE_PLUGINS, or set "
            "DLM_DECODE_DISABLE_PLUGIN_AUTOLOAD=1",
        ) from exc


def register(manager: pluggy.PluginManager, plugin: object, name: str | None = None, label: str | None = None) -> None:
    """``manager.register(plugin, name)``, with pluggy's validation failures as a :class:`PluginError`.

    :param label: names the plugin in errors (default: ``name``, else the plugin's class).
    :raises PluginError: when a hook implementation asks for an argument the hook does not pass, or pluggy rejects
        the plugin for another reason (e.g. a ``wrapper=True`` implementation that is not a generator).
    """
    try:
        manager.register(plugin, name=name)
    except pluggy.PluginValidationError as exc:
        raise _invalid_plugin(manager, plugin, label or name or _object_label(plugin), exc) from exc


def _invalid_plugin(manager: pluggy.PluginManager, plugin: object, label: str,
                    exc: pluggy.PluginValidationError) -> PluginError:
    """The :class:`PluginError` for pluggy's rejection ``exc`` of ``plugin``: the hook implementation asking for
    arguments its hook does not pass when there is one, else pluggy's own message."""
    for attribute in dir(plugin):
        options = manager.parse_hookimpl_opts(plugin, attribute)
        if options is None:
            continue
        hook_name = options.get("specname") or attribute
        caller = getattr(manager.hook, hook_name, None)
        if caller is None or caller.spec is None:
            continue
        impl = pluggy.HookImpl(plugin, label, getattr(plugin, attribute), options)
        extra = [arg for arg in impl.argnames if arg not in caller.spec.argnames]
        if extra:
            return PluginError(
                label, hook_name, f"the implementation asks for {', '.join(extra)}, which `{hook_name}` does not pass",
                f"take only arguments the hook passes, by name: {', '.join(caller.spec.argnames)}",
            )
    return PluginError(label, "registration", f"pluggy rejected the plugin: {' '.join(str(exc).split())}",
                       "see the hook reference (docs/hooks.md) for how each hook may be implemented")


def check_pending(manager: pluggy.PluginManager) -> None:
    """pluggy's ``check_pending`` with a :class:`PluginError`: every hook implementation must be of a known hook.

    :raises PluginError: naming the plugin, the unknown hook and the hooks that exist.
    """
    hooks = sorted(name for name, caller in vars(manager.hook).items() if caller.has_spec())
    for name, caller in vars(manager.hook).items():
        if caller.has_spec():
            continue
        for impl in caller.get_hookimpls():
            if impl.optionalhook:
                continue
            close = difflib.get_close_matches(name, hooks, n=1)
            rename = f"rename it to `{close[0]}`" if close else "rename it"
            raise PluginError(_impl_label(manager, impl), name, f"implements `{name}`, which is not a "
                              f"{hookspecs.PROJECT_NAME} hook", f"{rename}; the hooks are {', '.join(hooks)}")


def _object_label(plugin: object) -> str:
    """A name for a plugin registered without one: the module's or class's name, or the class of an object."""
    if isinstance(plugin, (type, types.ModuleType)):
        return plugin.__name__
    cls = type(plugin)
    return f"{cls.__module__}.{cls.__qualname__} object"


def _impl_label(manager: pluggy.PluginManager, impl: pluggy.HookImpl) -> str:
    """The plugin of ``impl``: its registered name (its class for an object registered without a name) and, for an
    entry point, its distribution."""
    name = _object_label(impl.plugin) if impl.plugin_name == str(id(impl.plugin)) else impl.plugin_name
    for plugin, dist in manager.list_plugin_distinfo():
        if plugin is impl.plugin:
            return f"{name} ({dist.project_name} {dist.version})"
    return name


def hook_error(caller: pluggy.HookCaller, exc: Exception, role_labels: dict[str, str], role: str | None = None
               ) -> PluginError:
    """The :class:`PluginError` for ``exc``, raised calling the hook of ``caller``, naming the implementation
    that raised it (for :class:`dlm_decode.loop.Roles`; called only on failure).

    The culprit is the implementation owning the innermost traceback frame among the hook's implementations:
    a wrapper raising its own exception is blamed, while an exception raised by the wrapped implementation
    and merely passed on through a wrapper's ``yield`` is blamed on that implementation. A frame whose code
    several implementations share (functions wrapped by one decorator) names none of them. When no frame names
    an implementation (pluggy itself raised, e.g. for a wrapper that never yields), a hook's only implementation
    is blamed, and with several the error lists them all.

    :param role_labels: role -> label of the decoder's strategy for that role, whose plugin
        :func:`decoder_manager` registers as ``<role>:<strategy name>``.
    :param role: the role whose hook this is (None for an observer hook): a failure of that role's strategy
        points at its config section.
    """
    impls = caller.get_hookimpls()
    owners: dict[Any, list[pluggy.HookImpl]] = {}
    for impl in impls:
        owners.setdefault(getattr(impl.function, "__code__", None), []).append(impl)
    culprit = impls[0] if len(impls) == 1 else None
    traceback = exc.__traceback__
    while traceback is not None:
        owner = owners.get(traceback.tb_frame.f_code, ())
        culprit = owner[0] if len(owner) == 1 else culprit
        traceback = traceback.tb_next

    def is_strategy(impl: pluggy.HookImpl, of_role: str | None) -> bool:
        impl_role, colon, _ = impl.plugin_name.partition(":")
        return bool(colon) and impl_role in role_labels and of_role in (None, impl_role)

    def label(impl: pluggy.HookImpl) -> str:
        if is_strategy(impl, None):
            name = role_labels[impl.plugin_name.partition(":")[0]]
        elif impl.plugin_name == str(id(impl.plugin)):
            name = _object_label(impl.plugin)
        else:
            name = impl.plugin_name
        return f"{name} (a wrapper)" if impl.wrapper or impl.hookwrapper else name

    problem = f"raised {type(exc).__name__}: {exc}"
    if culprit is None:
        names = ", ".join(label(impl) for impl in impls) or "no registered implementation"
        return PluginError(f"one of {names}", caller.name, problem,
                           "see the traceback above for the implementation that raised, and fix or remove its plugin")
    if is_strategy(culprit, None):  # the decoder's own strategy for some role, a wrapper of another hook included
        culprit_role = culprit.plugin_name.partition(":")[0]
        fix = f"check the parameters of `decoder.{culprit_role}`, or report the bug to the plugin's authors"
    else:
        fix = "fix the plugin, or remove it (observers are passed to the Decoder as `observers=`)"
    return PluginError(label(culprit), caller.name, problem, fix)


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

    Each strategy object is registered as ``<role>:<strategy name>`` (:func:`hook_error` relies on this).

    :raises PluginError: when a strategy object does not implement its role hook, or implements another
        role's hook (which would make the role ambiguous); when a strategy or observer implements a hook that
        does not exist, or asks a hook for an argument it does not pass.
    """
    from dlm_decode import loop

    manager = _new_manager()
    manager.register(loop.CoreInputs(), name="core.inputs")
    for role, (spec, plugin) in strategies.items():
        register(manager, plugin, f"{role}:{spec.name}", f"{spec.plugin} ({spec.role} strategy {spec.name!r})")
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
        register(manager, observer)
    check_pending(manager)
    return manager
