"""Errors raised by dlm_decode. Each message names the key, value or plugin at fault and says how to fix it.

Every error takes its fix apart from its message: ``DlmDecodeError(message, fix=None)`` keeps both as attributes
(``error.message``, ``error.fix``), and its text is the message followed, when there is a fix, by the fix on a line
of its own, indented: ``"<message>\\n  fix: <fix>"`` (:func:`with_fix`). The subclasses that name a key or a plugin
(:class:`ConfigError`, :class:`PluginError`) put that name in front of the message and keep it as an attribute too.
"""

from __future__ import annotations

#: What separates an error's message from its fix in the error's text.
FIX_SEPARATOR = "\n  fix: "


def with_fix(message: str, fix: str | None) -> str:
    """``message``, followed by ``fix`` after :data:`FIX_SEPARATOR` when there is one: the text of every error
    dlm_decode raises (also the few that are not :class:`DlmDecodeError`, such as an ``ImportError``)."""
    return f"{message}{FIX_SEPARATOR}{fix}" if fix else message


class DlmDecodeError(Exception):
    """Base class of every error dlm_decode raises on purpose.

    :param message: what is wrong, naming the key, argument or file at fault and the value.
    :param fix: how to fix it (e.g. the config key to change), or None when there is nothing to suggest.
    """

    def __init__(self, message: str, fix: str | None = None):
        self.message, self.fix = message, fix
        super().__init__(with_fix(message, fix))


class ConfigError(DlmDecodeError, ValueError):
    """A configuration value is unknown, of the wrong type or out of range. Its message starts with the key."""

    def __init__(self, key: str, message: str, fix: str | None = None):
        self.key = key
        super().__init__(f"`{key}`: {message}", fix)


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
    """A plugin raised, returned nothing, or broke the contract of its hook. Its message starts with the plugin
    and the hook."""

    def __init__(self, plugin: str, hook: str, message: str, fix: str | None = None):
        self.plugin, self.hook = plugin, hook
        super().__init__(f"plugin {plugin} in {hook}: {message}", fix)


class StrategyError(DlmDecodeError):
    """What a strategy raises from its hook when it cannot go on (another role's choice it cannot work with, say).
    The core turns it into a :class:`PluginError` naming the strategy, so a plugin never spells its own label.

    :param message: what is wrong. :param fix: how to fix it (e.g. the config key to change).
    """


class DecodeError(DlmDecodeError, RuntimeError):
    """Decoding cannot go on (NaN logits, no progress within the step limit)."""


def check_field(condition: bool, field: str, message: str, fix: str | None = None) -> None:
    """Raise :class:`FieldError` for ``field`` unless ``condition`` holds (for config ``__post_init__``)."""
    if not condition:
        raise FieldError(field, message, fix)


def check_probability(value: float, field: str, fix: str | None = None) -> None:
    """:func:`check_field` for a probability (a confidence threshold, say): ``value`` must lie in ``[0, 1]``."""
    check_field(0.0 <= value <= 1.0, field, f"must be in [0, 1], got {value}", fix)
