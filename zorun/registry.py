"""Name -> class for estimators and samplers, and the combinations that make no sense."""

from __future__ import annotations

from typing import Dict, Type

from omegaconf import DictConfig

from zorun.config import ConfigError
from zorun.estimators.base import Estimator
from zorun.estimators.mezo import MeZO
from zorun.samplers.adalezo import AdaLeZOSampler
from zorun.samplers.base import Sampler
from zorun.samplers.uniform import UniformSampler

ESTIMATORS: Dict[str, Type[Estimator]] = {"mezo": MeZO}
SAMPLERS: Dict[str, Type[Sampler]] = {"uniform": UniformSampler, "adalezo": AdaLeZOSampler}


def check_combination(cfg: DictConfig) -> None:
    """Refuse, before any model loads, what cannot run or means nothing."""
    if cfg.estimator.name not in ESTIMATORS:
        raise ConfigError(f"estimator.name={cfg.estimator.name} is not implemented; available: {', '.join(ESTIMATORS)}")
    if cfg.sampler.name not in SAMPLERS:
        raise ConfigError(f"sampler.name={cfg.sampler.name} is not implemented; available: {', '.join(SAMPLERS)}")


def build_estimator(cfg: DictConfig, space) -> Estimator:
    return ESTIMATORS[cfg.estimator.name](cfg.estimator, space)


def build_sampler(cfg: DictConfig, space, seed: int) -> Sampler:
    return SAMPLERS[cfg.sampler.name](cfg.sampler, space, seed)
