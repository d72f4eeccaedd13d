"""Option name -> class for estimators and samplers, and the combinations that make no sense.

Estimators and samplers register themselves (:func:`zorun.estimators.base.register`,
:func:`zorun.samplers.base.register`); this module imports them all and asks
each which options it refuses.
"""

from __future__ import annotations

from typing import Type

from omegaconf import DictConfig

import zorun.estimators  # noqa: F401  (every estimator module registers itself)
import zorun.samplers  # noqa: F401  (every sampler module registers itself)
from zorun.errors import ConfigError
from zorun.estimators.base import ESTIMATORS, Estimator
from zorun.samplers.base import SAMPLERS, Sampler


def sampler_class(name: str) -> Type[Sampler]:
    if name not in SAMPLERS:
        raise ConfigError(f"sampler.name={name} is not implemented; available: {', '.join(SAMPLERS)}")
    return SAMPLERS[name]


def check_estimator(est: DictConfig) -> None:
    """The estimator node's ranges; an unknown name gets the shared ones here and is refused by check_combination
    (so a multirun with skip_incompatible records it instead of failing)."""
    ESTIMATORS.get(est.name, Estimator).check(est)


def check_combination(cfg: DictConfig) -> None:
    """Refuse, before any model loads, what cannot run or means nothing."""
    est = cfg.estimator.name
    if est not in ESTIMATORS:
        raise ConfigError(f"estimator.name={est} is not implemented; available: {', '.join(ESTIMATORS)}")
    sampler_class(cfg.sampler.name).refuse(cfg, ESTIMATORS)
    ESTIMATORS[est].refuse(cfg.estimator)


def build_estimator(cfg: DictConfig, space) -> Estimator:
    return ESTIMATORS[cfg.estimator.name](cfg.estimator, space)


def build_sampler(cfg: DictConfig, space, seed: int) -> Sampler:
    return SAMPLERS[cfg.sampler.name](cfg.sampler, space, seed)
