"""User-facing failures: the message is one line naming the problem and the fix."""

from typing import Any


class ZorunError(RuntimeError):
    """Raised for problems the user can fix (bad data file, model not available offline, ...)."""


class ConfigError(ZorunError):
    """A configuration value out of range or a combination that means nothing."""


def require(ok: bool, key: str, value: Any, rule: str) -> None:
    """A range check that types cannot express: `key=value is out of range: rule` when not ok."""
    if not ok:
        raise ConfigError(f"{key}={value} is out of range: {rule}")
