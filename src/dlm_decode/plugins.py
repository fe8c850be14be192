"""Plugin discovery: the built-in plugin modules and the ``dlm_decode`` entry points, collected into the
:class:`~dlm_decode.registry.StrategyRegistry`.

The *discovery* manager (:func:`discovery_manager`) registers the built-in plugin modules listed in
:data:`DEFAULT_PLUGINS`, then every module of the ``dlm_decode`` entry-point group, and asks each of them to fill a
registry through the ``dlm_register`` hook: built-ins go through exactly the same path as third-party packages.
Running the strategies a config chose is :mod:`dlm_decode.dispatch`'s.

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
from collections.abc import Mapping
from functools import lru_cache
from importlib import metadata

import pluggy

from dlm_decode import hookspecs
from dlm_decode.errors import PluginError
from dlm_decode.registry import StrategyRegistry


def env_switch(name: str) -> bool:
    """Whether the environment switch ``name`` is on (unset, empty, 0, false, no and off mean off)."""
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no", "off")


DEFAULT_PLUGINS = (
    "dlm_decode.strategies.windows",
    "dlm_decode.strategies.caches",
    "dlm_decode.strategies.proposals",
    "dlm_decode.strategies.verification",
    "dlm_decode.strategies.apd",
    "dlm_decode.strategies.threshold",
    "dlm_decode.strategies.block_caches",
    "dlm_decode.strategies.wino",
    "dlm_decode.strategies.prophet",
    "dlm_decode.strategies.klass",
    "dlm_decode.strategies.dinfer",
    "dlm_decode.strategies.local_leap",
    "dlm_decode.strategies.slow_fast",
    "dlm_decode.strategies.dpad",
    "dlm_decode.strategies.freedave",
    "dlm_decode.strategies.adaptive_cache",
    "dlm_decode.strategies.editing",
    "dlm_decode.strategies.uniform_noise",
)


def tracing_enabled() -> bool:
    """``DLM_DECODE_TRACE_PLUGINS`` is set: pluggy writes every hook call to stderr."""
    return env_switch("DLM_DECODE_TRACE_PLUGINS")


def new_manager() -> pluggy.PluginManager:
    """An empty manager of dlm_decode's hooks (tracing every call when ``DLM_DECODE_TRACE_PLUGINS`` is on)."""
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
    manager = new_manager()
    for module_name in DEFAULT_PLUGINS:
        register(manager, importlib.import_module(module_name), module_name)
    if not env_switch("DLM_DECODE_DISABLE_PLUGIN_AUTOLOAD"):
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
                entry_point.name,
                f"entry point group {hookspecs.PROJECT_NAME!r}",
                f"two installed packages, {_dist_label(first)} and {_dist_label(entry_point)}, both name an entry "
                f"point {entry_point.name!r}; one of the two plugins would silently hide the other",
                "uninstall one of the two packages, or rename the entry point in one package's "
                "`[project.entry-points.dlm_decode]`",
            )
    allow = [name.strip() for name in os.environ.get("DLM_DECODE_PLUGINS", "").split(",") if name.strip()]
    unknown = [name for name in allow if name not in by_name]
    if unknown:
        raise PluginError(
            ", ".join(unknown),
            "DLM_DECODE_PLUGINS",
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
        raise PluginError(
            label,
            f"entry point group {hookspecs.PROJECT_NAME!r}",
            f"the name {entry_point.name!r} is already taken by a built-in plugin",
            "rename the entry point in the package's `[project.entry-points.dlm_decode]`",
        )
    try:
        manager.load_setuptools_entrypoints(hookspecs.PROJECT_NAME, name=entry_point.name)
    except pluggy.PluginValidationError as exc:
        raise _invalid_plugin(manager, exc.plugin, label, exc) from exc
    except Exception as exc:
        raise PluginError(
            label,
            "import",
            f"loading `{entry_point.value}` failed: {type(exc).__name__}: {exc}",
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


def _invalid_plugin(
    manager: pluggy.PluginManager, plugin: object, label: str, exc: pluggy.PluginValidationError
) -> PluginError:
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
                label,
                hook_name,
                f"the implementation asks for {', '.join(extra)}, which `{hook_name}` does not pass",
                f"take only arguments the hook passes, by name: {', '.join(caller.spec.argnames)}",
            )
    return PluginError(
        label,
        "registration",
        f"pluggy rejected the plugin: {' '.join(str(exc).split())}",
        "see the hook reference (docs/hooks.md) for how each hook may be implemented",
    )


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
            raise PluginError(
                _impl_label(manager, impl),
                name,
                f"implements `{name}`, which is not a {hookspecs.PROJECT_NAME} hook",
                f"{rename}; the hooks are {', '.join(hooks)}",
            )


def _object_label(plugin: object) -> str:
    """A name for a plugin registered without one: the module's or class's name, or the class of an object."""
    if isinstance(plugin, (type, types.ModuleType)):
        return plugin.__name__
    cls = type(plugin)
    return f"{cls.__module__}.{cls.__qualname__} object"


def registered_name(impl: pluggy.HookImpl) -> str:
    """The name ``impl``'s plugin was registered under (its :func:`_object_label` when registered without one)."""
    return _object_label(impl.plugin) if impl.plugin_name == str(id(impl.plugin)) else impl.plugin_name


def _impl_label(manager: pluggy.PluginManager, impl: pluggy.HookImpl) -> str:
    """The plugin of ``impl``: its registered name and, for an entry point, its distribution."""
    name = registered_name(impl)
    for plugin, dist in manager.list_plugin_distinfo():
        if plugin is impl.plugin:
            return f"{name} ({dist.project_name} {dist.version})"
    return name


def build_registry(extra: Mapping[str, object] | None = None) -> StrategyRegistry:
    """A registry of the built-in and installed plugins (:func:`discovery_manager`) and of ``extra``: name ->
    plugin object or module, registered after them (an inline plugin of a test). Each plugin's ``dlm_register``
    fills it, and the registry records which plugin, package and version added each strategy.

    :raises PluginError: naming the plugin whose ``dlm_register`` raised or added a strategy twice.
    """
    manager = discovery_manager()
    for name, plugin in (extra or {}).items():
        register(manager, plugin, name)
    check_pending(manager)
    registry = StrategyRegistry()
    distributions = {id(plugin): dist for plugin, dist in manager.list_plugin_distinfo()}
    own_version = _version("dlm-decode")
    for impl in manager.hook.dlm_register.get_hookimpls():
        dist = distributions.get(id(impl.plugin))
        package, version = ("dlm-decode", own_version) if dist is None else (dist.project_name, dist.version)
        with registry.origin(impl.plugin_name, package, version):
            try:
                impl.function(registry=registry)
            except PluginError:
                raise
            except Exception as exc:
                raise PluginError(
                    impl.plugin_name,
                    "dlm_register",
                    f"raised {type(exc).__name__}: {exc}",
                    "fix or uninstall the plugin package, or set DLM_DECODE_DISABLE_PLUGIN_AUTOLOAD=1",
                ) from exc
    return registry


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "unknown"


@lru_cache(maxsize=1)
def get_registry() -> StrategyRegistry:
    """The process-wide registry (built once; :func:`reset_registry` rebuilds it)."""
    return build_registry()


def reset_registry() -> None:
    """Forget the cached registry, e.g. after installing a plugin or changing the environment switches."""
    get_registry.cache_clear()
