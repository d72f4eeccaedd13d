"""Where zorun's shipped files live; a leaf, so any module may ask without importing the CLI."""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


def config_dir() -> str:
    """conf/ inside the installed package (wheel), else the repository's top-level conf/."""
    for candidate in (PACKAGE / "conf", PACKAGE.parent / "conf"):
        if (candidate / "config.yaml").is_file():
            return str(candidate)
    raise FileNotFoundError("zorun's config directory (conf/config.yaml) is missing from the installation")


CONF_DIR = config_dir()
