"""zorun-metatrain: the pre-flight of `zorun` (one-line errors, exit 2) on the metatrain config, then Hydra runs
the :class:`~zorun.metatrain.MetaTrainer`."""

from __future__ import annotations

import sys
from typing import Any, Dict, List, Optional

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from zorun.commands.cli import run_app
from zorun.errors import ZorunError
from zorun.metatrain import MetaTrainer
from zorun.paths import CONF_DIR


def execute(cfg: DictConfig) -> Dict[str, Any]:
    """Meta-train, always write summary.json; exit 2 on a ZorunError."""
    trainer = MetaTrainer(cfg, HydraConfig.get().runtime.output_dir)
    try:
        trainer.setup()
        trainer.train()
    except ZorunError as err:
        trainer.status, trainer.error = "failed", str(err)
        trainer.cleanup()
        print(f"zorun-metatrain: error: {err}", file=sys.stderr)
        sys.exit(2)
    except Exception as err:  # a bug: keep the traceback, but never lose the summary
        trainer.status, trainer.error = "failed", f"{type(err).__name__}: {err}"
        trainer.cleanup()
        raise
    return trainer.cleanup()


@hydra.main(config_path=CONF_DIR, config_name="metatrain", version_base="1.3")
def _app(cfg: DictConfig) -> Dict[str, Any]:
    return execute(cfg)


def main(argv: Optional[List[str]] = None) -> None:
    run_app(_app, "metatrain", sys.argv[1:] if argv is None else argv, "zorun-metatrain")


if __name__ == "__main__":
    main()
