"""What a config may make Python import and call: zorun's own classes, and Hydra's launchers and sweepers.

Hydra instantiates every ``_target_`` under hydra.callbacks (and the
launcher and sweeper), and logging.config builds handlers from ``class`` and
``()`` keys, so one command-line override such as
``+hydra.callbacks.x._target_=os.system`` would run arbitrary code. The
pre-flight refuses any target outside these prefixes, wherever it comes from
(override, config file or sweep file).
"""

from __future__ import annotations

from typing import Any, Iterator, Tuple

from omegaconf import DictConfig, ListConfig

from zorun.errors import ConfigError

ZORUN = ("zorun.",)
PLUGINS = ("hydra._internal.core_plugins.", "hydra_plugins.")  # launchers and sweepers of installed plugins
LOGGING = ("logging.", "colorlog.")
_CALLABLE_KEYS = ("_target_", "class", "()")


def _targets(node: Any, path: str) -> Iterator[Tuple[str, str, str]]:
    """(dotted key, key name, value) of every key that names something to import."""
    if isinstance(node, DictConfig):
        for key in node.keys():
            child = node._get_node(key)
            if key in _CALLABLE_KEYS and not isinstance(child, (DictConfig, ListConfig)):
                yield f"{path}{key}", str(key), str(child._value())
            else:
                yield from _targets(child, f"{path}{key}.")
    elif isinstance(node, ListConfig):
        for i in range(len(node)):
            yield from _targets(node._get_node(i), f"{path}{i}.")


def allowed(path: str, key: str, value: str) -> bool:
    if key != "_target_":  # `class` and `()` mean something only to logging.config
        return not path.startswith(("hydra.job_logging.", "hydra.hydra_logging.")) or value.startswith(LOGGING)
    if path in ("hydra.launcher._target_", "hydra.sweeper._target_"):
        return value.startswith(PLUGINS)
    return value.startswith(ZORUN)


def check_targets(cfg: DictConfig) -> None:
    """Raise ConfigError (one line) on the first importable name outside the allowed prefixes."""
    for path, key, value in _targets(cfg, ""):
        if not allowed(path, key, value):
            raise ConfigError(f"refusing {path}={value}: a config may only instantiate zorun.* classes "
                              f"(and Hydra's launchers/sweepers); remove that key")
