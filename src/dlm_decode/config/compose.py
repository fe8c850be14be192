"""Compose a decoder config from YAML files, mappings and dotted overrides, and validate it.

Sources merge left to right, then the overrides. A strategy section (``decoder.<role>``) is replaced rather
than merged when a later source names a different strategy (``decoder.verification=threshold`` or
``{name: threshold, ...}``), so one override swaps one strategy with its own defaults; with the same name, or
no name, the parameters merge. Every error names the full dotted key.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from dlm_decode.config.schema import Config, GenerationSection, ModelSection, ModelSpec
from dlm_decode.errors import ConfigError, FieldError, PluginError
from dlm_decode.plugins import get_registry
from dlm_decode.registry import ROLES, StrategyRegistry

Source = str | Path | Mapping | DictConfig

SECTIONS = {
    "model": "a mapping with dllm (and optionally ar)",
    "model.dllm": "a mapping of model keys (path, dtype, device, ...)",
    "generation": "a mapping of generation keys (max_new_tokens, batch_size, seed, ...)",
    "decoder": f"a mapping of roles ({', '.join(ROLES)})",
}
"""The sections that are always present: a source may set their keys but not replace them by a non-mapping
(``null`` would silently reset them to the defaults). ``model.ar`` is not one: ``model.ar=null`` removes it."""


@dataclass
class ResolvedConfig:
    """A validated config.

    :ivar config: the non-strategy sections as dataclasses (``config.decoder`` holds the raw sections).
    :ivar strategies: role -> (strategy name, its validated config dataclass).
    :ivar yaml: the resolved config as YAML, every default filled in.
    :ivar hash: the first 12 hex digits of the SHA-256 of ``yaml``.
    """

    config: Config
    strategies: dict[str, tuple[str, Any]]
    yaml: str
    hash: str

    def to_dict(self) -> dict:
        return _to_dict(OmegaConf.create(self.yaml))


def _to_dict(config: DictConfig | ListConfig) -> dict:
    """``OmegaConf.to_container`` of a config known to be a mapping (its annotation also allows lists and
    scalars)."""
    return cast(dict, OmegaConf.to_container(config))


def load_config(
    sources: Source | Sequence[Source] = (), overrides: Sequence[str] = (), registry: StrategyRegistry | None = None
) -> ResolvedConfig:
    """Merge ``sources`` then ``overrides`` (``key=value`` strings) and validate the result.

    :raises ConfigError: naming the dotted key, the value and the fix.
    """
    if isinstance(sources, (str, Path, Mapping, DictConfig)):
        sources = [sources]
    registry = registry or get_registry()
    merged = _to_dict(OmegaConf.structured(Config))
    for raw in [_read(source) for source in sources] + [_parse_override(item) for item in overrides]:
        _merge(merged, raw, ())
    decoder = merged.pop("decoder")
    config = _validate_sections(merged)
    strategies = _validate_strategies(decoder, registry)
    resolved = {
        "model": _asdict(config.model),
        "decoder": {role: {"name": name, **_asdict(params)} for role, (name, params) in strategies.items()},
        "generation": _asdict(config.generation),
    }
    _check_requirements(resolved, strategies, registry)
    config.decoder = resolved["decoder"]
    text = OmegaConf.to_yaml(OmegaConf.create(resolved))
    return ResolvedConfig(config, strategies, text, hashlib.sha256(text.encode()).hexdigest()[:12])


def _asdict(obj: Any) -> Any:
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) and not isinstance(obj, type) else obj


def _read(source: Source) -> dict:
    if isinstance(source, DictConfig):
        return _to_dict(source)
    if isinstance(source, Mapping):
        return copy.deepcopy(dict(source))
    path = Path(source)
    if not path.is_file():
        raise ConfigError(
            "-c/--config",
            f"no config file at {str(path)!r}",
            "pass the path of a YAML file, e.g. configs/decoders/llada.yaml",
        )
    try:
        data = OmegaConf.to_container(OmegaConf.load(path))
    except Exception as exc:
        raise ConfigError(str(path), f"is not valid YAML: {exc}", "fix the file's syntax") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            str(path),
            f"must hold a mapping at the top level, got {type(data).__name__}",
            "write the file as `model: ...`, `decoder: ...`, `generation: ...`",
        )
    return data


def _parse_override(item: str) -> dict:
    """One ``dotted.key=value`` override as a nested dict (each override is its own source, in order)."""
    key, sep, _ = item.partition("=")
    if not sep or not key or key[0] in "+~" or " " in key:
        raise ConfigError(
            item,
            "overrides must be of the form dotted.key=value",
            "e.g. generation.max_new_tokens=64 or decoder.verification=left_to_right",
        )
    try:
        return _to_dict(OmegaConf.from_dotlist([item]))
    except yaml.YAMLError as exc:  # the value is not YAML (an unclosed brace, say)
        value = item.partition("=")[2]
        problem = _yaml_problem(exc, value)
        raise ConfigError(
            key, f"cannot parse the value {value!r} of the override {item!r}: {problem}", OVERRIDE_VALUE_FIX
        ) from None
    except OmegaConfBaseException as exc:
        raise ConfigError(
            key,
            f"cannot parse the override {item!r}: {exc}",
            "write it as dotted.key=value, e.g. generation.max_new_tokens=64",
        ) from exc


#: How to write an override value that YAML can read (the fix of a value that does not parse).
OVERRIDE_VALUE_FIX = (
    "write the value as YAML, closing every `{` and `[` (a strategy with parameters is "
    "{name: threshold, threshold: 0.8}) and quoting a string that holds `:`, `,`, `{` or `[`; "
    "quote the whole override for the shell, e.g. 'decoder.verification={name: threshold, "
    "threshold: 0.8}'"
)


def _yaml_problem(exc: yaml.YAMLError, value: str) -> str:
    """What YAML says is wrong with ``value``, and where: ``<problem> at column N`` (1-based, of the value) or
    ``<problem> at the end of the value``."""
    problem = getattr(exc, "problem", None) or str(exc).split("\n")[0]
    context = getattr(exc, "context", None)
    text = f"{problem} {context}" if context else problem
    mark = getattr(exc, "problem_mark", None)
    if mark is None:
        return text
    if mark.index >= len(value.rstrip()):
        return f"{text}, at the end of the value"
    where = f"line {mark.line + 1}, column {mark.column + 1}" if "\n" in value else f"column {mark.column + 1}"
    return f"{text}, at {where} of the value"


def _as_section(value: Any, key: str) -> dict:
    if isinstance(value, str):
        return {"name": value}
    if not isinstance(value, dict):
        raise ConfigError(
            key,
            f"must be a strategy name or a mapping with `name`, got {value!r}",
            f"e.g. {key}: {{name: ..., <parameters>}}",
        )
    return value


def _merge(base: dict, new: dict, path: tuple[str, ...]) -> None:
    for key, value in new.items():
        here = (*path, str(key))
        dotted = ".".join(here)
        if dotted in SECTIONS and not isinstance(value, dict):
            example = "decoder.verification=left_to_right" if dotted == "decoder" else f"{dotted}.<key>=<value>"
            raise ConfigError(
                dotted,
                f"must be {SECTIONS[dotted]}, got {value!r}",
                f"set its keys one by one (e.g. {example}), or leave it out to keep the defaults",
            )
        if here[0] == "decoder" and len(here) == 2:
            if key not in ROLES:
                raise ConfigError(dotted, "is not a decoder role", f"the roles are {', '.join(ROLES)}")
            value = _as_section(value, dotted)
            old = base.get(key)
            if isinstance(old, dict) and value.get("name", old.get("name")) == old.get("name"):
                _merge(old, value, here)
            else:
                base[key] = copy.deepcopy(value)
        elif isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value, here)
        else:
            base[key] = copy.deepcopy(value)


def _structured(schema: type, data: Any, key: str) -> Any:
    """Validate ``data`` against dataclass ``schema`` and build the instance; errors carry ``key``."""
    if not isinstance(data, dict):
        raise ConfigError(key, f"must be a mapping, got {data!r}")
    try:
        node = OmegaConf.merge(OmegaConf.structured(schema), data)
        return OmegaConf.to_object(node)
    except FieldError as exc:
        raise ConfigError(f"{key}.{exc.field}", exc.message, exc.fix) from None
    except ConfigKeyError as exc:
        names = ", ".join(f.name for f in dataclasses.fields(schema))
        known = f"valid keys: {names}" if names else "this section takes no parameters"
        raise ConfigError(f"{key}.{exc.full_key}", f"unknown key ({known})", "remove it or fix its spelling") from None
    except OmegaConfBaseException as exc:
        message = str(exc).split("\n")[0]
        raise ConfigError(
            f"{key}.{exc.full_key}",
            message,
            "give a value of the type the schema states (see `dlm-decode config show`)",
        ) from None


def _validate_sections(merged: dict) -> Config:
    unknown = set(merged) - {"model", "generation"}
    if unknown:
        raise ConfigError(
            sorted(unknown)[0], "unknown top-level key", "the top-level keys are model, decoder and generation"
        )
    model = merged["model"]  # the sections are mappings (`_merge` keeps them so)
    bad = sorted(set(model) - {"dllm", "ar"})
    if bad:
        raise ConfigError(f"model.{bad[0]}", "unknown key (model has: dllm, ar)", "remove it or fix its spelling")
    ar = model.get("ar")
    return Config(
        model=ModelSection(
            dllm=_structured(ModelSpec, model["dllm"], "model.dllm"),
            ar=None if ar is None else _structured(ModelSpec, ar, "model.ar"),
        ),
        generation=_structured(GenerationSection, merged["generation"], "generation"),
    )


def _validate_strategies(decoder: dict, registry: StrategyRegistry) -> dict[str, tuple[str, Any]]:
    strategies = {}
    for role in ROLES:
        section = dict(decoder[role])
        name = section.pop("name", None)
        if not isinstance(name, str):
            raise ConfigError(
                f"decoder.{role}.name",
                f"must be a strategy name, got {name!r}",
                f"registered: {', '.join(registry.names(role))}",
            )
        spec = registry.get(role, name)
        strategies[role] = (name, _structured(spec.config_cls, section, f"decoder.{role}"))
    return strategies


def _check_requirements(resolved: dict, strategies: dict[str, tuple[str, Any]], registry: StrategyRegistry) -> None:
    """Refuse a config that leaves null a key a chosen strategy declared it needs (``registry.add(...,
    requires=...)``), so that the error comes before any model loads.

    :raises ConfigError: naming the key, the strategy that needs it and the strategy's fix.
    :raises PluginError: when a strategy declares a key the config does not have (a mistake in the plugin).
    """
    for role, (name, _) in strategies.items():
        spec = registry.get(role, name)
        for key, fix in spec.requires.items():
            node: Any = resolved
            for part in key.split("."):
                if node is None:  # a section above the key is null (model.ar for model.ar.path): so is the key
                    break
                if not isinstance(node, dict) or part not in node:
                    raise PluginError(
                        spec.plugin,
                        "dlm_register",
                        f"{role} strategy {name!r} declares that it requires `{key}`, which is not a config key",
                        "declare dotted keys of the config, e.g. requires={'model.ar': ...}",
                    )
                node = node[part]
            if node is None:
                raise ConfigError(
                    key,
                    f"the {name!r} {role} strategy (decoder.{role}.name={name}) needs it, but it is null",
                    f"{fix}; or choose another {role} strategy",
                )
