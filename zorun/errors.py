"""User-facing failures: the message is one line naming the problem and the fix."""


class ZorunError(RuntimeError):
    """Raised for problems the user can fix (bad data file, model not available offline, ...)."""


class ConfigError(ZorunError):
    """A configuration value out of range or a combination that means nothing."""
