"""Errors raised by dlm_decode. Each message names the key, value or plugin at fault and says how to fix it."""

from __future__ import annotations


class DlmDecodeError(Exception):
    """Base class of every error dlm_decode raises on purpose."""


class ConfigError(DlmDecodeError, ValueError):
    """A configuration value is unknown, of the wrong type or out of range."""

    def __init__(self, key: str, message: str, fix: str | None = None):
        self.key = key
        text = f"`{key}`: {message}"
        super().__init__(f"{text}\n  fix: {fix}" if fix else text)


class FieldError(ValueError):
    """Raised by a config dataclass's validation for one of its own fields; the composer adds the full key."""

    def __init__(self, field: str, message: str, fix: str | None = None):
        super().__init__(message)
        self.field, self.message, self.fix = field, message, fix


class InputError(DlmDecodeError, ValueError):
    """A prompt or a generate() argument cannot be decoded."""


class ModelError(DlmDecodeError):
    """A model cannot be loaded, or a model pair is incompatible."""


class PluginError(DlmDecodeError):
    """A plugin raised, returned nothing, or broke the contract of its hook."""

    def __init__(self, plugin: str, hook: str, message: str, fix: str | None = None):
        self.plugin, self.hook = plugin, hook
        text = f"plugin {plugin} in {hook}: {message}"
        super().__init__(f"{text}\n  fix: {fix}" if fix else text)


class StrategyError(DlmDecodeError):
    """What a strategy raises from its hook when it cannot go on (another role's choice it cannot work with, say).
    The core turns it into a :class:`PluginError` naming the strategy, so a plugin never spells its own label.

    :param message: what is wrong. :param fix: how to fix it (e.g. the config key to change).
    """

    def __init__(self, message: str, fix: str | None = None):
        self.message, self.fix = message, fix
        super().__init__(f"{message}\n  fix: {fix}" if fix else message)


class DecodeError(DlmDecodeError, RuntimeError):
    """Decoding cannot go on (NaN logits, no progress within the step limit)."""


def check_field(condition: bool, field: str, message: str, fix: str | None = None) -> None:
    """Raise :class:`FieldError` for ``field`` unless ``condition`` holds (for config ``__post_init__``)."""
    if not condition:
        raise FieldError(field, message, fix)
